//! Scheduled jobs in one process: a tick is claimed once, the claim is the
//! lock, and every claimed tick leaves a record (ok, error, lost, skipped
//! while the previous run holds the lock, abandoned), with missed ticks
//! counted at the next claim.

use std::time::Duration;

use mongolock::{Claim, Error, MongoLock, RunOutcome, Schedule};
use mongolock_suite::fresh_lock;

/// Hourly, with a tolerance of an hour (cut to just under half an hour):
/// whenever a test runs, one tick is due, the same for every claim of the
/// test (unless it straddles the half hour, a millisecond's chance).
fn hourly(lock: &MongoLock, key: &str) -> mongolock::Job {
    lock.job(key, Schedule::parse("1h").unwrap())
        .tolerance(Duration::from_secs(3600))
}

#[tokio::test]
async fn a_tick_is_claimed_once_and_its_run_recorded() {
    let a = fresh_lock("jobs_once").await;
    let b = MongoLock::with_collection(a.collection().clone());
    let ran = hourly(&a, "report")
        .run(|_| async { Ok::<_, Error>(7) })
        .await
        .unwrap();
    assert_eq!(ran.map(|r| r.unwrap()), Some(7));
    // The same tick, from another process: not run again, though the lock
    // is free.
    let again = hourly(&b, "report")
        .run(|_| async { Ok::<_, Error>(8) })
        .await
        .unwrap();
    assert!(again.is_none());
    assert!(matches!(
        hourly(&b, "report").claim().await.unwrap(),
        Claim::Taken { .. }
    ));
    let status = hourly(&a, "report").status(10).await.unwrap();
    assert_eq!(status.runs.len(), 1, "{status:?}");
    let run = &status.runs[0];
    assert_eq!(run.outcome, RunOutcome::Ok);
    assert!(run.token > 0);
    assert!(run.started.is_some() && run.finished.is_some());
    assert_eq!(run.pid, i64::from(std::process::id()));
    assert!(status.running.is_none());
    assert!(status.next_tick.is_some());
}

#[tokio::test]
async fn a_failed_run_is_recorded_with_its_error() {
    let lock = fresh_lock("jobs_error").await;
    let ran = hourly(&lock, "import")
        .run(|_| async { Err::<(), _>("disk full") })
        .await
        .unwrap();
    assert_eq!(ran, Some(Err("disk full")));
    let status = hourly(&lock, "import").status(1).await.unwrap();
    assert_eq!(
        status.runs[0].outcome,
        RunOutcome::Error("\"disk full\"".into())
    );
}

/// A run that outlasts the period: the ticks that come meanwhile are
/// claimed and recorded as skipped because the previous run still holds
/// the lock, never silently dropped and never run beside it.
#[tokio::test]
async fn ticks_during_a_long_run_are_recorded_as_skipped() {
    let lock = fresh_lock("jobs_long").await;
    let other = MongoLock::with_collection(lock.collection().clone());
    let every_second = |l: &MongoLock| l.job("slow", Schedule::parse("1s").unwrap());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let long = tokio::spawn({
        let job = every_second(&lock);
        async move {
            loop {
                if let Claim::Run(run) = job.claim().await.unwrap() {
                    started_tx.send(run.tick()).unwrap();
                    // Hold it across the next ticks, until told.
                    let _ = done_rx.await;
                    return run;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let long_tick = started_rx.await.unwrap();
    let skipped = loop {
        match every_second(&other).claim().await.unwrap() {
            Claim::StillRunning { tick } => break tick,
            Claim::Run(_) => panic!("a second run beside the first"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(skipped > long_tick);
    done_tx.send(()).unwrap();
    let run = long.await.unwrap();
    assert!(!run.guard().is_lost());
    drop(run);
    let status = every_second(&lock).status(10).await.unwrap();
    let outcome_of = |tick| {
        status
            .runs
            .iter()
            .find(|r| r.tick == tick)
            .map(|r| r.outcome.clone())
    };
    assert_eq!(outcome_of(skipped), Some(RunOutcome::SkippedStillRunning));
    assert!(outcome_of(long_tick).is_some());
}

/// Ticks nobody claimed are counted at the next claim; a run whose runner
/// vanished mid-run is recorded as abandoned once its lease has lapsed, and
/// its tick is not run again.
#[tokio::test]
async fn missed_ticks_are_counted_and_a_vanished_runner_is_recorded_abandoned() {
    let lock = fresh_lock("jobs_missed").await;
    let job = lock
        .job("tidy", Schedule::parse("1s").unwrap())
        .expires(Duration::from_millis(500));
    let first = loop {
        if let Claim::Run(run) = job.claim().await.unwrap() {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first_tick = first.tick();
    // The runner vanishes: no outcome, no release.
    std::mem::forget(first);
    // Nobody claims for a while; then a claim comes.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let next = loop {
        match job.claim().await.unwrap() {
            Claim::Run(run) => break run,
            Claim::Taken { tick } if tick == first_tick => panic!("the vanished run's tick again"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let gap_ticks = (next.tick().timestamp_millis() - first_tick.timestamp_millis()) / 1000;
    assert!(gap_ticks >= 3, "{gap_ticks}");
    assert_eq!(next.missed_before(), u64::try_from(gap_ticks - 1).unwrap());
    let status = job.status(10).await.unwrap();
    let first_record = status.runs.iter().find(|r| r.tick == first_tick).unwrap();
    assert_eq!(first_record.outcome, RunOutcome::Abandoned);
    assert_eq!(status.missed, next.missed_before());
}
