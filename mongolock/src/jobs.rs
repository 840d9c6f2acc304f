//! Scheduled jobs: exactly one run per tick across a fleet, with a record
//! of every claimed tick.
//!
//! A run claims its *tick* and takes the job's lock in one round trip (the
//! lock core's acquisition with a [`TickClaim`](crate::query::TickClaim)):
//! the server picks the fire time nearest its own clock and claims it only
//! if it is within the tolerance and later than the last tick claimed. So
//! a tick is claimed at most once, however the fleet's schedulers are
//! skewed and however short the run; the run then holds an ordinary lock
//! (fencing token, renewal, lost signal).

mod records;
mod schedule;
mod status;

use std::future::Future;
use std::time::Duration;

use mongodb::bson::DateTime;

pub use crate::settings::DEFAULT_RUN_HISTORY;
pub use records::{RunOutcome, RunRecord};
pub use schedule::Schedule;
pub use status::JobStatus;

use crate::attempt::{Attempt, Request};
use crate::error::{Error, Result};
use crate::guard::{Held, LockGuard};
use crate::mongo_lock::MongoLock;
use crate::owner::unique_owner;
use crate::query::HandOver;
use crate::settings::DEFAULT_EXPIRES;
use records::Claimed;

/// The most a tick may be from the server's clock by default: a scheduler
/// that fires later than this after a tick does not run it.
pub const DEFAULT_TICK_TOLERANCE: Duration = Duration::from_secs(60);

/// A scheduled job: a key, a schedule, and how its runs hold the lock.
/// Made by [`MongoLock::job`].
///
/// ```no_run
/// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
/// use mongolock::Schedule;
///
/// let job = lock.job("nightly-report", Schedule::parse("0 2 * * *")?);
/// // Called by every machine's scheduler at 02:00; runs on one of them.
/// match job.run(|tick| async move { println!("the report of {}", tick.at); Ok::<_, std::io::Error>(()) }).await? {
///     Some(result) => println!("ran: {result:?}"),
///     None => println!("another machine has this tick"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Job {
    lock: MongoLock,
    key: String,
    schedule: Schedule,
    expires: Option<Duration>,
    tolerance: Duration,
    retry_abandoned: bool,
}

/// What [`Job::claim`] got.
#[derive(Debug)]
#[non_exhaustive]
pub enum Claim {
    /// This process claimed the tick and holds the job's lock for its run.
    Run(Box<TickRun>),
    /// Another process claimed this tick.
    Taken {
        /// The tick.
        tick: DateTime,
    },
    /// This process claimed the tick while a previous run still holds the
    /// lock: the tick is recorded as skipped and runs nowhere.
    StillRunning {
        /// The tick.
        tick: DateTime,
    },
    /// No fire time is within the tolerance of the server's clock (the
    /// scheduler fired too early or too late).
    NotDue,
}

/// A claimed tick: the lock held for its run.
#[derive(Debug)]
pub struct TickRun {
    guard: LockGuard,
    tick: DateTime,
    missed_before: u64,
    /// The claim's record, written in the background.
    recorded: Option<tokio::task::JoinHandle<()>>,
    /// When the claim returned, to time the run.
    claimed: tokio::time::Instant,
}

impl TickRun {
    /// The tick claimed.
    pub fn tick(&self) -> DateTime {
        self.tick
    }

    /// Ticks nobody claimed since the previous claimed tick.
    pub fn missed_before(&self) -> u64 {
        self.missed_before
    }

    /// The run's lock: its fencing token, its lost signal.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Waits until the claim's run record is written: it is written in the
    /// background, off the claim's path (the claim is one round trip).
    pub async fn recorded(&mut self) {
        if let Some(recorded) = self.recorded.take() {
            // A failed write was logged by the task.
            let _ = recorded.await;
        }
    }

    /// The tick, its token and the missed ticks before it.
    pub fn info(&self) -> Tick {
        Tick {
            at: self.tick,
            token: self.guard.token(),
            missed_before: self.missed_before,
        }
    }
}

/// The tick a run was claimed for, handed to the job by [`Job::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tick {
    /// The scheduled fire time claimed (the server's choice: the one
    /// nearest its clock).
    pub at: DateTime,
    /// The run's fencing token: pass it to what the job writes, so that a
    /// run that lost its lock is refused there.
    pub token: i64,
    /// Ticks nobody claimed since the previous claimed tick.
    pub missed_before: u64,
}

impl MongoLock {
    /// A scheduled job named `key`, firing on `schedule`. See [`Job`].
    pub fn job(&self, key: impl Into<String>, schedule: Schedule) -> Job {
        Job {
            lock: self.clone(),
            key: key.into(),
            schedule,
            expires: None,
            tolerance: DEFAULT_TICK_TOLERANCE,
            retry_abandoned: false,
        }
    }
}

