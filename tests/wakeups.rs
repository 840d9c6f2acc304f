//! Waiting: change-stream wake-ups, expiry-aware sleeps, polling fallback,
//! and the admin operations.

use std::time::Duration;

use mongolock::{Error, MongoLock};
use mongolock_suite::fresh_lock;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);

/// A waiter that reports when it got the lock.
fn waiter(lock: &MongoLock, key: &'static str) -> oneshot::Receiver<i64> {
    let (tx, rx) = oneshot::channel();
    let lock = lock.clone();
    tokio::spawn(async move {
        if let Ok(guard) = lock.acquire(key).timeout(WAIT).await {
            let _ = tx.send(guard.token());
            let _ = guard.release().await;
        }
    });
    rx
}

#[tokio::test]
async fn waiter_takes_a_released_lock_long_before_its_lease_ends() {
    for streams in [true, false] {
        let lock = fresh_lock("wake_on_release")
            .await
            .with_change_streams(streams);
        let holder = lock
            .acquire("job")
            .expires(Duration::from_secs(120))
            .await
            .unwrap();
        let token = holder.token();
        let got = waiter(&lock, "job");
        // Let the waiter find the lock busy first.
        let other = lock
            .acquire("job")
            .timeout(Duration::from_millis(200))
            .await;
        assert!(matches!(other, Err(Error::Locked { .. })));
        holder.release().await.unwrap();
        // The lease had 2 minutes left; the waiter's own timeout is 30 s.
        let next = got
            .await
            .expect("the waiter took the lock after the release");
        assert!(next > token, "streams={streams}");
    }
}

#[tokio::test]
async fn waiters_on_other_keys_keep_waiting() {
    let lock = fresh_lock("other_keys").await;
    let a = lock
        .acquire("a")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let b = lock
        .acquire("b")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let mut got_b = waiter(&lock, "b");
    let got_a = waiter(&lock, "a");
    a.release().await.unwrap();
    got_a.await.expect("the waiter on a got it");
    assert!(got_b.try_recv().is_err(), "b is still held");
    assert!(lock.is_locked("b").await.unwrap());
    b.release().await.unwrap();
    got_b
        .await
        .expect("the waiter on b got it after b's release");
}

#[tokio::test]
async fn crashed_holder_is_replaced_at_its_expiry() {
    let lock = fresh_lock("expiry_wait").await;
    // A holder that vanishes: never releases, never renews.
    assert!(lock
        .lock("job", "ghost")
        .expires(Duration::from_millis(400))
        .await
        .unwrap());
    let ghost = lock.get_lock_info("job").await.unwrap().unwrap();
    let guard = lock.acquire("job").timeout(WAIT).await.unwrap();
    assert!(guard.acquired_at().unwrap() >= ghost.expires_at);
}

