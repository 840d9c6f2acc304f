//! Several workers contend for the same jobs; the lock lets one run each job
//! at a time, and the others wait or skip.
//!
//! `cargo run --example demo` starts a local test server unless `MONGODB_URI`
//! is set.

use std::time::Duration;

use mongolock::{Error, MongoLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = mongolock_suite::server_uri()?;
    let lock = MongoLock::connect(&uri).await?;
    println!("lock collection: {}", lock.collection().namespace());

    let mut workers = Vec::new();
    for worker in 1..=4 {
        let lock = lock.clone();
        workers.push(tokio::spawn(async move {
            for run in 1..=2 {
                // Waits up to 3 s for the key, then gives up with Error::Locked.
                match lock
                    .acquire("demo:nightly-report")
                    .owner(format!("worker-{worker}/run-{run}"))
                    .expires(Duration::from_secs(30))
                    .timeout(Duration::from_secs(3))
                    .await
                {
                    Ok(guard) => {
                        println!(
                            "worker-{worker} holds {:?} (token {})",
                            guard.key(),
                            guard.token()
                        );
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        guard.release().await?;
                        println!("worker-{worker} released it");
                    }
                    Err(Error::Locked { owner, .. }) => {
                        println!("worker-{worker} skipped: held by {owner:?}");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}
