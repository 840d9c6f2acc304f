//! Three workers run the same jobs at once. `#[mongo_locked]` lets one run
//! each job at a time: the others skip it (no timeout) or wait their turn.
//!
//! `cargo run --example demo` starts a local test server unless
//! `MONGODB_URI` is set.

use std::time::{Duration, Instant};

use mongolock::{mongo_locked, Error, MongoLock};

#[derive(Debug)]
enum JobError {
    Lock(Error),
}

impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        JobError::Lock(e)
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Lock(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for JobError {}

/// Once a night: whoever gets there first builds it, the others skip.
#[mongo_locked(key = "demo:nightly-report:{day}", expires = 30, owner = worker.to_owned())]
async fn nightly_report(worker: &str, day: &str) -> Result<(), JobError> {
    show(
        worker,
        &format!("demo:nightly-report:{day}"),
        "building the nightly report",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(())
}

/// Per customer: every worker's run happens, one after another.
#[mongo_locked(key = "demo:invoice:{customer}", expires = 30, timeout = 10, owner = worker.to_owned())]
async fn send_invoice(worker: &str, customer: u32) -> Result<(), JobError> {
    show(
        worker,
        &format!("demo:invoice:{customer}"),
        "sending the invoice",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    Ok(())
}

/// Prints what the server says about the lock we are running under.
async fn show(worker: &str, key: &str, what: &str) -> Result<(), Error> {
    let info = mongolock::global()?.get_lock_info(key).await?;
    let (holder, token) = info
        .map(|i| (i.owner.unwrap_or_default(), i.token))
        .unwrap_or_default();
    println!("  {worker:<9} {what:<28} {key:<34} holder={holder} token={token}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = mongolock_suite::server_uri()?;
    // Configure once, at startup: every #[mongo_locked] function uses it.
    mongolock::configure(MongoLock::connect(&uri).await?)?;
    let started = Instant::now();
    let day = format!("run-{}", std::process::id());

    let mut workers = Vec::new();
    for worker in ["worker-1", "worker-2", "worker-3"] {
        let day = day.clone();
        workers.push(tokio::spawn(async move {
            match nightly_report(worker, &day).await {
                Ok(()) => println!("  {worker:<9} nightly report done"),
                Err(JobError::Lock(Error::Locked { owner, .. })) => println!(
                    "  {worker:<9} skipped the nightly report: {} holds it",
                    owner.unwrap_or_default()
                ),
                Err(e) => return Err(e),
            }
            let waited = Instant::now();
            send_invoice(worker, 42).await?;
            println!(
                "  {worker:<9} invoice done, {} ms after asking (the wait included)",
                waited.elapsed().as_millis()
            );
            Ok::<_, JobError>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    println!("all jobs done in {} ms", started.elapsed().as_millis());
    // Releases left to the background (a job future dropped midway) must run
    // before the runtime ends, or their locks stay taken until they expire.
    mongolock::global()?
        .finish_releases(Duration::from_secs(5))
        .await;
    Ok(())
}
