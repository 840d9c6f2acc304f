//! What a scheduled job is doing: its newest runs, its next tick, who runs
//! it now.

use mongodb::bson::DateTime;

use super::{Job, RunOutcome, RunRecord, Schedule};
use crate::error::Result;
use crate::mongo_lock::MongoLock;

/// The state of a scheduled job, from [`Job::status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's key.
    pub key: String,
    /// Its newest runs, newest first. A run that recorded no outcome and
    /// whose lease has lapsed shows as [`RunOutcome::Abandoned`].
    pub runs: Vec<RunRecord>,
    /// The next tick, by the server's clock.
    pub next_tick: Option<DateTime>,
    /// Who holds the job's lock now (a run under way), and since when.
    pub running: Option<(String, Option<DateTime>)>,
    /// Missed ticks counted in the runs shown.
    pub missed: u64,
}

impl MongoLock {
    /// The status of every job with run records (the newest `runs` of
    /// each). Jobs are known by their records, so a schedule is the one
    /// their newest record was made with.
    pub async fn job_statuses(&self, runs: usize) -> Result<Vec<JobStatus>> {
        let mut out = Vec::new();
        for key in self.recorded_jobs().await? {
            let newest = self.run_records(&key, 1).await?;
            let Some(schedule) = newest
                .first()
                .and_then(|r| Schedule::parse(&r.schedule).ok())
            else {
                continue;
            };
            out.push(self.job(key, schedule).status(runs).await?);
        }
        Ok(out)
    }
}

impl Job {
    /// The job's newest `runs` records, its next tick, who runs it now and
    /// the missed ticks among those runs.
    pub async fn status(&self, runs: usize) -> Result<JobStatus> {
        let lock = &self.lock;
        let limit = i64::try_from(runs).unwrap_or(i64::MAX);
        let mut records = lock.run_records(&self.key, limit).await?;
        let holder = lock.held_info(&self.key).await?;
        for record in &mut records {
            let holds = holder.as_ref().is_some_and(|h| h.token == record.token);
            if record.outcome == RunOutcome::Running && !holds {
                record.outcome = RunOutcome::Abandoned;
            }
        }
        lock.refresh_clock().await;
        let now = lock.server_clock().server_now_millis();
        // A tick may be claimed a little early: the next is after both.
        let last_claimed = records.first().map_or(now, |r| r.tick.timestamp_millis());
        Ok(JobStatus {
            key: self.key.clone(),
            missed: records.iter().map(|r| r.missed_before).sum(),
            runs: records,
            next_tick: self
                .schedule
                .after(now.max(last_claimed))
                .map(DateTime::from_millis),
            running: holder.and_then(|h| h.owner.map(|o| (o, h.acquired_at))),
        })
    }
}
