//! Checks the deployment, lists the locks held now and the scheduled jobs'
//! last runs; force-releases a lock only when asked.
//!
//! `cargo run --example admin` lists; `cargo run --example admin --
//! --force-release KEY` frees `KEY` whoever holds it, then lists again. With
//! `MONGODB_URI` set, it works on that server's lock collection; otherwise
//! it starts a local test server and takes two locks and runs a scheduled
//! job first, so there is something to see.

use std::time::Duration;

use mongolock::MongoLock;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = std::env::var("MONGODB_URI").is_err();
    let lock = MongoLock::connect(&mongolock_suite::server_uri()?).await?;
    if local {
        lock.lock("nightly-report", "worker-7")
            .expires(Duration::from_secs(600))
            .await?;
        lock.lock("invoice:42", "worker-3").await?;
        lock.job("minutely-cleanup", mongolock::Schedule::parse("1m")?)
            .run(|_tick| async { Ok::<_, mongolock::Error>(()) })
            .await?;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = match args.as_slice() {
        [] => None,
        [flag, key] if flag == "--force-release" => Some(key.clone()),
        _ => return Err("usage: admin [--force-release KEY]".into()),
    };

    println!("{}", lock.check().await?);
    print_held(&lock).await?;
    print_jobs(&lock).await?;
    if let Some(target) = target {
        let freed = lock.force_release(&target).await?;
        println!(
            "\nforce_release({target:?}): {}",
            if freed { "freed" } else { "was not held" }
        );
        print_held(&lock).await?;
    }
    Ok(())
}

async fn print_held(lock: &MongoLock) -> mongolock::Result<()> {
    let held = lock.list().await?;
    println!("\n{} lock(s) held:", held.len());
    println!(
        "{:<20} {:<12} {:<34} {:<34} token",
        "key", "owner", "since", "expires"
    );
    for info in held {
        println!(
            "{:<20} {:<12} {:<34} {:<34} {}",
            info.key,
            info.owner.unwrap_or_default(),
            info.acquired_at.map(|t| t.to_string()).unwrap_or_default(),
            info.expires_at.to_string(),
            info.token
        );
    }
    Ok(())
}

/// The scheduled jobs with run records: last run, next tick, who runs one
/// now, missed ticks.
async fn print_jobs(lock: &MongoLock) -> mongolock::Result<()> {
    let jobs = lock.job_statuses(20).await?;
    println!("\n{} scheduled job(s):", jobs.len());
    println!(
        "{:<24} {:<26} {:<12} {:<26} {:<8} missed",
        "job", "last tick", "outcome", "next tick", "running"
    );
    for job in jobs {
        let last = job.runs.first();
        let time = |t: Option<mongodb::bson::DateTime>| {
            t.and_then(|t| t.try_to_rfc3339_string().ok())
                .unwrap_or_else(|| "-".to_owned())
        };
        println!(
            "{:<24} {:<26} {:<12} {:<26} {:<8} {}",
            job.key,
            time(last.map(|r| r.tick)),
            last.map(|r| format!("{:?}", r.outcome))
                .unwrap_or_else(|| "-".to_owned()),
            time(job.next_tick),
            if job.running.is_some() { "yes" } else { "no" },
            job.missed
        );
    }
    Ok(())
}
