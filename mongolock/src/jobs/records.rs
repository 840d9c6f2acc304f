//! Run records: one document per claimed tick, in the collection
//! `<lock collection>.runs`, deleted by a TTL index once older than the
//! lock's [run history](crate::MongoLock::with_run_history).

use futures_util::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;

use crate::error::Result;
use crate::mongo_lock::MongoLock;

/// Record fields.
const JOB: &str = "job";
const TICK: &str = "tick";
const SCHEDULE: &str = "schedule";
const OWNER: &str = "owner";
const HOST: &str = "host";
const PID: &str = "pid";
const TOKEN: &str = "token";
const STARTED: &str = "started";
const FINISHED: &str = "finished";
const OUTCOME: &str = "outcome";
const ERROR: &str = "error";
const MISSED: &str = "missed_before";

/// The name of the TTL index on `started`.
const RUNS_TTL_INDEX: &str = "mongolock_runs_started_ttl";

/// How a claimed tick went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The run is under way (its runner holds the lock).
    Running,
    /// The job returned `Ok`.
    Ok,
    /// The job returned an error; its text (`Debug`).
    Error(String),
    /// The lock was lost during the run (renewal failed, lease ran out); the
    /// job was cancelled at its next await.
    Lost,
    /// The tick came while the previous run still held the lock: it was
    /// claimed and not run.
    SkippedStillRunning,
    /// The runner died (or was cut off) mid-run: its lease lapsed with no
    /// outcome recorded. The tick is not run again.
    Abandoned,
}

impl RunOutcome {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Ok => "ok",
            RunOutcome::Error(_) => "error",
            RunOutcome::Lost => "lost",
            RunOutcome::SkippedStillRunning => "skipped_still_running",
            RunOutcome::Abandoned => "abandoned",
        }
    }

    fn from_record(doc: &Document) -> Self {
        match doc.get_str(OUTCOME).unwrap_or_default() {
            "ok" => RunOutcome::Ok,
            "error" => RunOutcome::Error(doc.get_str(ERROR).unwrap_or_default().to_owned()),
            "lost" => RunOutcome::Lost,
            "skipped_still_running" => RunOutcome::SkippedStillRunning,
            "abandoned" => RunOutcome::Abandoned,
            _ => RunOutcome::Running,
        }
    }
}

/// One claimed tick of a scheduled job, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunRecord {
    /// The job's key.
    pub job: String,
    /// The tick (the scheduled fire time) that was claimed.
    pub tick: DateTime,
    /// The runner's owner token (`host:pid:random`).
    pub owner: String,
    /// The runner's host.
    pub host: String,
    /// The runner's process id.
    pub pid: i64,
    /// The run's fencing token (0 for a skipped tick).
    pub token: i64,
    /// When the tick was claimed, by the server's clock.
    pub started: Option<DateTime>,
    /// When the run ended, by the server's clock.
    pub finished: Option<DateTime>,
    /// How it went.
    pub outcome: RunOutcome,
    /// Ticks nobody claimed between the previous claimed tick and this one.
    pub missed_before: u64,
    /// The job's schedule, as written.
    pub schedule: String,
}

impl RunRecord {
    fn from_document(doc: &Document) -> Self {
        Self {
            job: doc.get_str(JOB).unwrap_or_default().to_owned(),
            tick: doc
                .get_datetime(TICK)
                .copied()
                .unwrap_or(DateTime::from_millis(0)),
            owner: doc.get_str(OWNER).unwrap_or_default().to_owned(),
            host: doc.get_str(HOST).unwrap_or_default().to_owned(),
            pid: doc.get_i64(PID).unwrap_or_default(),
            token: doc.get_i64(TOKEN).unwrap_or_default(),
            started: doc.get_datetime(STARTED).ok().copied(),
            finished: doc.get_datetime(FINISHED).ok().copied(),
            outcome: RunOutcome::from_record(doc),
            missed_before: doc
                .get_i64(MISSED)
                .ok()
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or_default(),
            schedule: doc.get_str(SCHEDULE).unwrap_or_default().to_owned(),
        }
    }
}

