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
    let mut next = loop {
        match job.claim().await.unwrap() {
            Claim::Run(run) => break run,
            Claim::Taken { tick } if tick == first_tick => panic!("the vanished run's tick again"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let gap_ticks = (next.tick().timestamp_millis() - first_tick.timestamp_millis()) / 1000;
    assert!(gap_ticks >= 3, "{gap_ticks}");
    assert_eq!(next.missed_before(), u64::try_from(gap_ticks - 1).unwrap());
    next.recorded().await;
    let status = job.status(10).await.unwrap();
    let first_record = status.runs.iter().find(|r| r.tick == first_tick).unwrap();
    assert_eq!(first_record.outcome, RunOutcome::Abandoned);
    assert_eq!(status.missed, next.missed_before());
}

#[mongolock::mongo_locked(key = "macro:{name}", schedule = "2s", lock = lock)]
async fn scheduled_fn(lock: &MongoLock, name: &str, fail: bool) -> Result<Option<u32>, JobError> {
    if fail {
        return Err(JobError(format!("{name} failed")));
    }
    Ok(Some(42))
}

#[derive(Debug, PartialEq)]
struct JobError(String);

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError(e.to_string())
    }
}

/// Waits until just after a tick of a 2 s schedule, so that the calls
/// that follow (well within a second) all mean that tick.
async fn just_after_a_two_second_tick() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let wait = 2_000 - now % 2_000 + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// `#[mongo_locked(schedule = ...)]`: the first call of a tick runs the body
/// and records it, later calls of the same tick return `Ok(None)` without
/// running it; an error is recorded with its text.
#[tokio::test]
async fn the_attribute_runs_each_tick_once_and_records_it() {
    let lock = fresh_lock("jobs_macro").await;
    just_after_a_two_second_tick().await;
    assert_eq!(scheduled_fn(&lock, "a", false).await, Ok(Some(42)));
    assert_eq!(scheduled_fn(&lock, "a", false).await, Ok(None));
    assert_eq!(
        scheduled_fn(&lock, "b", true).await,
        Err(JobError("b failed".to_owned()))
    );
    let status = |key: &str| lock.job(key, Schedule::parse("2s").unwrap());
    let a = status("macro:a").status(5).await.unwrap();
    assert_eq!(a.runs.len(), 1);
    assert_eq!(a.runs[0].outcome, RunOutcome::Ok);
    let b = status("macro:b").status(5).await.unwrap();
    assert_eq!(
        b.runs[0].outcome,
        RunOutcome::Error("JobError(\"b failed\")".to_owned())
    );
}

/// The runner: every "process" calls the same loop; each tick runs once
/// among them, and ticks keep running while any one of them lives.
#[tokio::test]
async fn runners_in_every_process_run_each_tick_once_while_any_lives() {
    let first = fresh_lock("jobs_runner").await;
    let ran: std::sync::Arc<std::sync::Mutex<Vec<(i64, usize)>>> = Default::default();
    let mut runners = Vec::new();
    for process in 0..3 {
        let lock = MongoLock::with_collection(first.collection().clone());
        let ran = ran.clone();
        runners.push(tokio::spawn(async move {
            lock.job("runner", Schedule::parse("1s").unwrap())
                .run_every_tick(move |tick| {
                    let ran = ran.clone();
                    async move {
                        ran.lock()
                            .unwrap()
                            .push((tick.at.timestamp_millis(), process));
                        Ok::<_, Error>(())
                    }
                })
                .await
        }));
    }
    let count = || ran.lock().unwrap().len();
    // The schedule ticks by the clock: wait for ticks to pass.
    while count() < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two of the three "processes" end; the last keeps the ticks running.
    runners[0].abort();
    runners[1].abort();
    let before = count();
    while count() < before + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    runners[2].abort();
    let ran = ran.lock().unwrap().clone();
    let mut ticks: Vec<i64> = ran.iter().map(|(t, _)| *t).collect();
    ticks.dedup();
    assert_eq!(ticks.len(), ran.len(), "a tick ran twice: {ran:?}");
    assert!(ran[before..].iter().all(|(_, p)| *p == 2), "{ran:?}");
}

/// Per job: a tick whose runner vanished is run again by another process
/// (while the tick is still due) only with `retry_abandoned(true)`.
#[tokio::test]
async fn an_abandoned_tick_is_run_again_only_when_the_job_says_so() {
    let lock = fresh_lock("jobs_retry").await;
    for retry in [false, true] {
        let key = format!("retry-{retry}");
        let job = lock
            .job(key.as_str(), Schedule::parse("2s").unwrap())
            .expires(Duration::from_millis(300))
            .retry_abandoned(retry);
        just_after_a_two_second_tick().await;
        let Claim::Run(first) = job.claim().await.unwrap() else {
            panic!("the tick was not claimed");
        };
        let tick = first.tick();
        // The runner vanishes mid-run.
        std::mem::forget(first);
        // Its lease lapses (by the clock: that is what a lease is).
        tokio::time::sleep(Duration::from_millis(400)).await;
        match job.claim().await.unwrap() {
            Claim::Run(again) if retry => assert_eq!(again.tick(), tick),
            Claim::Taken { tick: taken } if !retry => assert_eq!(taken, tick),
            other => panic!("retry {retry}: {other:?}"),
        }
    }
}