impl Job {
    /// The lease of a run. Without it, runs take the default lease
    /// ([`DEFAULT_EXPIRES`](crate::DEFAULT_EXPIRES)) and renew it while
    /// they run; with it, they hold exactly that long and a run that
    /// outlasts it is cancelled and recorded as lost.
    pub fn expires(mut self, lease: Duration) -> Self {
        self.expires = Some(lease);
        self
    }

    /// How far from the server's clock a tick may be for a run to claim it
    /// (default [`DEFAULT_TICK_TOLERANCE`], 60 s); it is also never more
    /// than just under half the gap between ticks, so the nearest tick is
    /// always the one meant. Schedulers skewed from the server by less than
    /// this run each tick once between them.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Whether a tick whose run ended without recording an outcome (its
    /// runner died, or lost the lock) may be run again by another process,
    /// while the tick is still within the tolerance of the server's clock.
    /// Default `false`: a run that died mid-way may have done part of its
    /// work (sent some of the mails), and running the tick again would do
    /// that part twice; turn it on for jobs that are safe to repeat, to
    /// have each tick run at least once rather than at most once.
    pub fn retry_abandoned(mut self, retry: bool) -> Self {
        self.retry_abandoned = retry;
        self
    }

    /// The job's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The job's schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Claims the tick nearest the server's clock and takes the job's lock
    /// for its run, in one round trip, and records the claim. Call it when
    /// your scheduler fires, or use [`run`](Self::run), which also runs the
    /// job and records its outcome.
    pub async fn claim(&self) -> Result<Claim> {
        match self.claim_once().await? {
            // The estimate of the server's clock may be stale (its clock
            // stepped): read it again, and try once more.
            Claim::NotDue => {
                self.lock.server_clock().forget();
                self.claim_once().await
            }
            claim => Ok(claim),
        }
    }

    async fn claim_once(&self) -> Result<Claim> {
        let lock = &self.lock;
        lock.refresh_clock().await;
        let estimate = lock.server_clock().server_now_millis();
        let candidates = self.schedule.candidates(estimate);
        let tolerance = self.tolerance_millis(&candidates)?;
        let lease = self.expires.unwrap_or(DEFAULT_EXPIRES);
        let owner = unique_owner();
        let claim = format!("{:016x}", rand::random::<u64>());
        let mut req = Request::new(self.key.clone(), owner.clone(), claim.clone(), lease, None)?;
        req.tick = Some((candidates, tolerance, self.retry_abandoned));
        let renew_every = self.expires.is_none().then_some(lease / 3);
        match lock.attempt_until(&req).await? {
            Attempt::Acquired { info, anchor, .. } => {
                let Some(tick) = info.tick else {
                    return Err(Error::Corrupt {
                        key: self.key.clone(),
                        reason: "a claimed tick is missing from the lock document".to_owned(),
                    });
                };
                let missed_before = info.prev_tick.map_or(0, |prev| {
                    self.schedule.between(prev, tick.timestamp_millis())
                });
                if missed_before > 0 {
                    tracing::warn!(key = %self.key, missed = missed_before, %tick, "mongolock: ticks were missed (nobody claimed them)");
                    crate::metrics::missed_ticks(&self.key, missed_before);
                }
                let token = info.token;
                let info_prev_tick = info.prev_tick;
                let guard = LockGuard::new(
                    lock.clone(),
                    info,
                    Held {
                        anchor,
                        lease,
                        handed: false,
                        hand_over: HandOver::Never,
                        renew_every,
                        min_hold_millis: 0,
                    },
                );
                let claimed = Claimed {
                    job: self.key.clone(),
                    schedule: self.schedule.to_string(),
                    tick: tick.timestamp_millis(),
                    owner,
                    token,
                    missed_before,
                    prev_tick: info_prev_tick,
                };
                let recorded = lock.spawn_record_claim(claimed, RunOutcome::Running);
                Ok(Claim::Run(Box::new(TickRun {
                    guard,
                    tick,
                    missed_before,
                    recorded: Some(recorded),
                    claimed: tokio::time::Instant::now(),
                })))
            }
            Attempt::Busy(info, _) => match info.tick {
                Some(tick) if info.tick_by.as_deref() == Some(claim.as_str()) => {
                    tracing::info!(key = %self.key, %tick, "mongolock: the previous run still holds the job; tick skipped");
                    crate::metrics::run_finished(
                        &self.key,
                        RunOutcome::SkippedStillRunning.as_str(),
                        None,
                    );
                    let claimed = Claimed {
                        job: self.key.clone(),
                        schedule: self.schedule.to_string(),
                        tick: tick.timestamp_millis(),
                        owner,
                        token: 0,
                        missed_before: 0,
                        prev_tick: None,
                    };
                    // Not on a run's path: the caller learns the tick is
                    // recorded when this returns.
                    let _ = lock
                        .spawn_record_claim(claimed, RunOutcome::SkippedStillRunning)
                        .await;
                    Ok(Claim::StillRunning { tick })
                }
                Some(tick) if self.is_current(tick.timestamp_millis(), estimate, tolerance) => {
                    Ok(Claim::Taken { tick })
                }
                _ => Ok(Claim::NotDue),
            },
        }
    }

