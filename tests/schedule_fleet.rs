//! A fleet of three worker processes on one schedule of 1 s, their
//! schedulers skewed from each other by 400 ms (-200, 0, +200 ms from the
//! second), for about 24 ticks. The test kills the runner of one tick
//! mid-run and stops every worker for three ticks, and then reads the run
//! records and a witness of every run (written by the job's body):
//!
//! - every claimed tick has one record, and ran at most once;
//! - every tick recorded ok ran exactly once, in one process;
//! - the killed run's tick is recorded abandoned and never ran again;
//! - the three ticks the fleet was stopped for are counted as missed by the
//!   next claim;
//! - apart from those, the ticks that came while the dead runner's lease
//!   still held the lock (recorded as skipped) and a run the stop caught
//!   mid-way (recorded lost: its lease ran out in the stop), every tick ran.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongolock::{Error, MongoLock, RunOutcome, Schedule};

const ROLE: &str = "SCHEDULE_FLEET_WORKER";
const SKEW: &str = "SCHEDULE_FLEET_SKEW_MS";
const COLLECTION: &str = "SCHEDULE_FLEET_COLLECTION";
const UNTIL: &str = "SCHEDULE_FLEET_UNTIL_MS";
const KEY: &str = "fleet-job";
/// The lease of a run: a killed runner holds the lock this long.
const LEASE: Duration = Duration::from_millis(1500);

fn wall_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

async fn sleep_until_wall(at: i64) {
    let wait = at - wall_millis();
    if let Ok(ms) = u64::try_from(wait) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One worker: fires at every second plus its skew, until the deadline.
async fn worker(uri: &str, collection: &str, skew: i64, until: i64) -> Result<(), Error> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let lock = MongoLock::with_collection(client.database("mongolock_test").collection(collection));
    let witness = client
        .database("mongolock_test")
        .collection::<Document>(&format!("{collection}_witness"));
    let job = lock.job(KEY, Schedule::parse("1s")?).expires(LEASE);
    loop {
        let now = wall_millis();
        let next = (now.div_euclid(1000) + 1) * 1000 + skew;
        let fire = if next - now > 1000 { next - 1000 } else { next };
        if fire >= until {
            break;
        }
        sleep_until_wall(fire).await;
        let witness = witness.clone();
        let ran = job
            .run(|tick| async move {
                // A run the test asked to be slow: it is killed in it.
                let slow = witness
                    .find_one_and_update(
                        doc! { "_id": "slow", "armed": true },
                        doc! { "$set": { "armed": false } },
                    )
                    .await?
                    .is_some();
                witness
                    .insert_one(doc! {
                        "tick": tick.at,
                        "pid": i64::from(std::process::id()),
                        "slow": slow,
                    })
                    .await?;
                let hold = if slow { 10_000 } else { 100 };
                tokio::time::sleep(Duration::from_millis(hold)).await;
                Ok::<_, mongodb::error::Error>(())
            })
            .await;
        if let Err(error) = ran {
            eprintln!("worker {}: {error}", std::process::id());
        }
    }
    lock.finish_releases(Duration::from_secs(5)).await;
    Ok(())
}

