//! Distributed locks kept in MongoDB, decided by the server's clock.
//!
//! A job that must not run twice at once, on any of many machines, takes a
//! lock first. This crate keeps the API of the Python `mongolock` package
//! (`lock`, `release`, `touch`, a scoped form that fails with
//! [`Error::Locked`]) and removes its two traps:
//!
//! - **Shared owner names.** [`MongoLock::acquire`](crate::MongoLock::acquire) makes a unique owner per
//!   acquisition, and a [`LockGuard`] checks its fencing token on every write,
//!   so one worker can never release or renew another's lock.
//! - **Clock drift.** Every expiry decision is made by the server with
//!   `$$NOW`, in one atomic write on the lock's document; no client clock
//!   decides anything (an uncontended acquisition proposes its fencing
//!   token from this process's estimate of the server's clock, and the
//!   server takes it only if it grows). The lease starts when the lock is
//!   taken, not when the wait began.
//!
//! Every acquisition also gets a **fencing token** that only ever grows for a
//! key, across releases, expiries and cleanup of the lock document, and
//! waiters are served in the order they asked, across processes
//! ([`Acquire::fair`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use mongolock::MongoLock;
//!
//! # async fn demo() -> mongolock::Result<()> {
//! let lock = MongoLock::connect("mongodb://localhost:27017").await?;
//!
//! // The Python package's method form.
//! if lock.lock("report", "worker-1").expires(Duration::from_secs(60)).await? {
//!     lock.touch("report", "worker-1").expires(Duration::from_secs(60)).await?;
//!     lock.release("report", "worker-1").await?;
//! }
//!
//! // The scoped form: waits up to 10 s, then fails with Error::Locked.
//! let guard = lock.acquire("report").timeout(Duration::from_secs(10)).await?;
//! // ... the work, with guard.token() as fencing token ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod acquire;
mod attempt;
mod backoff;
mod builders;
mod check;
mod clock;
mod contention;
mod election;
mod error;
mod global;
mod guard;
mod heartbeats;
mod index;
mod info;
mod inspect;
mod jobs;
mod lease;
mod memory;
mod metrics;
mod mongo_lock;
mod owner;
mod pending;
mod query;
mod redact;
mod release;
mod renewal;
mod semaphore;
mod settings;
mod touch;
mod validate;
mod wait;
mod wake;

pub use acquire::{Acquire, Lock};
pub use backoff::Backoff;
pub use check::{ChangeStreams, Deployment, Topology};
pub use election::{Election, Leader, Leadership, Observer, DEFAULT_TERM_LEASE};
pub use error::{Error, Result};
pub use global::{configure, global};
pub use guard::LockGuard;
pub use info::LockInfo;
pub use jobs::{
    Claim, Job, JobStatus, RunOutcome, RunRecord, Schedule, Tick, TickRun, DEFAULT_RUN_HISTORY,
    DEFAULT_TICK_TOLERANCE,
};
pub use mongo_lock::MongoLock;
pub use owner::unique_owner;
pub use release::Release;
pub use semaphore::{Permit, Semaphore, MAX_PERMITS};
pub use settings::{
    DEFAULT_CLEANUP_AFTER, DEFAULT_COLLECTION, DEFAULT_DATABASE, DEFAULT_EXPIRES,
    DEFAULT_MAX_CLOCK_SKEW, DEFAULT_OPERATION_TIMEOUT, DEFAULT_QUEUE_EXPIRY,
    DEFAULT_STREAM_IDLE_CLOSE, MIN_CLEANUP_AFTER,
};
pub use touch::Touch;
pub use validate::{MAX_DURATION, MAX_KEY_BYTES, MAX_OWNER_BYTES};

pub use mongodb;

#[cfg(feature = "macros")]
#[doc = include_str!("macro_docs.md")]
pub use mongolock_macros::mongo_locked;
