//! `#[mongo_locked]` functions against a live server: exclusion, concurrency,
//! errors, release on every exit, and several OS processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use mongolock::{mongo_locked, Error, MongoLock};
use mongolock_suite::{fresh_collection, fresh_lock, server_uri, Witness};
use tokio::sync::{oneshot, Barrier};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum AppError {
    Lock(Error),
    Job(&'static str),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Lock(e)
    }
}

/// Counts holders inside the body to catch overlaps.
#[derive(Default)]
struct Occupancy {
    inside: AtomicUsize,
    overlaps: AtomicUsize,
    runs: AtomicUsize,
}

#[mongo_locked(key = "shared:{name}", lock = lock, timeout = 60)]
async fn exclusive_job(
    lock: &MongoLock,
    name: &str,
    occupancy: &Occupancy,
) -> Result<(), AppError> {
    if occupancy.inside.fetch_add(1, Ordering::SeqCst) != 0 {
        occupancy.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    occupancy.inside.fetch_sub(1, Ordering::SeqCst);
    occupancy.runs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn calls_with_the_same_key_never_overlap() {
    let lock = fresh_lock("same_key").await;
    let occupancy = Arc::new(Occupancy::default());
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (lock, occupancy) = (lock.clone(), occupancy.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                exclusive_job(&lock, "a", &occupancy).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(occupancy.runs.load(Ordering::SeqCst), 36);
    assert_eq!(occupancy.overlaps.load(Ordering::SeqCst), 0);
}

#[mongo_locked(key = "meet:{key}", lock = lock)]
async fn meet(lock: &MongoLock, key: &str, barrier: &Barrier) -> Result<(), AppError> {
    // Both calls must be inside at once to pass the barrier.
    tokio::time::timeout(WAIT, barrier.wait())
        .await
        .map_err(|_| AppError::Job("the other key's call never ran alongside"))?;
    Ok(())
}

#[tokio::test]
async fn calls_with_different_keys_run_concurrently() {
    let lock = fresh_lock("different_keys").await;
    let barrier = Barrier::new(2);
    let (a, b) = tokio::join!(meet(&lock, "a", &barrier), meet(&lock, "b", &barrier));
    a.unwrap();
    b.unwrap();
}

#[mongo_locked(key = "busy", lock = lock, timeout = "300ms")]
async fn busy_job(lock: &MongoLock) -> Result<(), AppError> {
    Ok(())
}

#[tokio::test]
async fn timeout_becomes_the_users_error() {
    let lock = fresh_lock("timeout_error").await;
    assert!(lock.lock("busy", "someone-else").await.unwrap());
    match busy_job(&lock).await {
        Err(AppError::Lock(Error::Locked { key, owner, .. })) => {
            assert_eq!(key, "busy");
            assert_eq!(owner.as_deref(), Some("someone-else"));
        }
        other => panic!("expected AppError::Lock(Locked), got {other:?}"),
    }
}

#[mongo_locked(key = "exit:{how}", lock = lock, expires = 60)]
async fn exits(lock: &MongoLock, how: &str) -> Result<u32, AppError> {
    assert!(
        lock.is_locked(&format!("exit:{how}")).await?,
        "held inside the body"
    );
    match how {
        "err" => Err(AppError::Job("failed")),
        "early" => return Ok(1),
        "question" => {
            Err::<(), _>(AppError::Job("via ?"))?;
            Ok(2)
        }
        _ => Ok(3),
    }
}

#[tokio::test]
async fn lock_is_free_right_after_ok_err_early_return_and_question_mark() {
    let lock = fresh_lock("exits").await;
    assert_eq!(exits(&lock, "ok").await.unwrap(), 3);
    assert!(matches!(
        exits(&lock, "err").await,
        Err(AppError::Job("failed"))
    ));
    assert_eq!(exits(&lock, "early").await.unwrap(), 1);
    assert!(matches!(
        exits(&lock, "question").await,
        Err(AppError::Job("via ?"))
    ));
    for how in ["ok", "err", "early", "question"] {
        assert!(
            !lock.is_locked(&format!("exit:{how}")).await.unwrap(),
            "{how}"
        );
    }
}

#[mongo_locked(key = "panics", lock = lock, expires = 60)]
async fn panics(lock: &MongoLock) -> Result<(), AppError> {
    panic!("job failed hard");
}

#[tokio::test]
async fn lock_is_released_after_a_panic() {
    let lock = fresh_lock("panic").await;
    let task = tokio::spawn({
        let lock = lock.clone();
        async move { panics(&lock).await }
    });
    assert!(task.await.unwrap_err().is_panic());
    // The lease is 60 s: only the release on drop frees it in time.
    let guard = lock.acquire("panics").timeout(WAIT).await.unwrap();
    guard.release().await.unwrap();
}

#[mongo_locked(key = "forever", lock = lock, expires = 60)]
async fn runs_forever(lock: &MongoLock, entered: oneshot::Sender<()>) -> Result<(), AppError> {
    let _ = entered.send(());
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn lock_is_released_when_the_future_is_dropped() {
    let lock = fresh_lock("cancel").await;
    let (entered_tx, entered_rx) = oneshot::channel();
    let task = tokio::spawn({
        let lock = lock.clone();
        async move { runs_forever(&lock, entered_tx).await }
    });
    entered_rx.await.unwrap();
    assert!(lock.is_locked("forever").await.unwrap());
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let guard = lock.acquire("forever").timeout(WAIT).await.unwrap();
    guard.release().await.unwrap();
}

#[mongo_locked(key = "global-job:{n}")]
async fn uses_global(n: u32) -> Result<u32, AppError> {
    Ok(n)
}

#[tokio::test]
async fn global_lock_is_used_by_default_and_missing_config_is_an_error() {
    // Only this test touches the global in this binary.
    assert!(matches!(
        uses_global(1).await,
        Err(AppError::Lock(Error::NotConfigured))
    ));
    let lock = fresh_lock("global_default").await;
    mongolock::configure(lock.clone()).unwrap();
    assert_eq!(uses_global(2).await.unwrap(), 2);
    assert_eq!(
        lock.get_lock_info("global-job:2")
            .await
            .unwrap()
            .unwrap()
            .owner,
        None
    );
}

// ---- Several OS processes ---------------------------------------------------

const CHILD_ENV: &str = "MONGOLOCK_TEST_CHILD";
const PROCESSES: usize = 4;
const RUNS_PER_PROCESS: usize = 8;

#[mongo_locked(key = "cross-process", timeout = 120)]
async fn cross_process_job(witness: &Witness) -> Result<(), AppError> {
    let run = async {
        witness.enter("job").await?;
        witness.bump("job", Duration::from_millis(5)).await?;
        witness.leave("job").await
    };
    Ok(run.await.map_err(Error::from)?)
}

/// The body of each child process; does nothing in a normal test run.
#[tokio::test]
async fn child_process_worker() {
    let Ok(namespace) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (db, coll) = namespace.split_once('.').unwrap();
    let client = mongodb::Client::with_uri_str(server_uri().unwrap())
        .await
        .unwrap();
    let db = client.database(db);
    mongolock::configure(MongoLock::with_collection(db.collection(coll))).unwrap();
    let witness = Witness::new(db.collection(&format!("{coll}_state")));
    for _ in 0..RUNS_PER_PROCESS {
        cross_process_job(&witness).await.unwrap();
    }
}

#[tokio::test]
async fn several_processes_running_the_same_function_never_overlap() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let locks = fresh_collection("processes").await;
    let namespace = locks.namespace();
    let uri = server_uri().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["--exact", "child_process_worker", "--test-threads=1"])
                .env(CHILD_ENV, format!("{}.{}", namespace.db, namespace.coll))
                .env("MONGODB_URI", &uri)
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
        })
        .collect();
    for status in futures_util::future::join_all(children).await {
        assert!(status.unwrap().success(), "a child process failed");
    }
    let witness = Witness::new(
        locks
            .client()
            .database(&namespace.db)
            .collection(&format!("{}_state", namespace.coll)),
    );
    assert_eq!(
        witness.count("job").await.unwrap(),
        Some((PROCESSES * RUNS_PER_PROCESS) as i64)
    );
    assert_eq!(witness.overlaps().await.unwrap(), 0, "two holders at once");
}