/// What a record is written with when a tick is claimed.
pub(crate) struct Claimed {
    pub(crate) job: String,
    pub(crate) schedule: String,
    pub(crate) tick: i64,
    pub(crate) owner: String,
    pub(crate) token: i64,
    pub(crate) missed_before: u64,
    /// The tick claimed before this one, whose record a runner that died
    /// at once may never have written.
    pub(crate) prev_tick: Option<i64>,
}

fn record_id(job: &str, tick: i64) -> String {
    format!("{job}@{tick}")
}

fn host_and_pid(owner: &str) -> (String, i64) {
    let mut parts = owner.rsplitn(3, ':');
    let _random = parts.next();
    let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
    let host = parts.next().unwrap_or_default().to_owned();
    (host, pid)
}

impl MongoLock {
    /// The run records' collection: `<lock collection>.runs`.
    pub(crate) fn runs(&self) -> Collection<Document> {
        let locks = self.collection();
        locks
            .client()
            .database(&locks.namespace().db)
            .collection_with_options(
                &format!("{}.runs", locks.name()),
                mongodb::options::CollectionOptions::builder()
                    .write_concern(locks.write_concern().cloned())
                    .build(),
            )
    }

    /// Records a claimed tick with `outcome` (running, or skipped), by the
    /// server's clock. A run (the lock taken, so every earlier run's lease
    /// is over) also marks the job's earlier runs that never recorded an
    /// outcome as abandoned.
    async fn record_claim(&self, claimed: &Claimed, outcome: RunOutcome) -> Result<()> {
        let (host, pid) = host_and_pid(&claimed.owner);
        let mut set = doc! {
            JOB: &claimed.job,
            SCHEDULE: &claimed.schedule,
            TICK: DateTime::from_millis(claimed.tick),
            OWNER: &claimed.owner,
            HOST: host,
            PID: pid,
            TOKEN: claimed.token,
            OUTCOME: outcome.as_str(),
            MISSED: i64::try_from(claimed.missed_before).unwrap_or(i64::MAX),
        };
        let running = outcome == RunOutcome::Running;
        if let RunOutcome::Error(message) = &outcome {
            set.insert(ERROR, message.as_str());
        }
        let stamps: &[&str] = if running {
            &[STARTED]
        } else {
            &[STARTED, FINISHED]
        };
        let id = record_id(&claimed.job, claimed.tick);
        // A runner that died before writing its record leaves none: the
        // tick before was claimed, so say it was abandoned.
        let placeholder = claimed.prev_tick.filter(|_| running).map(|prev| {
            let placeholder = doc! {
                JOB: &claimed.job,
                SCHEDULE: &claimed.schedule,
                TICK: DateTime::from_millis(prev),
                OWNER: "",
                HOST: "",
                PID: -1_i64,
                TOKEN: 0_i64,
                OUTCOME: RunOutcome::Abandoned.as_str(),
                MISSED: 0_i64,
            };
            (record_id(&claimed.job, prev), placeholder)
        });
        let abandoned = doc! { OUTCOME: RunOutcome::Abandoned.as_str() };
        if let Some(memory) = self.memory() {
            memory.upsert_run(&id, set, stamps, false);
            if running {
                if let Some((prev_id, placeholder)) = placeholder {
                    memory.upsert_run(&prev_id, placeholder, &[], true);
                }
                let before = DateTime::from_millis(claimed.tick);
                memory.update_runs(
                    |r| {
                        r.get_str(JOB) == Ok(claimed.job.as_str())
                            && r.get_str(OUTCOME) == Ok(RunOutcome::Running.as_str())
                            && r.get_datetime(TICK).is_ok_and(|t| *t < before)
                    },
                    &abandoned,
                    &[FINISHED],
                );
            }
            return Ok(());
        }
        let now: Document = stamps
            .iter()
            .map(|f| ((*f).to_owned(), true.into()))
            .collect();
        self.runs()
            .update_one(
                doc! { "_id": id },
                doc! { "$set": set, "$currentDate": now },
            )
            .upsert(true)
            .await?;
        // After the first write, which created the collection if it was
        // new: an index build racing its creation can stall the write.
        self.start_runs_ttl_index();
        if !running {
            return Ok(());
        }
        if let Some((prev_id, placeholder)) = placeholder {
            self.runs()
                .update_one(
                    doc! { "_id": prev_id },
                    doc! { "$setOnInsert": placeholder },
                )
                .upsert(true)
                .await?;
        }
        self.runs()
            .update_many(
                doc! {
                    JOB: &claimed.job,
                    OUTCOME: RunOutcome::Running.as_str(),
                    TICK: { "$lt": DateTime::from_millis(claimed.tick) },
                },
                doc! {
                    "$set": abandoned,
                    "$currentDate": { FINISHED: true },
                },
            )
            .await?;
        Ok(())
    }

