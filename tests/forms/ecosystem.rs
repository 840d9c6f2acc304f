//! Patterns Rust services write every day: `#[async_trait]` methods,
//! `impl Trait` in the return type, stacked locks, durations from
//! configuration, skipping when busy, raw identifiers in key templates, and
//! `#[tokio::main]` below the attribute.
#![deny(warnings)]
// The futures are built to check their types, never run.
#![allow(clippy::let_underscore_future)]

use std::time::Duration;

use async_trait::async_trait;
use mongolock::{mongo_locked, Error, MongoLock};

#[async_trait]
pub trait Job {
    async fn run(&self, id: u32) -> Result<u32, Error>;
}

pub struct Worker {
    lock: MongoLock,
}

#[async_trait]
impl Job for Worker {
    #[mongo_locked(key = "job:{id}", lock = &self.lock)]
    async fn run(&self, id: u32) -> Result<u32, Error> {
        Ok(id)
    }
}

#[mongo_locked(key = "numbers")]
async fn numbers() -> Result<impl Iterator<Item = u32>, Error> {
    Ok(0..3)
}

#[mongo_locked(key = "outer")]
#[mongo_locked(key = "inner:{n}")]
async fn stacked(n: u8) -> Result<u8, Error> {
    Ok(n)
}

const LEASE: Duration = Duration::from_secs(30);

pub struct Config {
    pub timeout: Duration,
    pub renew: bool,
    pub hold_secs: u64,
}

#[mongo_locked(key = "configured", expires = LEASE, timeout = cfg.timeout, renew = cfg.renew, min_hold = cfg.hold_secs)]
async fn configured(cfg: &Config) -> Result<(), Error> {
    let _ = cfg;
    Ok(())
}

#[mongo_locked(key = "cron", on_busy = skip)]
async fn cron_tick() -> Result<(), Error> {
    Ok(())
}

#[mongo_locked(key = "report", on_busy = skip)]
async fn maybe_report() -> anyhow::Result<Option<String>> {
    Ok(Some("report".to_owned()))
}

#[mongo_locked(key = "kind:{type}:{r#type}")]
async fn raw_identifier(r#type: &str) -> Result<(), Error> {
    let _ = r#type;
    Ok(())
}

fn assert_send<F: std::future::Future + Send>(_: F) {}

#[allow(dead_code)]
fn futures_are_send(worker: &Worker, cfg: &Config) {
    assert_send(worker.run(1));
    assert_send(numbers());
    assert_send(stacked(1));
    assert_send(configured(cfg));
    assert_send(cron_tick());
    assert_send(maybe_report());
    assert_send(raw_identifier("t"));
}

// Above the runtime attribute, which then sees an `async fn`.
#[mongo_locked(key = "test")]
#[tokio::test]
async fn locked_test() -> Result<(), Error> {
    let _ = LEASE;
    Ok(())
}

fn main() {}