    /// Whether `tick`, the last claimed, is the one this process meant.
    fn is_current(&self, tick: i64, estimate: i64, tolerance: i64) -> bool {
        (tick - estimate).abs() <= tolerance.saturating_mul(2)
    }

    /// The tolerance sent with a claim: the configured one, but under half
    /// the shortest gap between the candidates, at least 1 ms.
    fn tolerance_millis(&self, candidates: &[i64]) -> Result<i64> {
        let configured = crate::validate::positive_millis("tolerance", self.tolerance)?;
        let half_gap = Schedule::shortest_gap(candidates).map_or(i64::MAX, |gap| (gap - 1) / 2);
        Ok(configured.min(half_gap).max(1))
    }

    /// Claims the tick and, if this process got it, records the claim,
    /// runs `job` under the lock and records how it went; `None` when the tick is not this
    /// process's to run (another claimed it, the previous run still holds
    /// the lock, or no tick is due).
    ///
    /// The job is cancelled at its next await if the lock is lost, and the
    /// run recorded as [`RunOutcome::Lost`]; an `Err` is recorded as
    /// [`RunOutcome::Error`] with its `Debug` text. The lock is released
    /// after the outcome is recorded.
    pub async fn run<F, Fut, T, E>(&self, job: F) -> Result<Option<Result<T, E>>>
    where
        F: FnOnce(Tick) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Debug,
    {
        let Claim::Run(mut run) = self.claim().await? else {
            return Ok(None);
        };
        // The record first: a runner that dies in the job leaves one.
        run.recorded().await;
        let ran = crate::__private::until_lost(&run.guard, job(run.info())).await;
        let outcome = match &ran {
            Ok(Ok(_)) => RunOutcome::Ok,
            Ok(Err(e)) => RunOutcome::Error(format!("{e:?}")),
            Err(_) => RunOutcome::Lost,
        };
        self.finish(run, outcome).await;
        match ran {
            Ok(result) => Ok(Some(result)),
            Err(lost) => Err(lost),
        }
    }

    /// Records `outcome` for a run this process [claimed](Self::claim) and
    /// releases its lock ([`run`](Self::run) does both itself). Failures
    /// are logged, not returned: the lease runs out by itself, and a
    /// record left running is marked abandoned by the next claim.
    pub async fn finish(&self, mut run: Box<TickRun>, outcome: RunOutcome) {
        let lock = &self.lock;
        let took = run.claimed.elapsed();
        let outcome = &outcome;
        // The outcome goes on the claim's record: after it.
        run.recorded().await;
        crate::metrics::run_finished(&self.key, outcome.as_str(), Some(took));
        let recorded = lock
            .bounded(
                &self.key,
                lock.operation_timeout(),
                lock.record_outcome(
                    &self.key,
                    run.tick.timestamp_millis(),
                    run.guard.token(),
                    outcome,
                ),
            )
            .await;
        if let Err(error) = recorded {
            tracing::warn!(key = %self.key, %error, "mongolock: could not record a run's outcome");
        }
        crate::__private::release(run.guard).await;
    }

    /// Runs the job at every tick, for as long as the returned future is
    /// polled: sleeps until the next tick by the server's clock, then
    /// [`run`](Self::run)s it. Every process of a fleet can call this on
    /// the same job: each tick runs once among them, and ticks keep running
    /// while any one of them lives. Errors of a run (the job's or the
    /// lock's) are logged and the loop goes on.
    pub async fn run_every_tick<F, Fut, T, E>(&self, mut job: F) -> std::convert::Infallible
    where
        F: FnMut(Tick) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Debug,
    {
        loop {
            let lock = &self.lock;
            lock.refresh_clock().await;
            let now = lock.server_clock().server_now_millis();
            let wake = self
                .schedule
                .after(now)
                .and_then(|next| {
                    lock.server_clock()
                        .local_instant(DateTime::from_millis(next))
                })
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::time::sleep_until(wake).await;
            match self.run(&mut job).await {
                Ok(Some(Err(error))) => {
                    tracing::warn!(key = %self.key, ?error, "mongolock: scheduled run failed")
                }
                Err(error) => {
                    tracing::warn!(key = %self.key, %error, "mongolock: scheduled run could not run")
                }
                Ok(_) => {}
            }
        }
    }
}
