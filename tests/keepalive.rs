//! Keep-alive, the lost signal and the minimum hold, against a live server.

use std::time::Duration;

use mongodb::bson::doc;
use mongolock::{mongo_locked, Error, MongoLock};
use mongolock_suite::fresh_lock;
use tokio::sync::oneshot;

const LEASE: Duration = Duration::from_millis(600);
const WAIT: Duration = Duration::from_secs(30);

/// Takes the lock away from its holder, as a buggy or malicious writer
/// would: the holder must notice at its next renewal.
async fn steal(lock: &MongoLock, key: &str) {
    lock.collection()
        .update_one(doc! { "_id": key }, doc! { "$set": { "owner": "thief" } })
        .await
        .unwrap();
}

#[tokio::test]
async fn renewing_guard_keeps_the_lock_past_its_lease() {
    let lock = fresh_lock("renew_keeps").await;
    let guard = lock
        .acquire("job")
        .expires(LEASE)
        .renew_every(LEASE / 6)
        .await
        .unwrap();
    // Another worker waits three whole leases and still cannot get in.
    let other = lock.acquire("job").timeout(LEASE * 3).await;
    assert!(matches!(other, Err(Error::Locked { .. })), "{other:?}");
    assert!(!guard.is_lost());
    assert!(guard.release().await.unwrap());
}

#[tokio::test]
async fn guard_without_renewal_is_lost_when_its_lease_runs_out() {
    let lock = fresh_lock("no_renew_lost").await;
    let guard = lock.acquire("job").expires(LEASE).await.unwrap();
    assert!(!guard.is_lost());
    match guard.lost().await {
        Error::LockLost { key, owner, reason } => {
            assert_eq!(key, "job");
            assert_eq!(owner, guard.owner());
            assert!(reason.contains("ran out"), "{reason}");
        }
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert!(guard.is_lost());
    // The local view is conservative (counted from when the request was
    // sent), so the server may hold the lease a round trip longer.
    assert!(lock.lock("job", "next").timeout(WAIT).await.unwrap());
    let next = lock.get_lock_info("job").await.unwrap().unwrap();
    assert!(next.acquired_at.unwrap() >= guard.expires_at());
}

#[tokio::test]
async fn renewal_that_finds_another_owner_reports_lost() {
    let lock = fresh_lock("renew_finds_thief").await;
    let guard = lock
        .acquire("job")
        .expires(Duration::from_secs(30))
        .renew_every(Duration::from_millis(50))
        .await
        .unwrap();
    steal(&lock, "job").await;
    match guard.lost().await {
        Error::LockLost { reason, .. } => assert!(reason.contains("another owner"), "{reason}"),
        other => panic!("expected LockLost, got {other:?}"),
    }
    // The release is owner-checked: the thief keeps what it took.
    assert!(!guard.release().await.unwrap());
    let info = lock.get_lock_info("job").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some("thief"));
}

#[tokio::test]
async fn renew_interval_must_be_shorter_than_the_lease() {
    let lock = fresh_lock("renew_interval").await;
    for interval in [LEASE, LEASE * 2, Duration::ZERO] {
        let r = lock
            .acquire("job")
            .expires(LEASE)
            .renew_every(interval)
            .await;
        assert!(
            matches!(r, Err(Error::InvalidDuration { .. })),
            "{interval:?}: {r:?}"
        );
    }
    let r = lock
        .acquire("job")
        .expires(Duration::from_millis(2))
        .renew(true)
        .await;
    assert!(matches!(r, Err(Error::InvalidDuration { .. })), "{r:?}");
    assert_eq!(
        lock.get_lock_info("job").await.unwrap(),
        None,
        "nothing taken"
    );
}

#[mongo_locked(key = "long-job", lock = lock, expires = "600ms", renew = true)]
async fn long_job(lock: &MongoLock) -> Result<bool, Error> {
    // Runs for several leases; another worker waiting all that time fails.
    let other = lock.lock("long-job", "other").timeout(LEASE * 3).await?;
    Ok(other)
}

