//! `owner`, `lock`, `crate`, and `Result` aliases such as `anyhow::Result`.
#![deny(warnings)]
// The futures are built to check their types, never run.
#![allow(clippy::let_underscore_future)]

extern crate mongolock as renamed_lock;

use mongolock::{mongo_locked, MongoLock};

type JobResult<T> = Result<T, mongolock::Error>;

#[mongo_locked(key = "anyhow:{n}", owner = format!("worker-{n}"))]
async fn with_anyhow(n: u32) -> anyhow::Result<u32> {
    anyhow::ensure!(n > 0, "n must be positive");
    Ok(n)
}

#[mongo_locked(key = "alias", timeout = "5s", fair = false)]
async fn with_alias() -> JobResult<()> {
    Ok(())
}

#[mongo_locked(key = "explicit-lock", lock = lock)]
async fn explicit_lock(lock: &MongoLock) -> Result<(), mongolock::Error> {
    let _ = lock;
    Ok(())
}

#[renamed_lock::mongo_locked(key = "renamed", crate = ::renamed_lock)]
async fn renamed() -> Result<(), renamed_lock::Error> {
    Ok(())
}

#[mongo_locked(key = "renewed:{n}", expires = 30, renew = true, min_hold = "2s")]
async fn renewed(n: u32) -> anyhow::Result<u32> {
    Ok(n)
}

#[mongo_locked(key = "renew-every", expires = "1m", renew = "5s", fair = std::env::var_os("UNFAIR").is_none())]
async fn renew_every() -> Result<(), mongolock::Error> {
    Ok(())
}

fn assert_send<F: std::future::Future + Send>(_: F) {}

fn main() {
    assert_send(renewed(1));
    assert_send(renew_every());
    let _ = with_anyhow(1);
    let _ = with_alias();
    let _ = explicit_lock;
    let _ = renamed();
}