fn spawn_worker(name: &str, skew: i64, collection: &str, until: i64) -> Child {
    let program = std::env::current_exe().unwrap();
    Command::new(program)
        .args(["--exact", "worker_entry", "--nocapture"])
        .env(ROLE, name)
        .env(SKEW, skew.to_string())
        .env(COLLECTION, collection)
        .env(UNTIL, until.to_string())
        .env("MONGODB_URI", mongolock_suite::server_uri().unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// The entry of the worker processes (a no-op in the test run itself).
#[tokio::test]
async fn worker_entry() {
    let Ok(_name) = std::env::var(ROLE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    worker(
        &var("MONGODB_URI"),
        &var(COLLECTION),
        var(SKEW).parse().unwrap(),
        var(UNTIL).parse().unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn each_tick_runs_once_across_a_skewed_fleet_with_kills_and_stops() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let collection = format!("fleet_{:08x}", rand::random::<u32>());
    let lock = MongoLock::with_collection(
        mongolock_suite::fresh_collection("unused")
            .await
            .client()
            .database("mongolock_test")
            .collection(&collection),
    );
    let witness = lock
        .collection()
        .client()
        .database("mongolock_test")
        .collection::<Document>(&format!("{collection}_witness"));
    let start = wall_millis();
    let until = start + 24_000;
    let skews = [-200_i64, 0, 200];
    let mut workers: Vec<Child> = skews
        .iter()
        .enumerate()
        .map(|(i, skew)| spawn_worker(&format!("w{i}"), *skew, &collection, until))
        .collect();

    // Kill a runner mid-run, a few ticks in.
    sleep_until_wall(start + 4_000).await;
    witness
        .insert_one(doc! { "_id": "slow", "armed": true })
        .await
        .unwrap();
    let slow = loop {
        if let Some(run) = witness.find_one(doc! { "slow": true }).await.unwrap() {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let killed_pid = u32::try_from(slow.get_i64("pid").unwrap()).unwrap();
    let killed_tick = *slow.get_datetime("tick").unwrap();
    let at = workers
        .iter()
        .position(|w| w.id() == killed_pid)
        .expect("the slow run's worker");
    workers[at].kill().unwrap();
    workers[at].wait().unwrap();
    workers[at] = spawn_worker("restarted", skews[at], &collection, until);

    // Stop the whole fleet for three ticks.
    sleep_until_wall(start + 10_000).await;
    for w in &workers {
        mongolock_suite::signal(w.id(), "-STOP");
    }
    // Let a claim already on the wire land before reading the last tick.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = lock
        .get_lock_info(KEY)
        .await
        .unwrap()
        .and_then(|i| i.tick)
        .unwrap()
        .timestamp_millis();
    // Resume nearer the fourth tick after it than the third.
    sleep_until_wall(last + 3_900).await;
    for w in &workers {
        mongolock_suite::signal(w.id(), "-CONT");
    }
    for w in &mut workers {
        assert!(w.wait().unwrap().success(), "a worker failed");
    }

    // What happened, by the records and the witness.
    let status = lock
        .job(KEY, Schedule::parse("1s").unwrap())
        .status(1000)
        .await
        .unwrap();
    let mut records: BTreeMap<i64, &mongolock::RunRecord> = BTreeMap::new();
    for record in &status.runs {
        let tick = record.tick.timestamp_millis();
        assert!(
            records.insert(tick, record).is_none(),
            "two records of tick {tick}"
        );
    }
    let mut ran: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let runs: Vec<Document> = witness
        .find(doc! { "tick": { "$exists": true } })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    for run in &runs {
        ran.entry(run.get_datetime("tick").unwrap().timestamp_millis())
            .or_default()
            .push(run.get_i64("pid").unwrap());
    }
    let mut table = String::new();
    for (tick, record) in &records {
        table.push_str(&format!(
            "{tick} {:?} missed_before={} ran_in={:?}\n",
            record.outcome,
            record.missed_before,
            ran.get(tick)
        ));
    }
    for (tick, pids) in &ran {
        assert_eq!(
            pids.len(),
            1,
            "tick {tick} ran {} times:\n{table}",
            pids.len()
        );
        assert!(
            records.contains_key(tick),
            "tick {tick} ran unrecorded:\n{table}"
        );
    }
    for (tick, record) in &records {
        if record.outcome == RunOutcome::Ok {
            assert!(
                ran.contains_key(tick),
                "tick {tick} ok but never ran:\n{table}"
            );
        }
    }
    let killed = killed_tick.timestamp_millis();
    assert_eq!(
        records.get(&killed).map(|r| r.outcome.clone()),
        Some(RunOutcome::Abandoned),
        "the killed run:\n{table}"
    );
    let resumed = records
        .get(&(last + 4_000))
        .unwrap_or_else(|| panic!("no claim of the tick after the stop:\n{table}"));
    assert_eq!(resumed.missed_before, 3, "after the stop:\n{table}");
    // Every other tick of the run ran (or was skipped while the killed
    // runner's lease held the lock).
    let first = *records.keys().next().unwrap();
    let final_tick = *records.keys().last().unwrap();
    let stopped: BTreeSet<i64> = (1..=3).map(|i| last + i * 1_000).collect();
    let mut tick = first;
    while tick <= final_tick {
        if !stopped.contains(&tick) {
            let record = records
                .get(&tick)
                .unwrap_or_else(|| panic!("tick {tick} has no record:\n{table}"));
            let during_dead_lease =
                tick > killed && tick < killed + LEASE.as_millis() as i64 + 1_000;
            match &record.outcome {
                RunOutcome::Ok => {}
                RunOutcome::Abandoned if tick == killed => {}
                RunOutcome::SkippedStillRunning if during_dead_lease => {}
                // The run under way when the fleet was stopped outlived
                // its lease in the stop: cancelled, recorded lost.
                RunOutcome::Lost if tick == last => {}
                other => panic!("tick {tick}: {other:?}:\n{table}"),
            }
        }
        tick += 1_000;
    }
    assert!(records.len() >= 18, "too few ticks:\n{table}");
    eprintln!("{table}");
}