#[tokio::test]
async fn list_shows_holders_and_force_release_frees_them() {
    let lock = fresh_lock("admin").await;
    let a = lock.acquire("a").await.unwrap();
    assert!(lock.lock("b", "worker-b").await.unwrap());
    assert!(lock
        .lock("c", "gone")
        .expires(Duration::from_millis(1))
        .await
        .unwrap());
    lock.lock("d", "d").await.unwrap();
    lock.release("d", "d").await.unwrap();
    // Wait out c's 1 ms lease on the server's clock.
    assert!(lock.lock("c", "next").timeout(WAIT).await.unwrap());
    lock.release("c", "next").await.unwrap();

    let held = lock.list().await.unwrap();
    let keys: Vec<_> = held
        .iter()
        .map(|i| (i.key.as_str(), i.owner.as_deref()))
        .collect();
    assert_eq!(keys, [("a", Some(a.owner())), ("b", Some("worker-b"))]);
    assert_eq!(held[0].token, a.token());

    assert!(lock.force_release("b").await.unwrap());
    assert!(!lock.force_release("b").await.unwrap(), "already free");
    assert!(!lock.force_release("missing").await.unwrap());
    assert!(matches!(
        lock.force_release("").await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(lock.lock("b", "someone-else").await.unwrap());
    let after = lock.get_lock_info("b").await.unwrap().unwrap();
    assert!(
        after.token > held[1].token,
        "tokens keep growing after force_release"
    );
}

#[tokio::test]
async fn credentials_never_show_in_debug_output() {
    let lock = MongoLock::connect("mongodb://admin:hunter2@127.0.0.1:1/?connectTimeoutMS=100")
        .await
        .unwrap();
    let shown = format!("{lock:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("admin:"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_waiter_outside_the_queue_hears_of_releases_on_a_stream_opened_for_queued_ones() {
    let holders = fresh_lock("widen").await;
    // The waiters' process: its stream first opens for a queued waiter,
    // which is not told of releases that leave no queue.
    let (waiters, commands) = mongolock_suite::Commands::lock(holders.collection()).await;
    let lease = Duration::from_secs(120);
    let a = holders.acquire("a").expires(lease).await.unwrap();
    let b = holders.acquire("b").expires(lease).await.unwrap();
    let queued = tokio::spawn({
        let waiters = waiters.clone();
        async move { waiters.acquire("a").timeout(WAIT).await }
    });
    // Asleep after its first attempts (light, then queued), and again once
    // the stream opened.
    commands.until_listening(3).await;
    // A waiter outside any queue: fair(false) on another key.
    let unfair = tokio::spawn({
        let waiters = waiters.clone();
        async move { waiters.acquire("b").fair(false).timeout(WAIT).await }
    });
    // It found "b" taken outside any queue: the stream reopens, wide. (Not
    // a count of attempts: the queued waiter's own re-checks count too.)
    let widened = commands.until(|c| c.count("aggregate").1 >= 2);
    tokio::time::timeout(WAIT, widened)
        .await
        .expect("the stream was not reopened for the waiter outside the queue");
    let delivered = commands.delivered();
    assert!(b.release().await.unwrap());
    // The waiters' process is told of the release.
    let told = commands.until(|c| c.delivered() > delivered);
    tokio::time::timeout(WAIT, told)
        .await
        .expect("the release that left no queue was not delivered");
    let got = unfair.await.unwrap().unwrap();
    assert!(got.release().await.unwrap());
    assert!(a.release().await.unwrap());
    let next = queued.await.unwrap().unwrap();
    assert!(next.release().await.unwrap());
}

#[tokio::test]
async fn the_change_stream_closes_once_no_waiter_is_left_and_opens_again_for_the_next() {
    let holders = fresh_lock("idle_close").await;
    let (waiters, commands) = mongolock_suite::Commands::lock(holders.collection()).await;
    let waiters = waiters.with_stream_idle_close(Duration::ZERO).unwrap();
    for round in 1..=2 {
        // (The last round's waiter may still be releasing.)
        let held = holders
            .acquire("job")
            .expires(Duration::from_secs(120))
            .timeout(WAIT)
            .await
            .unwrap();
        let get_mores = commands.count("getMore").0;
        let got = waiter(&waiters, "job");
        // This round's stream is open and waiting for events.
        let listening =
            commands.until(|c| c.count("aggregate").1 == round && c.count("getMore").0 > get_mores);
        tokio::time::timeout(WAIT, listening)
            .await
            .expect("no change stream opened for the waiter");
        assert!(held.release().await.unwrap());
        got.await.expect("the waiter did not get the lock");
        // Its waiter has left: the stream closes at its next `getMore`.
        let closed = commands.until(|c| c.count("killCursors").0 == round);
        tokio::time::timeout(WAIT, closed)
            .await
            .expect("the change stream stayed open with no waiter");
    }
}

/// A stream widened for a waiter outside any queue narrows again once it
/// closed for want of waiters: the next one, opened for a queued waiter, is
/// not sent releases that leave no queue. (Events come in order, so the one
/// release delivered before the waiter's lock is handed over is the
/// hand-over itself.)
#[tokio::test]
async fn a_widened_stream_opens_narrow_again_after_it_closed() {
    let holders = fresh_lock("narrow_again").await;
    let (waiters, commands) = mongolock_suite::Commands::lock(holders.collection()).await;
    let waiters = waiters.with_stream_idle_close(Duration::ZERO).unwrap();
    // An unfair waiter widens the stream, gets the lock, leaves; the idle
    // stream closes.
    let held = holders
        .acquire("a")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let unfair = tokio::spawn({
        let waiters = waiters.clone();
        async move { waiters.acquire("a").fair(false).timeout(WAIT).await }
    });
    commands.until(|c| c.count("getMore").0 >= 1).await;
    assert!(held.release().await.unwrap());
    unfair.await.unwrap().unwrap().release().await.unwrap();
    commands.until(|c| c.count("killCursors").0 >= 1).await;
    // A queued waiter opens the next stream.
    let held = holders
        .acquire("b")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let get_mores = commands.count("getMore").0;
    let queued = waiter(&waiters, "b");
    commands
        .until(|c| c.count("aggregate").1 >= 2 && c.count("getMore").0 > get_mores)
        .await;
    let delivered = commands.delivered();
    // A release that leaves no queue, then the hand-over to the waiter.
    holders.acquire("c").await.unwrap().release().await.unwrap();
    assert!(held.release().await.unwrap());
    queued.await.expect("the waiter did not get the lock");
    assert_eq!(
        commands.delivered() - delivered,
        1,
        "a narrow stream is sent the hand-over only"
    );
}
