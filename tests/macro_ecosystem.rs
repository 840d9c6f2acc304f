//! `#[mongo_locked]` where it meets the rest of the async ecosystem, against
//! a live server: `#[async_trait]` methods, stacked locks, durations from
//! configuration, skipping when busy, spawning the future.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mongolock::{mongo_locked, Error, MongoLock};
use mongolock_suite::fresh_lock;

#[async_trait]
trait Job {
    async fn run(&self, id: u32) -> Result<bool, Error>;
}

struct Worker {
    lock: MongoLock,
}

#[async_trait]
impl Job for Worker {
    #[mongo_locked(key = "trait:{id}", lock = &self.lock)]
    async fn run(&self, id: u32) -> Result<bool, Error> {
        // Inside the boxed future, the lock is held.
        self.lock.is_locked(&format!("trait:{id}")).await
    }
}

#[tokio::test]
async fn async_trait_method_runs_under_the_lock() {
    let worker = Worker {
        lock: fresh_lock("async_trait").await,
    };
    let job: &dyn Job = &worker;
    assert!(job.run(7).await.unwrap(), "not locked inside the method");
    assert!(
        !worker.lock.is_locked("trait:7").await.unwrap(),
        "not released"
    );
    // Busy: the boxed future fails like any locked call.
    let _held = worker.lock.acquire("trait:8").await.unwrap();
    assert!(matches!(job.run(8).await, Err(Error::Locked { .. })));
}

#[mongo_locked(key = "outer", lock = lock)]
#[mongo_locked(key = "inner", lock = lock)]
async fn nested(lock: &MongoLock) -> Result<(bool, bool), Error> {
    Ok((
        lock.is_locked("outer").await?,
        lock.is_locked("inner").await?,
    ))
}

#[tokio::test]
async fn stacked_locks_are_taken_top_first() {
    let lock = fresh_lock("stacked").await;
    assert_eq!(nested(&lock).await.unwrap(), (true, true));
    // With the top lock busy, the bottom one is never touched.
    let lock = fresh_lock("stacked_busy").await;
    let _outer = lock.acquire("outer").await.unwrap();
    assert!(matches!(nested(&lock).await, Err(Error::Locked { key, .. }) if key == "outer"));
    assert_eq!(lock.get_lock_info("inner").await.unwrap(), None);
}

const LEASE: Duration = Duration::from_secs(42);

struct Config {
    timeout: Duration,
    renew: bool,
    expires_secs: u64,
}

#[mongo_locked(key = "configured", lock = lock, expires = LEASE, timeout = cfg.timeout, renew = cfg.renew)]
async fn configured(lock: &MongoLock, cfg: &Config) -> Result<i64, Error> {
    let info = lock.get_lock_info("configured").await?.expect("held");
    Ok(info.expires_at.timestamp_millis() - info.acquired_at.expect("taken").timestamp_millis())
}

#[mongo_locked(key = "seconds", lock = lock, expires = cfg.expires_secs)]
async fn lease_in_seconds(lock: &MongoLock, cfg: &Config) -> Result<(), Error> {
    Ok(())
}

#[tokio::test]
async fn durations_come_from_configuration_and_are_checked_at_run_time() {
    let lock = fresh_lock("configured").await;
    let cfg = Config {
        timeout: Duration::from_secs(5),
        renew: true,
        expires_secs: 0,
    };
    assert_eq!(configured(&lock, &cfg).await.unwrap(), 42_000);
    let refused = lease_in_seconds(&lock, &cfg).await;
    assert!(
        matches!(
            refused,
            Err(Error::InvalidDuration {
                what: "expires",
                ..
            })
        ),
        "{refused:?}"
    );
}

#[mongo_locked(key = "cron-tick", lock = lock, on_busy = skip)]
async fn tick(lock: &MongoLock, runs: &AtomicUsize) -> Result<(), Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[mongo_locked(key = "cron-report", lock = lock, on_busy = skip)]
async fn report(lock: &MongoLock) -> Result<Option<&'static str>, Error> {
    Ok(Some("report"))
}

#[tokio::test]
async fn busy_lock_skips_the_body_quietly() {
    let lock = fresh_lock("skip").await;
    let runs = AtomicUsize::new(0);
    tick(&lock, &runs).await.unwrap();
    assert_eq!(report(&lock).await.unwrap(), Some("report"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let _tick = lock.acquire("cron-tick").await.unwrap();
    let _report = lock.acquire("cron-report").await.unwrap();
    tick(&lock, &runs).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran while busy");
    assert_eq!(report(&lock).await.unwrap(), None);
}

#[mongo_locked(key = "spawned", lock = &lock)]
async fn spawnable(lock: MongoLock) -> Result<u32, Error> {
    tokio::task::yield_now().await;
    Ok(1)
}

#[tokio::test]
async fn future_with_a_send_body_and_output_can_be_spawned() {
    let lock = fresh_lock("spawned").await;
    let joined = tokio::spawn(spawnable(lock.clone())).await.unwrap();
    assert_eq!(joined.unwrap(), 1);
    assert!(!lock.is_locked("spawned").await.unwrap());
}

#[mongo_locked(key = "sized", lock = lock)]
async fn annotated(lock: &MongoLock, n: u64) -> Result<u64, Error> {
    tokio::task::yield_now().await;
    Ok(n + 1)
}

async fn by_hand(lock: &MongoLock, n: u64) -> Result<u64, Error> {
    let guard = lock.acquire("sized").await?;
    tokio::task::yield_now().await;
    let out = n + 1;
    guard.release().await?;
    Ok(out)
}

#[tokio::test]
async fn future_stays_within_one_and_a_half_times_a_manual_one() {
    let lock = fresh_lock("sized").await;
    let (annotated, by_hand) = (
        std::mem::size_of_val(&annotated(&lock, 1)),
        std::mem::size_of_val(&by_hand(&lock, 1)),
    );
    assert!(
        annotated * 2 <= by_hand * 3,
        "#[mongo_locked] future {annotated} bytes, manual {by_hand} bytes"
    );
}

// `cargo clippy --all-targets -D warnings` (in .ci/run) checks that the
// generated code does not trip restriction lints on the user's behalf.
#[deny(clippy::implicit_return)]
#[mongo_locked(key = "lint", lock = lock)]
async fn lint_clean(lock: &MongoLock) -> Result<(), Error> {
    return Ok(());
}

#[tokio::test]
async fn restriction_lints_see_no_generated_tail_expression() {
    let lock = fresh_lock("lint").await;
    assert!(lint_clean(&lock).await.is_ok());
}
