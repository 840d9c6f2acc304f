//! The future is `Send` (it can be spawned), and the attribute composes with
//! `#[tracing::instrument]` in either order. Docs and attributes are kept.
#![deny(warnings, missing_docs)]
// The futures are built to check their types, never run.
#![allow(clippy::let_underscore_future)]
//! Crate docs.

use mongolock::mongo_locked;

/// Documented, and the docs survive the rewrite.
#[must_use = "futures do nothing unless awaited"]
#[mongo_locked(key = "send:{n}")]
pub async fn job(n: u64) -> Result<u64, mongolock::Error> {
    tokio::task::yield_now().await;
    Ok(n)
}

/// Instrumented outside.
#[tracing::instrument]
#[mongo_locked(key = "outer:{n}")]
pub async fn instrument_outside(n: u64) -> Result<u64, mongolock::Error> {
    Ok(n)
}

/// Instrumented inside.
#[mongo_locked(key = "inner:{n}")]
#[tracing::instrument(skip_all, fields(n = n))]
pub async fn instrument_inside(n: u64) -> Result<u64, mongolock::Error> {
    Ok(n)
}

fn assert_send<F: std::future::Future + Send + 'static>(_: F) {}

#[allow(dead_code)]
async fn spawn_it() {
    let _ = tokio::spawn(job(1)).await;
}

fn main() {
    assert_send(job(1));
    assert_send(instrument_outside(1));
    assert_send(instrument_inside(1));
}
