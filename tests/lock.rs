//! The runtime API against a live server: the Python package's test suite, ported and
//! fixed, and the guarantees the Python package lacked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongolock::{Error, MongoLock};
use mongolock_suite::{fresh_collection, fresh_lock, server_uri};

const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(20);

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

// ---- The Python package's suite ------------------------------------------------------

#[tokio::test]
async fn locked_successfully() {
    let lock = fresh_lock("locked_successfully").await;
    assert!(lock.lock("key", "owner").await.unwrap());
    let info = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("owner"));
    assert!(lock.is_locked("key").await.unwrap());
}

#[tokio::test]
async fn locked_successfully_second_time() {
    let lock = fresh_lock("locked_successfully_second_time").await;
    assert!(lock.lock("key", "owner").await.unwrap());
    assert!(lock.release("key", "owner").await.unwrap());
    assert!(lock.lock("key", "owner").await.unwrap());
}

#[tokio::test]
async fn lock_already_locked_fails_for_another_owner() {
    let lock = fresh_lock("lock_already_locked").await;
    assert!(lock.lock("key", "another_one").await.unwrap());
    assert!(!lock.lock("key", "owner").await.unwrap());
    let info = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("another_one"));
}

#[tokio::test]
async fn expired_lock_is_taken_by_a_waiter() {
    let lock = fresh_lock("expired_lock_is_taken").await;
    assert!(lock.lock("key", "old").expires(SHORT).await.unwrap());
    let old = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(lock.lock("key", "owner").timeout(WAIT).await.unwrap());
    let new = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(new.owner.as_deref(), Some("owner"));
    // Taken only once the old lease had ended, by the server's clock.
    assert!(new.acquired_at.unwrap() >= old.expires_at);
}

#[tokio::test]
async fn release_frees_the_lock() {
    let lock = fresh_lock("release_frees_the_lock").await;
    lock.lock("key", "owner").await.unwrap();
    assert!(lock.release("key", "owner").await.unwrap());
    assert!(!lock.is_locked("key").await.unwrap());
    let info = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(info.owner, None, "the document stays, without owner");
}

// The Python package's version never called release.
#[tokio::test]
async fn release_by_other_owner_keeps_lock() {
    let lock = fresh_lock("release_by_other_owner").await;
    lock.lock("key", "another_one").await.unwrap();
    assert!(!lock.release("key", "owner").await.unwrap());
    assert!(lock.is_locked("key").await.unwrap());
    let info = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("another_one"));
}

#[tokio::test]
async fn release_of_lock_never_taken_is_false_and_creates_nothing() {
    let lock = fresh_lock("release_never_taken").await;
    assert!(!lock.release("key", "owner").await.unwrap());
    assert_eq!(lock.get_lock_info("key").await.unwrap(), None);
}

#[tokio::test]
async fn scoped_form_holds_the_lock_inside() {
    let lock = fresh_lock("scoped_form").await;
    assert_eq!(lock.get_lock_info("key").await.unwrap(), None);
    let guard = lock.acquire("key").await.unwrap();
    assert!(lock.is_locked("key").await.unwrap());
    let info = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some(guard.owner()));
    assert_eq!(info.token, guard.token());
    assert!(guard.release().await.unwrap());
    assert!(!lock.is_locked("key").await.unwrap());
}

#[tokio::test]
async fn scoped_form_raises_locked_with_holder_details() {
    let lock = fresh_lock("scoped_form_raises").await;
    lock.lock("key", "owner").await.unwrap();
    let held = lock.get_lock_info("key").await.unwrap().unwrap();
    match lock.acquire("key").await {
        Err(Error::Locked {
            key,
            owner,
            since,
            expires,
        }) => {
            assert_eq!(key, "key");
            assert_eq!(owner.as_deref(), Some("owner"));
            assert_eq!(since, held.acquired_at);
            assert_eq!(expires, Some(held.expires_at));
        }
        other => panic!("expected Error::Locked, got {other:?}"),
    }
}

#[tokio::test]
async fn scoped_form_with_timeout_raises_locked() {
    let lock = fresh_lock("scoped_form_timeout").await;
    lock.lock("key", "owner").await.unwrap();
    let result = lock.acquire("key").timeout(SHORT).await;
    assert!(matches!(result, Err(Error::Locked { .. })), "{result:?}");
}

