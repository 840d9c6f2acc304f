//! Three worker processes run the same jobs at once, as three machines
//! would. `#[mongo_locked]` lets one run each job at a time: runs of one key
//! never overlap (see START/END), other keys run in parallel, a nightly job
//! runs once and the others skip it.
//!
//! `cargo run --example demo` starts a local test server unless
//! `MONGODB_URI` is set, then starts three copies of itself as workers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongolock::{mongo_locked, Error, MongoLock};

const WORKER: &str = "MONGOLOCK_DEMO_WORKER";

/// Once a night: whoever gets there first builds it, the others skip.
#[mongo_locked(key = "demo:nightly-report:{day}", expires = 30, min_hold = 5, on_busy = skip)]
async fn nightly_report(worker: &str, day: &str) -> Result<Option<()>, Error> {
    let key = format!("demo:nightly-report:{day}");
    run(worker, &key, Duration::from_millis(400)).await?;
    Ok(Some(()))
}

/// Per customer: every worker's run happens, one after another.
#[mongo_locked(key = "demo:invoice:{customer}:{day}", expires = 30, timeout = 20)]
async fn send_invoice(worker: &str, customer: u32, day: &str) -> Result<(), Error> {
    let key = format!("demo:invoice:{customer}:{day}");
    run(worker, &key, Duration::from_millis(250)).await
}

/// The job's work, between a START and an END line.
async fn run(worker: &str, key: &str, work: Duration) -> Result<(), Error> {
    let token = mongolock::global()?
        .get_lock_info(key)
        .await?
        .map(|info| info.token)
        .unwrap_or_default();
    println!("{} {worker}  START {key:<36} token={token}", now());
    tokio::time::sleep(work).await;
    println!("{} {worker}  END   {key}", now());
    Ok(())
}

/// Wall-clock time of day, `HH:MM:SS.mmm` (UTC).
fn now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let (h, m, s) = ((ms / 3_600_000) % 24, (ms / 60_000) % 60, (ms / 1000) % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}

async fn worker(name: &str, day: &str) -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI")?;
    // Configure once, at startup: every #[mongo_locked] function uses it.
    mongolock::configure(MongoLock::connect(&uri).await?)?;
    if nightly_report(name, day).await?.is_none() {
        println!(
            "{} {name}  SKIP  demo:nightly-report:{day} (another worker has it)",
            now()
        );
    }
    // Two customers at once: different keys run in parallel, the same key
    // one worker after another.
    let (a, b) = tokio::join!(send_invoice(name, 41, day), send_invoice(name, 42, day));
    a?;
    b?;
    // Releases left to the background (a job future dropped midway) must run
    // before the runtime ends, or their locks stay taken until they expire.
    mongolock::global()?
        .finish_releases(Duration::from_secs(5))
        .await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(WORKER) {
        let day = std::env::var("MONGOLOCK_DEMO_DAY")?;
        return worker(&name, &day).await;
    }
    eprintln!("demo: starting the test server (set MONGODB_URI to use yours)");
    let uri = mongolock_suite::server_uri()?;
    let day = format!("run-{}", std::process::id());
    println!("three worker processes, one MongoDB; each line: time, worker, event");
    println!("(token: the lock's fencing token, larger with every acquisition of a key; pass it with each write, and a store that refuses smaller ones is safe from a holder that lost its lock)");
    mongolock_suite::run_workers(
        WORKER,
        &["worker-1", "worker-2", "worker-3"],
        &[("MONGODB_URI", &uri), ("MONGOLOCK_DEMO_DAY", &day)],
    )?;
    println!(
        "done: one nightly report (the others skipped it), and each invoice sent three times, never two at once"
    );
    Ok(())
}
