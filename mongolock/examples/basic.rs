//! A job under a lock, against your own server:
//!
//! ```sh
//! MONGODB_URI=mongodb://localhost:27017 cargo run -p mongolock --example basic
//! ```
//!
//! Run it in two terminals at once: one builds the report, the other waits
//! its turn (or, with `on_busy = skip`, would skip it).

use std::time::Duration;

use mongolock::{mongo_locked, MongoLock};

#[mongo_locked(key = "report:{day}", expires = 30, timeout = 60)]
async fn build_report(day: &str) -> mongolock::Result<()> {
    println!("building the report for {day}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("done");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://localhost:27017".into());
    mongolock::configure(MongoLock::connect(&uri).await?)?;
    build_report("2026-11-26").await?;
    mongolock::global()?
        .finish_releases(Duration::from_secs(5))
        .await;
    Ok(())
}