#[tokio::test]
async fn annotated_function_with_renew_outlives_its_lease() {
    let lock = fresh_lock("macro_renew").await;
    assert!(!long_job(&lock).await.unwrap(), "nobody else got in");
    assert!(!lock.is_locked("long-job").await.unwrap(), "released after");
}

#[derive(Debug)]
enum JobError {
    Lock(Error),
}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError::Lock(e)
    }
}

#[mongo_locked(key = "stolen-job", lock = lock, expires = 30, renew = "50ms")]
async fn stolen_job(lock: &MongoLock, entered: oneshot::Sender<()>) -> Result<(), JobError> {
    let _ = entered.send(());
    std::future::pending::<()>().await;
    unreachable!("the body is cancelled when the lock is lost");
}

#[tokio::test]
async fn lost_lock_cancels_the_annotated_body_with_lock_lost() {
    let lock = fresh_lock("macro_lost").await;
    let (entered_tx, entered_rx) = oneshot::channel();
    let job = tokio::spawn({
        let lock = lock.clone();
        async move { stolen_job(&lock, entered_tx).await }
    });
    entered_rx.await.unwrap();
    steal(&lock, "stolen-job").await;
    match job.await.unwrap() {
        Err(JobError::Lock(Error::LockLost { key, .. })) => assert_eq!(key, "stolen-job"),
        other => panic!("expected LockLost through the user's error, got {other:?}"),
    }
}

#[tokio::test]
async fn release_keeps_the_lock_until_the_minimum_hold() {
    let lock = fresh_lock("min_hold").await;
    let min_hold = Duration::from_millis(1500);
    let guard = lock.acquire("job").min_hold(min_hold).await.unwrap();
    let first = guard.acquired_at().unwrap();
    assert!(guard.release().await.unwrap());
    assert!(
        lock.is_locked("job").await.unwrap(),
        "still held after release"
    );
    assert_eq!(
        lock.get_lock_info("job").await.unwrap().unwrap().owner,
        None
    );
    let next = lock.acquire("job").timeout(WAIT).await.unwrap();
    let gap = next.acquired_at().unwrap().timestamp_millis() - first.timestamp_millis();
    assert!(
        gap >= min_hold.as_millis() as i64,
        "taken {gap} ms after the first"
    );
}

#[tokio::test]
async fn release_after_the_minimum_hold_frees_at_once() {
    let lock = fresh_lock("min_hold_passed").await;
    let guard = lock
        .acquire("job")
        .min_hold(Duration::from_millis(1))
        .await
        .unwrap();
    // Wait out the hold on the server's clock via an unrelated lock's expiry.
    assert!(lock
        .lock("clock", "a")
        .expires(Duration::from_millis(50))
        .await
        .unwrap());
    assert!(lock.lock("clock", "b").timeout(WAIT).await.unwrap());
    assert!(guard.release().await.unwrap());
    assert!(!lock.is_locked("job").await.unwrap());
}

/// The Python package's "Lock simply not works" scenario: a 100 ms job on
/// machine 1 finishes before machine 2's cron fires a little later, so
/// machine 2 would run it again. A minimum hold covers the cron skew.
#[mongo_locked(key = "cron:{task}", lock = lock, min_hold = "3s")]
async fn cron_task(
    lock: &MongoLock,
    task: &str,
    runs: &std::sync::atomic::AtomicUsize,
) -> Result<(), Error> {
    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

#[tokio::test]
async fn fast_job_is_not_rerun_by_a_late_cron_on_another_machine() {
    let lock = fresh_lock("cron_skew").await;
    let machine1 = lock.clone();
    let machine2 = MongoLock::with_collection(lock.collection().clone());
    let runs = std::sync::atomic::AtomicUsize::new(0);
    cron_task(&machine1, "task-a", &runs).await.unwrap();
    // Machine 2 fires after machine 1 finished and released.
    let late = cron_task(&machine2, "task-a", &runs).await;
    assert!(matches!(late, Err(Error::Locked { .. })), "{late:?}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}
