//! Server faults: SecantusDB's `configureFailPoint` on acquire, renew and
//! release, a paused server, and a restart with on-disk storage.
//!
//! Each test runs its own server ([`FaultServer`]), so these tests ignore
//! `MONGODB_URI`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongolock::Error;
use mongolock_suite::{free_port, FaultServer};
use rand::Rng;

const WAIT: Duration = Duration::from_secs(30);

type Fixture = FaultServer;

fn code_of(error: &Error) -> Option<i32> {
    match error {
        Error::Mongo(e) => match e.kind.as_ref() {
            mongodb::error::ErrorKind::Command(c) => Some(c.code),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn closed_connection_on_acquire_is_retried_transparently() {
    let fx = Fixture::start(&[]).await;
    let lock = fx.lock("holder").await;
    fx.fail(
        1,
        "holder",
        doc! { "failCommands": ["findAndModify"], "closeConnection": true },
    )
    .await;
    assert!(lock.lock("job", "me").await.unwrap());
    let info = lock.get_lock_info("job").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("me"));
}

#[tokio::test]
async fn lost_reply_on_acquire_does_not_lock_the_owner_out() {
    let fx = Fixture::start(&[]).await;
    let lock = fx.lock("holder").await;
    let other = fx.lock("other").await;
    fx.fail(
        1,
        "holder",
        doc! { "failCommands": ["findAndModify"], "blockConnection": true, "blockTimeMS": 1000 },
    )
    .await;
    // The reply never comes back to us; the server applies the attempt later.
    let cut = tokio::time::timeout(Duration::from_millis(100), lock.lock("job", "me")).await;
    assert!(cut.is_err(), "the reply should have been lost");
    // Retrying as the same owner succeeds whichever attempt the server ran
    // first: the holder's attempt re-enters its own lock.
    assert!(lock.lock("job", "me").timeout(WAIT).await.unwrap());
    assert!(!other.lock("job", "other").await.unwrap());
    // And still after the delayed attempt has surely run.
    assert!(lock.lock("job", "me").timeout(WAIT).await.unwrap());
    assert!(!other.lock("job", "other").await.unwrap());
}

#[tokio::test]
async fn injected_error_on_acquire_is_typed_and_takes_nothing() {
    let fx = Fixture::start(&[]).await;
    let lock = fx.lock("holder").await;
    fx.fail(
        1,
        "holder",
        doc! { "failCommands": ["findAndModify"], "errorCode": 2 },
    )
    .await;
    let err = lock.lock("job", "me").await.unwrap_err();
    assert_eq!(code_of(&err), Some(2), "{err:?}");
    assert_eq!(lock.get_lock_info("job").await.unwrap(), None);
    assert!(lock.lock("job", "me").await.unwrap());
}

#[tokio::test]
async fn failed_release_leaves_a_lock_that_expires_on_time() {
    let fx = Fixture::start(&[]).await;
    let lock = fx.lock("holder").await;
    let other = fx.lock("other").await;
    let guard = lock
        .acquire("job")
        .expires(Duration::from_millis(800))
        .await
        .unwrap();
    let expires = guard.expires_at();
    // The release: an update, as no queue was seen (or a findAndModify).
    fx.fail(
        1,
        "holder",
        doc! { "failCommands": ["update", "findAndModify"], "errorCode": 2 },
    )
    .await;
    let err = guard.release().await.unwrap_err();
    assert_eq!(code_of(&err), Some(2), "{err:?}");
    assert!(other.is_locked("job").await.unwrap(), "still held");
    let next = other.acquire("job").timeout(WAIT).await.unwrap();
    assert!(
        next.acquired_at().unwrap() >= expires,
        "not before the lease ran out"
    );
}

#[tokio::test]
async fn renewal_rides_out_errors_and_closed_connections() {
    let fx = Fixture::start(&[]).await;
    let lock = fx.lock("holder").await;
    let other = fx.lock("other").await;
    // After a network error the driver needs about 500 ms (its minimum
    // heartbeat) to find the server again; two in a row cost about 1 s. The
    // lease must leave room for that after the last renewal.
    let lease = Duration::from_millis(2400);
    let guard = lock
        .acquire("job")
        .expires(lease)
        .renew_every(lease / 6)
        .await
        .unwrap();
    for fault in [
        doc! { "failCommands": ["findAndModify"], "errorCode": 2 },
        doc! { "failCommands": ["findAndModify"], "closeConnection": true },
    ] {
        fx.fail(2, "holder", fault).await;
        let waited = other.acquire("job").timeout(lease * 2).await;
        assert!(matches!(waited, Err(Error::Locked { .. })), "{waited:?}");
        assert!(!guard.is_lost());
    }
    assert!(guard.release().await.unwrap());
}

#[tokio::test]
async fn no_double_holder_under_injected_faults() {
    const CLIENTS: usize = 3;
    const TASKS: usize = 4;
    const ROUNDS: usize = 8;
    let fx = Fixture::start(&[]).await;
    let counter = fx
        .admin
        .database("faults")
        .collection::<Document>("counter");
    counter
        .insert_one(doc! { "_id": "n", "n": 0_i64 })
        .await
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        let lock = fx.lock(&format!("worker{c}")).await;
        for _ in 0..TASKS {
            let (lock, counter) = (lock.clone(), counter.clone());
            let (inside, overlaps, acquisitions, errors) = (
                inside.clone(),
                overlaps.clone(),
                acquisitions.clone(),
                errors.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut done = 0;
                while done < ROUNDS {
                    let guard = match lock
                        .acquire("counter")
                        .expires(Duration::from_secs(2))
                        .timeout(WAIT)
                        .await
                    {
                        Ok(guard) => guard,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    };
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // The counter's own client is never failed.
                    let n = counter
                        .find_one(doc! { "_id": "n" })
                        .await
                        .unwrap()
                        .unwrap();
                    let n = n.get_i64("n").unwrap();
                    counter
                        .update_one(doc! { "_id": "n" }, doc! { "$set": { "n": n + 1 } })
                        .await
                        .unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    acquisitions.fetch_add(1, Ordering::SeqCst);
                    done += 1;
                    if guard.release().await.is_err() {
                        // The lease runs out instead.
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    // Inject a fault every few milliseconds while the workers run.
    let mut injected = 0;
    let faults = [
        doc! { "closeConnection": true },
        doc! { "errorCode": 2 },
        doc! { "errorCode": 6 },
        doc! { "blockConnection": true, "blockTimeMS": 150 },
    ];
    // Every run is bounded: a stuck worker fails the test, it does not hang CI.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while workers.iter().any(|w| !w.is_finished()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers did not finish in time"
        );
        let (fault, command, app) = {
            let mut rng = rand::rng();
            (
                faults[rng.random_range(0..faults.len())].clone(),
                ["findAndModify", "update"][rng.random_range(0..2)],
                format!("worker{}", rng.random_range(0..CLIENTS)),
            )
        };
        let mut data = fault;
        data.insert("failCommands", vec![command]);
        fx.fail(1, &app, data).await;
        injected += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let n = counter
        .find_one(doc! { "_id": "n" })
        .await
        .unwrap()
        .unwrap();
    let total = acquisitions.load(Ordering::SeqCst);
    println!(
        "fault injection: {CLIENTS} clients x {TASKS} tasks, {total} acquisitions, \
         {injected} faults armed, {} operations failed, {} overlaps",
        errors.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst)
    );
    assert_eq!(total, CLIENTS * TASKS * ROUNDS);
    assert_eq!(n.get_i64("n").unwrap() as usize, total, "lost updates");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn paused_server_waiters_honour_timeout_and_holder_detects_loss() {
    let fx = Fixture::start(&[]).await;
    let lock = fx.lock("holder").await;
    let waiter = fx.lock("waiter").await;
    let lease = Duration::from_secs(1);
    let guard = lock
        .acquire("job")
        .expires(lease)
        .renew_every(lease / 4)
        .await
        .unwrap();
    let expires = guard.expires_at();
    // Make sure the waiter's connection exists before the pause.
    assert!(waiter.is_locked("job").await.unwrap());

    fx.server.pause();
    let waited = waiter
        .acquire("job")
        .timeout(Duration::from_millis(500))
        .await;
    let lost = guard.lost().await;
    fx.server.resume();

    assert!(matches!(waited, Err(Error::TimedOut { .. })), "{waited:?}");
    match lost {
        Error::LockLost { reason, .. } => assert!(reason.contains("ran out"), "{reason}"),
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert!(guard.is_lost());
    // The server's clock kept running: after the pause the lock is free.
    let next = waiter.acquire("job").timeout(WAIT).await.unwrap();
    assert!(next.acquired_at().unwrap() > expires);
}

#[tokio::test]
async fn held_locks_survive_a_server_restart() {
    let dir = std::env::temp_dir().join(format!(
        "mongolock-restart-{}-{}",
        std::process::id(),
        rand::rng().random::<u32>()
    ));
    let path = dir.to_string_lossy().into_owned();
    let port = free_port().to_string();
    let args = ["--storage-path", path.as_str(), "--port", port.as_str()];
    let fx = Fixture::start(&args).await;
    let lock = fx.lock("holder").await;
    let guard = lock
        .acquire("job")
        .expires(Duration::from_secs(60))
        .await
        .unwrap();

    let Fixture { server, admin } = fx;
    drop(server); // graceful stop
    let restarted = Fixture::start(&args).await;
    drop(admin);

    // The same client reconnects and carries on.
    let mut info = lock.get_lock_info("job").await;
    if info.is_err() {
        // A pooled connection to the old process may fail once.
        info = lock.get_lock_info("job").await;
    }
    let info = info.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some(guard.owner()));
    assert_eq!(info.token, guard.token());
    assert!(lock.is_locked("job").await.unwrap());
    assert!(!lock.lock("job", "other").await.unwrap());
    assert!(guard.release().await.unwrap());
    assert!(lock.lock("job", "other").await.unwrap());
    drop(restarted);
    let _ = std::fs::remove_dir_all(dir);
}
