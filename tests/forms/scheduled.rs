#![deny(warnings)]
// The futures are built to check their types, never run.
#![allow(clippy::let_underscore_future)]
use std::time::Duration;

use mongolock::{mongo_locked, Schedule};

#[derive(Debug)]
struct AppError;

impl From<mongolock::Error> for AppError {
    fn from(_: mongolock::Error) -> Self {
        AppError
    }
}

// A cron expression, with a lease of the user's (then not renewed).
#[mongo_locked(key = "nightly", schedule = "0 2 * * *", expires = 600)]
async fn nightly() -> Result<(), AppError> {
    Ok(())
}

// A period, and a value: `None` on the processes that skip the tick.
#[mongo_locked(key = "minutely:{region}", schedule = "1m")]
async fn minutely(region: &str) -> Result<Option<u32>, mongolock::Error> {
    let _ = region;
    Ok(Some(1))
}

// The schedule as an expression.
#[mongo_locked(key = "custom", schedule = Schedule::every(Duration::from_secs(5)).unwrap())]
async fn custom() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = (nightly(), minutely("eu"), custom());
}