#[tokio::test]
async fn touch_extends_lease_from_server_now() {
    let lock = fresh_lock("touch_extends").await;
    lock.lock("key", "owner").expires(SHORT).await.unwrap();
    let before = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(lock
        .touch("key", "owner")
        .expires(Duration::from_secs(30))
        .await
        .unwrap());
    let after = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(
        after.expires_at.timestamp_millis()
            >= before.acquired_at.unwrap().timestamp_millis() + 30_000
    );
    assert_eq!(after.token, before.token);
}

// The Python package's version lacked the `test_` prefix and never ran. Its intent: a
// touch without a lease given still extends the lock (here: by the default).
#[tokio::test]
async fn touch_without_expires_uses_default_lease() {
    let lock = fresh_lock("touch_default").await;
    lock.lock("key", "owner").expires(SHORT).await.unwrap();
    let before = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(lock.touch("key", "owner").await.unwrap());
    let after = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(
        after.expires_at.timestamp_millis()
            >= before.acquired_at.unwrap().timestamp_millis() + millis(mongolock::DEFAULT_EXPIRES)
    );
}

#[tokio::test]
async fn touch_by_other_owner_is_refused_and_changes_nothing() {
    let lock = fresh_lock("touch_by_other").await;
    lock.lock("key", "another_one")
        .expires(SHORT)
        .await
        .unwrap();
    let before = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(!lock.touch("key", "owner").await.unwrap());
    assert_eq!(lock.get_lock_info("key").await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn lock_built_from_a_collection() {
    let collection = fresh_collection("from_collection").await;
    let lock = MongoLock::with_collection(collection.clone());
    assert!(lock.lock("key", "owner").await.unwrap());
    let stored = collection.find_one(doc! { "_id": "key" }).await.unwrap();
    assert_eq!(stored.unwrap().get_str("owner").unwrap(), "owner");
}

#[tokio::test]
async fn lock_built_from_a_connection_string_uses_the_python_package_defaults() {
    let lock = MongoLock::connect(&server_uri().unwrap()).await.unwrap();
    assert_eq!(lock.collection().namespace().to_string(), "mongolock.lock");
    let key = mongolock::unique_owner();
    assert!(lock.lock(&key, "owner").await.unwrap());
    assert!(lock.release(&key, "owner").await.unwrap());
}

// ---- Beyond the Python package -------------------------------------------------------

#[tokio::test]
async fn lock_by_current_owner_succeeds_and_renews() {
    let lock = fresh_lock("reentry").await;
    assert!(lock.lock("key", "owner").expires(SHORT).await.unwrap());
    let first = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(lock
        .lock("key", "owner")
        .expires(Duration::from_secs(30))
        .await
        .unwrap());
    let second = lock.get_lock_info("key").await.unwrap().unwrap();
    assert_eq!(second.token, first.token, "same acquisition");
    assert_eq!(second.acquired_at, first.acquired_at);
    assert!(second.expires_at > first.expires_at);
}

#[tokio::test]
async fn lease_starts_at_acquisition_not_before_the_wait() {
    let lock = fresh_lock("lease_starts_at_acquisition").await;
    let lease = Duration::from_secs(10);
    assert!(lock.lock("key", "first").expires(SHORT).await.unwrap());
    let first = lock.get_lock_info("key").await.unwrap().unwrap();
    let guard = lock
        .acquire("key")
        .expires(lease)
        .timeout(WAIT)
        .await
        .unwrap();
    let acquired = guard.acquired_at().unwrap();
    assert!(acquired >= first.expires_at, "taken after the first lease");
    assert_eq!(
        guard.expires_at().timestamp_millis() - acquired.timestamp_millis(),
        millis(lease),
        "the whole lease is left after the wait"
    );
}

#[tokio::test]
async fn fencing_tokens_increase_across_acquisitions_releases_and_deletion() {
    let collection = fresh_collection("fencing_tokens").await;
    let lock = MongoLock::with_collection(collection.clone());
    let mut tokens = Vec::new();
    for round in 0..4 {
        let guard = lock.acquire("key").await.unwrap();
        tokens.push(guard.token());
        assert!(guard.release().await.unwrap());
        if round == 2 {
            // What the TTL cleanup does to an old document.
            collection.delete_one(doc! { "_id": "key" }).await.unwrap();
        }
    }
    // An expiry steal is a new acquisition too.
    lock.lock("key", "a").expires(SHORT).await.unwrap();
    tokens.push(lock.get_lock_info("key").await.unwrap().unwrap().token);
    lock.lock("key", "b").timeout(WAIT).await.unwrap();
    tokens.push(lock.get_lock_info("key").await.unwrap().unwrap().token);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase: {tokens:?}"
    );
}

#[tokio::test]
async fn stale_guard_with_shared_owner_name_cannot_touch_or_release_new_holder() {
    let lock = fresh_lock("stale_guard_shared_owner").await;
    let mut stale = lock
        .acquire("key")
        .owner("worker")
        .expires(SHORT)
        .await
        .unwrap();
    // The lease runs out and someone else takes and frees the lock; then
    // another worker with the same name takes it.
    assert!(lock.lock("key", "other").timeout(WAIT).await.unwrap());
    assert!(lock.release("key", "other").await.unwrap());
    assert!(lock.lock("key", "worker").await.unwrap());
    let holder = lock.get_lock_info("key").await.unwrap().unwrap();
    assert!(holder.token > stale.token());
    assert!(!stale.touch(Duration::from_secs(60)).await.unwrap());
    assert!(!stale.release().await.unwrap());
    assert_eq!(lock.get_lock_info("key").await.unwrap().unwrap(), holder);
    assert!(lock.is_locked("key").await.unwrap());
}

#[tokio::test]
async fn guard_touch_extends_its_lease() {
    let lock = fresh_lock("guard_touch").await;
    let mut guard = lock.acquire("key").expires(SHORT).await.unwrap();
    let before = guard.expires_at();
    assert!(guard.touch(Duration::from_secs(30)).await.unwrap());
    assert!(guard.expires_at() > before);
    assert_eq!(
        lock.get_lock_info("key").await.unwrap().unwrap().expires_at,
        guard.expires_at()
    );
}

#[tokio::test]
async fn dropped_guard_releases_in_background() {
    let lock = fresh_lock("guard_drop").await;
    let guard = lock
        .acquire("key")
        .expires(Duration::from_secs(60))
        .await
        .unwrap();
    let token = guard.token();
    drop(guard);
    // The lease is 60 s, so only the background release frees it in time.
    let next = lock.acquire("key").timeout(WAIT).await.unwrap();
    assert!(next.token() > token);
}

#[tokio::test]
async fn mutual_exclusion_under_contention_across_clients() {
    const CLIENTS: usize = 3;
    const TASKS_PER_CLIENT: usize = 6;
    const ROUNDS: usize = 5;
    let base = fresh_collection("mutual_exclusion").await;
    let namespace = base.namespace();
    let counters = base
        .client()
        .database(&namespace.db)
        .collection::<Document>(&format!("{}_counter", namespace.coll));
    counters
        .insert_one(doc! { "_id": "counter", "n": 0_i64 })
        .await
        .unwrap();
    let holders = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        // A separate client (connection pool) per simulated machine.
        let client = mongodb::Client::with_uri_str(server_uri().unwrap())
            .await
            .unwrap();
        let db = client.database(&namespace.db);
        let lock = MongoLock::with_collection(db.collection(&namespace.coll));
        let counters = db.collection::<Document>(counters.name());
        for _ in 0..TASKS_PER_CLIENT {
            let (lock, counters) = (lock.clone(), counters.clone());
            let (holders, overlaps, acquisitions) =
                (holders.clone(), overlaps.clone(), acquisitions.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = lock
                        .acquire("counter")
                        .timeout(Duration::from_secs(60))
                        .await
                        .unwrap();
                    if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // A non-atomic read-modify-write: only the lock protects it.
                    let n = counters
                        .find_one(doc! { "_id": "counter" })
                        .await
                        .unwrap()
                        .unwrap()
                        .get_i64("n")
                        .unwrap();
                    tokio::task::yield_now().await;
                    counters
                        .update_one(doc! { "_id": "counter" }, doc! { "$set": { "n": n + 1 } })
                        .await
                        .unwrap();
                    acquisitions.fetch_add(1, Ordering::SeqCst);
                    holders.fetch_sub(1, Ordering::SeqCst);
                    assert!(guard.release().await.unwrap());
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n = counters
        .find_one(doc! { "_id": "counter" })
        .await
        .unwrap()
        .unwrap()
        .get_i64("n")
        .unwrap();
    let total = acquisitions.load(Ordering::SeqCst);
    assert_eq!(total, CLIENTS * TASKS_PER_CLIENT * ROUNDS);
    assert_eq!(n as usize, total, "lost updates mean two holders at once");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn concurrent_first_upserts_elect_exactly_one_holder() {
    let lock = fresh_lock("first_upsert_race").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let lock = lock.clone();
        tasks.push(tokio::spawn(async move {
            lock.lock("fresh", format!("w{i}")).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        // Every attempt answers: a duplicate-key race is retried, not returned.
        if task.await.unwrap().unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn ttl_index_is_created_once() {
    let lock = fresh_lock("ttl_index").await;
    lock.lock("a", "o").await.unwrap();
    lock.clone().lock("b", "o").await.unwrap();
    // The first attempt started the build in the background; wait for it.
    lock.ensure_ttl_index().await.unwrap();
    let names = lock.collection().list_index_names().await.unwrap();
    assert!(
        names.iter().any(|n| n == "mongolock_expires_at_ttl"),
        "{names:?}"
    );
}

// ---- Bad input -------------------------------------------------------------

#[tokio::test]
async fn bad_keys_are_refused_by_every_operation() {
    let lock = fresh_lock("bad_keys").await;
    for key in [
        String::new(),
        "k".repeat(mongolock::MAX_KEY_BYTES + 1),
        "a\0b".into(),
    ] {
        let short = || key.clone();
        assert!(matches!(
            lock.lock(short(), "o").await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            lock.acquire(short()).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            lock.release(short(), "o").await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            lock.touch(short(), "o").await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            lock.get_lock_info(&key).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            lock.is_locked(&key).await,
            Err(Error::InvalidKey { .. })
        ));
    }
    assert!(matches!(
        lock.lock("k", "").await,
        Err(Error::InvalidOwner { .. })
    ));
    assert!(matches!(
        lock.acquire("k").owner("").await,
        Err(Error::InvalidOwner { .. })
    ));
    let count = lock
        .collection()
        .count_documents(Document::new())
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing was written");
}

#[tokio::test]
async fn bad_uri_is_a_clear_error_without_the_password() {
    for uri in [
        "",
        "not a uri",
        "mongodb://user:hunter2@",
        "mongodb://user:hunter2@host:99999",
    ] {
        match MongoLock::connect(uri).await {
            Err(Error::InvalidUri(message)) => {
                assert!(!message.contains("hunter2"), "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("{uri:?}: expected InvalidUri, got {other:?}"),
        }
    }
}

// ---- Connecting: fail fast and say why -------------------------------------

#[tokio::test]
async fn connection_string_without_a_scheme_works_like_the_python_package() {
    let uri = server_uri().unwrap();
    let Some(bare) = uri.strip_prefix("mongodb://") else {
        return; // MONGODB_URI names another scheme (mongodb+srv): nothing to strip.
    };
    let lock = MongoLock::connect(bare).await.unwrap();
    let key = mongolock::unique_owner();
    assert!(lock.lock(&key, "owner").await.unwrap());
    assert!(lock.release(&key, "owner").await.unwrap());
}

#[tokio::test]
async fn database_named_in_the_connection_string_is_used() {
    let uri = server_uri().unwrap();
    let Some((hosts, options)) = uri.split_once("/?") else {
        return; // MONGODB_URI already names a database.
    };
    let lock = MongoLock::connect(&format!("{hosts}/jobs?{options}"))
        .await
        .unwrap();
    assert_eq!(lock.collection().namespace().to_string(), "jobs.lock");
}

#[tokio::test]
async fn unreachable_server_fails_once_with_the_drivers_cause() {
    // Nothing listens on port 1; the driver gives up after 300 ms.
    let lock = MongoLock::connect("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
        .await
        .unwrap();
    let single = lock.acquire("job").await.unwrap_err();
    assert!(
        matches!(&single, Error::Mongo(e) if matches!(*e.kind, mongodb::error::ErrorKind::ServerSelection { .. })),
        "{single:?}"
    );
    let waited = lock
        .acquire("job")
        .timeout(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(waited, Error::TimedOut { .. }), "{waited:?}");
    let cause = std::error::Error::source(&waited).expect("the driver's cause is kept");
    assert!(cause.to_string().contains("Server selection"), "{cause}");
}