#[mongo_locked(key = "outlives", lock = lock, expires = "1500ms")]
async fn outlives_its_lease(
    lock: &MongoLock,
    entered: oneshot::Sender<i64>,
    past_the_body: Arc<AtomicUsize>,
) -> Result<(), AppError> {
    let info = lock.get_lock_info("outlives").await?;
    let _ = entered.send(info.map_or(0, |i| i.token));
    std::future::pending::<()>().await;
    past_the_body.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Without `renew`, the body gets the lease it asked for and no more: when
/// the lease runs out locally (before the server's), the body is dropped at
/// its await and the function returns `LockLost` through the user's error.
#[tokio::test]
async fn a_body_that_outlives_its_lease_without_renew_is_cancelled() {
    let lock = fresh_lock("outlives").await;
    let (entered_tx, entered_rx) = oneshot::channel();
    let past_the_body = Arc::new(AtomicUsize::new(0));
    let call = tokio::spawn({
        let (lock, past) = (lock.clone(), past_the_body.clone());
        async move { outlives_its_lease(&lock, entered_tx, past).await }
    });
    let token = entered_rx.await.unwrap();
    match call.await.unwrap() {
        Err(AppError::Lock(Error::LockLost { key, .. })) => assert_eq!(key, "outlives"),
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert_eq!(past_the_body.load(Ordering::SeqCst), 0);
    // The body was gone before anyone else could take the lock.
    let next = lock.acquire("outlives").timeout(WAIT).await.unwrap();
    assert!(next.token() > token);
    next.release().await.unwrap();
}
