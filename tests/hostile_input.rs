//! A table of hostile keys, owners and options through the API and the
//! macro: each is handled correctly or refused with a clear error, nothing
//! panics, and keys are never read as operators or field paths.
//! (Compile-time misuse of the macro is covered by tests/ui.)

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongolock::{mongo_locked, Backoff, Error, MongoLock, MAX_DURATION, MAX_KEY_BYTES};
use mongolock_suite::fresh_lock;

fn hostile_keys() -> Vec<(String, bool)> {
    vec![
        (String::new(), false),
        ("k".repeat(MAX_KEY_BYTES + 1), false),
        ("x".repeat(100_000), false),
        ("a\0b".into(), false),
        ("\0".into(), false),
        ("k".repeat(MAX_KEY_BYTES), true),
        ("$where".into(), true),
        ("$gt".into(), true),
        ("$$NOW".into(), true),
        ("$owner".into(), true),
        ("a.b.c".into(), true),
        (".".into(), true),
        ("{\"$ne\": null}".into(), true),
        ("ключ-🔒-鍵".into(), true),
        (" ".into(), true),
        ("line\nbreak\ttab".into(), true),
        ("\u{202e}rtl".into(), true),
    ]
}

#[mongo_locked(key = key, lock = lock, expires = "5s")]
async fn locked_by_macro(lock: &MongoLock, key: &str) -> Result<String, Error> {
    let info = lock.get_lock_info(key).await?;
    Ok(info.and_then(|i| i.owner).unwrap_or_default())
}

#[tokio::test]
async fn hostile_keys_through_the_api() {
    let lock = fresh_lock("hostile_api").await;
    for (key, valid) in hostile_keys() {
        let shown: String = key.chars().take(20).collect();
        let result = lock.lock(key.as_str(), "$owner").await;
        if !valid {
            assert!(
                matches!(result, Err(Error::InvalidKey { .. })),
                "{shown:?}: {result:?}"
            );
            continue;
        }
        assert!(result.unwrap(), "{shown:?}");
        // Stored verbatim, found by exact match only, exclusive.
        let info = lock.get_lock_info(&key).await.unwrap().unwrap();
        assert_eq!(
            (info.key.as_str(), info.owner.as_deref()),
            (key.as_str(), Some("$owner"))
        );
        assert!(
            !lock.lock(key.as_str(), "other").await.unwrap(),
            "{shown:?}"
        );
        assert!(lock.is_locked(&key).await.unwrap());
        assert!(lock.touch(key.as_str(), "$owner").await.unwrap());
        assert!(lock.release(key.as_str(), "$owner").await.unwrap());
        let guard = lock.acquire(key.as_str()).await.unwrap();
        assert!(guard.release().await.unwrap());
    }
    let valid = hostile_keys().iter().filter(|(_, v)| *v).count() as u64;
    let docs = lock
        .collection()
        .count_documents(Document::new())
        .await
        .unwrap();
    assert_eq!(docs, valid, "one document per valid key, nothing else");
}

