//! `MongoLock::in_memory()`: what a user's unit tests observe without a
//! MongoDB server: exclusion, skip, timeout, waiting in line, the lost
//! signal, tick claims and run records. No test here starts a server.

use std::sync::Arc;
use std::time::Duration;

use mongolock::{mongo_locked, Claim, Error, MongoLock, RunOutcome, Schedule};
use tokio::sync::{oneshot, Mutex};

/// A job that must not run twice at once, as a user would write it.
#[mongo_locked(key = "report:{user}", lock = lock, on_busy = skip)]
async fn report(
    lock: &MongoLock,
    user: u32,
    inside: Arc<Mutex<u32>>,
    entered: Option<oneshot::Sender<()>>,
    leave: Option<oneshot::Receiver<()>>,
) -> Result<Option<u32>, Error> {
    *inside.lock().await += 1;
    if let Some(entered) = entered {
        let _ = entered.send(());
    }
    if let Some(leave) = leave {
        let _ = leave.await;
    }
    Ok(Some(user))
}

#[tokio::test]
async fn a_second_call_is_skipped_while_the_first_holds_the_lock() {
    let lock = MongoLock::in_memory().unwrap();
    let inside = Arc::new(Mutex::new(0));
    let (entered_tx, entered) = oneshot::channel();
    let (leave, leave_rx) = oneshot::channel();
    let first = tokio::spawn({
        let (lock, inside) = (lock.clone(), inside.clone());
        async move { report(&lock, 7, inside, Some(entered_tx), Some(leave_rx)).await }
    });
    entered.await.unwrap();
    // Busy: skipped, the body did not run.
    assert_eq!(
        report(&lock, 7, inside.clone(), None, None).await.unwrap(),
        None
    );
    // Another key is not busy.
    assert_eq!(
        report(&lock, 8, inside.clone(), None, None).await.unwrap(),
        Some(8)
    );
    leave.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Some(7));
    // Released: it runs again.
    assert_eq!(
        report(&lock, 7, inside.clone(), None, None).await.unwrap(),
        Some(7)
    );
    assert_eq!(*inside.lock().await, 3);
}

#[tokio::test]
async fn a_waiter_times_out_on_a_held_lock_and_gets_it_once_released() {
    let lock = MongoLock::in_memory().unwrap();
    let held = lock.acquire("job").await.unwrap();
    let waited = lock
        .acquire("job")
        .timeout(Duration::from_millis(100))
        .await;
    assert!(matches!(waited, Err(Error::Locked { .. })), "{waited:?}");
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire("job").timeout(Duration::from_secs(30)).await }
    });
    let first_token = held.token();
    held.release().await.unwrap();
    let next = waiter.await.unwrap().unwrap();
    assert!(next.token() > first_token);
    assert_eq!(lock.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn waiters_are_served_in_the_order_they_asked() {
    let lock = MongoLock::in_memory().unwrap();
    let held = lock.acquire("line").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..3 {
        let (waiter, order) = (lock.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = waiter
                .acquire("line")
                .timeout(Duration::from_secs(30))
                .await
                .unwrap();
            order.lock().await.push(n);
            guard.release().await.unwrap();
        }));
        // Each joins the queue before the next asks.
        while lock.get_lock_info("line").await.unwrap().unwrap().waiters < n + 1 {
            tokio::task::yield_now().await;
        }
    }
    held.release().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().await, vec![0, 1, 2]);
}

#[tokio::test]
async fn a_lease_that_runs_out_or_a_forced_release_is_reported_lost() {
    let lock = MongoLock::in_memory().unwrap();
    let short = lock
        .acquire("short")
        .expires(Duration::from_millis(200))
        .await
        .unwrap();
    // The holder lets go first: its lease is counted from before its
    // request, less the drift allowance.
    assert!(matches!(short.lost().await, Error::LockLost { .. }));

    let renewing = lock
        .acquire("renewed")
        .expires(Duration::from_millis(300))
        .renew(true)
        .await
        .unwrap();
    assert!(lock.force_release("renewed").await.unwrap());
    assert!(matches!(renewing.lost().await, Error::LockLost { .. }));
}

#[mongo_locked(key = "nightly", schedule = "2s", lock = lock)]
async fn nightly(lock: &MongoLock) -> Result<(), Error> {
    Ok(())
}

#[tokio::test]
async fn ticks_are_claimed_once_and_recorded() {
    let lock = MongoLock::in_memory().unwrap();
    let job = lock
        .job("hourly", Schedule::parse("1h").unwrap())
        .tolerance(Duration::from_secs(3600));
    let ran = job.run(|_| async { Ok::<_, Error>(1) }).await.unwrap();
    assert_eq!(ran.map(|r| r.unwrap()), Some(1));
    assert!(matches!(job.claim().await.unwrap(), Claim::Taken { .. }));
    let status = job.status(5).await.unwrap();
    assert_eq!(status.runs.len(), 1);
    assert_eq!(status.runs[0].outcome, RunOutcome::Ok);
    // The attribute, too: whatever the tick, a second call of it skips.
    nightly(&lock).await.unwrap();
    let runs = lock.job_statuses(5).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        lock.check().await.unwrap().topology,
        mongolock::Topology::InMemory
    );
}

#[mongo_locked(key = "invoice:{id}", on_busy = skip)]
async fn send_invoice(id: u64) -> mongolock::Result<Option<u64>> {
    Ok(Some(id))
}

/// The README's pattern: the global lock set to an in-memory one.
#[tokio::test]
async fn the_global_lock_can_be_an_in_memory_one() {
    let _ = mongolock::configure(MongoLock::in_memory().unwrap());
    assert_eq!(send_invoice(1).await.unwrap(), Some(1));
    let held = mongolock::global()
        .unwrap()
        .acquire("invoice:2")
        .await
        .unwrap();
    assert_eq!(send_invoice(2).await.unwrap(), None);
    held.release().await.unwrap();
    assert_eq!(send_invoice(2).await.unwrap(), Some(2));
}