    /// Writes the record of a claimed tick in the background, off the
    /// claim's path (the claim is one round trip), bounded by the operation
    /// timeout; a failure is logged. A run's outcome waits for it.
    pub(crate) fn spawn_record_claim(
        &self,
        claimed: Claimed,
        outcome: RunOutcome,
    ) -> tokio::task::JoinHandle<()> {
        let lock = self.clone();
        tokio::spawn(async move {
            let recorded = lock
                .bounded(
                    &claimed.job,
                    lock.operation_timeout(),
                    lock.record_claim(&claimed, outcome),
                )
                .await;
            if let Err(error) = recorded {
                tracing::warn!(job = %claimed.job, %error, "mongolock: could not record a claimed tick");
            }
        })
    }

    /// Records how the run of `tick` ended; only the run's own record (its
    /// token) is changed.
    pub(crate) async fn record_outcome(
        &self,
        job: &str,
        tick: i64,
        token: i64,
        outcome: &RunOutcome,
    ) -> Result<()> {
        let mut set = doc! { OUTCOME: outcome.as_str() };
        if let RunOutcome::Error(message) = outcome {
            set.insert(ERROR, message.as_str());
        }
        let id = record_id(job, tick);
        if let Some(memory) = self.memory() {
            memory.update_runs(
                |r| r.get_str("_id") == Ok(id.as_str()) && r.get_i64(TOKEN) == Ok(token),
                &set,
                &[FINISHED],
            );
            return Ok(());
        }
        self.runs()
            .update_one(
                doc! { "_id": id, TOKEN: token },
                doc! { "$set": set, "$currentDate": { FINISHED: true } },
            )
            .await?;
        Ok(())
    }

    /// The job's newest `limit` records, newest first.
    pub(crate) async fn run_records(&self, job: &str, limit: i64) -> Result<Vec<RunRecord>> {
        if let Some(memory) = self.memory() {
            let mut records: Vec<RunRecord> = memory
                .runs_where(|r| r.get_str(JOB) == Ok(job))
                .iter()
                .map(RunRecord::from_document)
                .collect();
            records.sort_by_key(|r| std::cmp::Reverse(r.tick));
            records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            return Ok(records);
        }
        let cursor = self
            .runs()
            .find(doc! { JOB: job })
            .sort(doc! { TICK: -1 })
            .limit(limit)
            .await?;
        let docs: Vec<Document> = cursor.try_collect().await?;
        Ok(docs.iter().map(RunRecord::from_document).collect())
    }

    /// The names of the jobs with records.
    pub(crate) async fn recorded_jobs(&self) -> Result<Vec<String>> {
        if let Some(memory) = self.memory() {
            let mut names: Vec<String> = memory
                .runs_where(|_| true)
                .iter()
                .filter_map(|r| r.get_str(JOB).ok().map(str::to_owned))
                .collect();
            names.sort();
            names.dedup();
            return Ok(names);
        }
        let names = self.runs().distinct(JOB, doc! {}).await?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect())
    }

    /// Builds the records' TTL index in the background, once per
    /// `MongoLock`, as the lock's own TTL index is.
    fn start_runs_ttl_index(&self) {
        if self.runs_index_starting() {
            return;
        }
        let lock = self.clone();
        let keep = self.settings().run_history;
        tokio::spawn(async move {
            let built = lock
                .bounded(
                    RUNS_TTL_INDEX,
                    lock.operation_timeout(),
                    lock.ensure_ttl_on(&lock.runs(), RUNS_TTL_INDEX, STARTED, keep),
                )
                .await;
            if let Err(error) = built {
                tracing::warn!(%error, "could not create the mongolock run records' TTL index; old records will not be deleted");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_pid_come_from_the_owner() {
        assert_eq!(
            host_and_pid("web-1:4242:00ff00ff00ff00ff"),
            ("web-1".to_owned(), 4242)
        );
        assert_eq!(host_and_pid("odd"), (String::new(), -1));
    }
}