#[tokio::test]
async fn hostile_keys_through_the_macro() {
    let lock = fresh_lock("hostile_macro").await;
    for (key, valid) in hostile_keys() {
        let shown: String = key.chars().take(20).collect();
        let result = locked_by_macro(&lock, &key).await;
        if valid {
            let owner = result.unwrap();
            assert!(!owner.is_empty(), "{shown:?}: held inside the body");
            assert!(!lock.is_locked(&key).await.unwrap(), "{shown:?}: released");
        } else {
            assert!(
                matches!(result, Err(Error::InvalidKey { .. })),
                "{shown:?}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn hostile_owners_are_literal_or_refused() {
    let lock = fresh_lock("hostile_owner").await;
    for owner in [
        "$owner",
        "$$NOW",
        "$expires_at",
        "{\"$literal\": 1}",
        "a.b",
        "ключ",
    ] {
        assert!(lock.lock("k", owner).await.unwrap(), "{owner}");
        let info = lock.get_lock_info("k").await.unwrap().unwrap();
        assert_eq!(info.owner.as_deref(), Some(owner));
        assert!(!lock.lock("k", "other").await.unwrap(), "{owner}");
        assert!(lock.release("k", owner).await.unwrap(), "{owner}");
    }
    for owner in [
        String::new(),
        "a\0b".into(),
        "o".repeat(mongolock::MAX_OWNER_BYTES + 1),
    ] {
        let r = lock.lock("k", owner.as_str()).await;
        assert!(matches!(r, Err(Error::InvalidOwner { .. })), "{r:?}");
        let r = lock.acquire("k").owner(owner.as_str()).await;
        assert!(matches!(r, Err(Error::InvalidOwner { .. })), "{r:?}");
    }
    // The filter side too: a hostile owner in release matches nothing.
    lock.lock("k", "real").await.unwrap();
    let any = doc! { "$ne": "nobody" }.to_string();
    assert!(!lock.release("k", any).await.unwrap());
    assert!(lock.is_locked("k").await.unwrap());
}

#[tokio::test]
async fn hostile_durations_are_refused_with_the_option_named() {
    let lock = fresh_lock("hostile_durations").await;
    let absurd = [MAX_DURATION + Duration::from_millis(1), Duration::MAX];
    let below_a_milli = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
    ];
    for d in below_a_milli.iter().chain(&absurd).copied() {
        let r = lock.acquire("k").expires(d).await;
        assert!(
            matches!(
                r,
                Err(Error::InvalidDuration {
                    what: "expires",
                    ..
                })
            ),
            "{d:?}: {r:?}"
        );
        let r = lock.touch("k", "o").expires(d).await;
        assert!(
            matches!(
                r,
                Err(Error::InvalidDuration {
                    what: "expires",
                    ..
                })
            ),
            "{d:?}: {r:?}"
        );
        let r = lock.acquire("k").renew_every(d).await;
        assert!(
            matches!(r, Err(Error::InvalidDuration { .. })),
            "{d:?}: {r:?}"
        );
        assert!(Backoff::new(d, d).is_err(), "{d:?}");
        assert!(lock.clone().with_cleanup_after(d).is_err(), "{d:?}");
        let r = lock.clone().with_queue_expiry(d);
        assert!(
            matches!(
                r,
                Err(Error::InvalidDuration {
                    what: "queue_expiry",
                    ..
                })
            ),
            "{d:?}: {r:?}"
        );
    }
    for d in absurd {
        let r = lock.clone().with_stream_idle_close(d);
        assert!(
            matches!(
                r,
                Err(Error::InvalidDuration {
                    what: "stream_idle_close",
                    ..
                })
            ),
            "{d:?}: {r:?}"
        );
        let r = lock.acquire("k").timeout(d).await;
        assert!(
            matches!(
                r,
                Err(Error::InvalidDuration {
                    what: "timeout",
                    ..
                })
            ),
            "{d:?}: {r:?}"
        );
        let r = lock.acquire("k").min_hold(d).await;
        assert!(
            matches!(
                r,
                Err(Error::InvalidDuration {
                    what: "min_hold",
                    ..
                })
            ),
            "{d:?}: {r:?}"
        );
    }
    assert!(lock
        .clone()
        .with_cleanup_after(Duration::from_millis(500))
        .is_err());
    // Zero closes an idle change stream at once; not an error.
    assert!(lock.clone().with_stream_idle_close(Duration::ZERO).is_ok());
    // A zero timeout is not an error: it is the single attempt.
    let zero = lock.acquire("zero").timeout(Duration::ZERO).await.unwrap();
    zero.release().await.unwrap();
    assert_eq!(
        lock.get_lock_info("k").await.unwrap(),
        None,
        "nothing was taken"
    );
    // The largest accepted values work end to end.
    let guard = lock
        .acquire("k")
        .expires(MAX_DURATION)
        .timeout(MAX_DURATION)
        .min_hold(MAX_DURATION)
        .await
        .unwrap();
    assert_eq!(
        guard.expires_at().timestamp_millis() - guard.acquired_at().unwrap().timestamp_millis(),
        MAX_DURATION.as_millis() as i64
    );
}
