//! The most common use: a cron job that fires on every machine, and runs on
//! one of them per tick. Three worker processes (three machines) each run
//! `tokio-cron-scheduler` with a job every second; `#[mongo_locked]` with
//! `schedule` claims the tick nearest the server's clock in the same round
//! trip as the lock: the first worker in runs it, the others skip it, and a
//! worker whose scheduler fires a little later finds the tick claimed and
//! does not run it again. Every claimed tick leaves a run record; the
//! example prints them at the end.
//!
//! `cargo run --example cron` starts a local test server unless
//! `MONGODB_URI` is set. `CRON_TICKS` sets how many seconds it runs (5).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Document};
use mongodb::Collection;
use mongolock::{mongo_locked, Error, MongoLock};
use tokio_cron_scheduler::{Job, JobScheduler};

const WORKER: &str = "CRON_WORKER";
/// Where each run is recorded, for `tests/cron.rs` to count.
const RUNS: &str = "CRON_RUNS";

/// Fires every second on every worker; runs on one of them per tick.
#[mongo_locked(key = "cron:every-second", schedule = "1s", expires = 10)]
async fn every_second(
    worker: &str,
    tick: u64,
    runs: &Collection<Document>,
) -> Result<Option<()>, Error> {
    println!("{worker} RAN  tick {tick}");
    runs.insert_one(doc! { "tick": tick as i64, "worker": worker })
        .await?;
    Ok(Some(()))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

async fn worker(
    name: String,
    uri: String,
    ticks: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = mongodb::Client::with_uri_str(&uri).await?;
    mongolock::configure(MongoLock::new(&client))?;
    let runs_name = std::env::var(RUNS).unwrap_or_else(|_| "cron_runs".into());
    let runs: Collection<Document> = client.database("mongolock_demo").collection(&runs_name);

    let scheduler = JobScheduler::new().await?;
    scheduler
        .add(Job::new_async("* * * * * *", move |_, _| {
            let (name, runs) = (name.clone(), runs.clone());
            Box::pin(async move {
                // The second this tick fired for: the same on every worker.
                let tick = unix_seconds();
                match every_second(&name, tick, &runs).await {
                    Ok(Some(())) => {}
                    Ok(None) => println!("{name} skip tick {tick} (another worker runs it)"),
                    Err(e) => eprintln!("{name} tick {tick} failed: {e}"),
                }
            })
        })?)
        .await?;
    scheduler.start().await?;
    tokio::time::sleep(Duration::from_secs(ticks)).await;
    let mut scheduler = scheduler;
    scheduler.shutdown().await?;
    mongolock::global()?
        .finish_releases(Duration::from_secs(5))
        .await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let ticks = std::env::var("CRON_TICKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    if let Ok(name) = std::env::var(WORKER) {
        return worker(name, std::env::var("MONGODB_URI")?, ticks).await;
    }
    let uri = mongolock_suite::server_uri()?;
    println!("three workers, a job every second on each, for {ticks} s");
    mongolock_suite::run_workers(
        WORKER,
        &["worker-1", "worker-2", "worker-3"],
        &[("MONGODB_URI", &uri)],
    )?;
    print_runs(&MongoLock::connect(&uri).await?, ticks).await?;
    Ok(())
}

/// The run records of the job's last ticks, as an operator would read them.
async fn print_runs(lock: &MongoLock, ticks: u64) -> mongolock::Result<()> {
    let job = lock.job("cron:every-second", mongolock::Schedule::parse("1s")?);
    let status = job.status(usize::try_from(ticks).unwrap_or(5)).await?;
    println!("\nrun records of {} (newest first):", status.key);
    println!(
        "{:<26} {:<10} {:<8} {:>8} {:>7}",
        "tick", "outcome", "pid", "took", "missed"
    );
    for run in &status.runs {
        let took = match (run.started, run.finished) {
            (Some(s), Some(f)) => format!("{} ms", f.timestamp_millis() - s.timestamp_millis()),
            _ => "-".to_owned(),
        };
        println!(
            "{:<26} {:<10} {:<8} {:>8} {:>7}",
            run.tick.try_to_rfc3339_string().unwrap_or_default(),
            format!("{:?}", run.outcome),
            run.pid,
            took,
            run.missed_before
        );
    }
    Ok(())
}
