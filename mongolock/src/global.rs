//! The lock configured once at startup, used by `#[mongo_locked]`.

use once_cell::sync::OnceCell;

use crate::error::{Error, Result};
use crate::mongo_lock::MongoLock;

static GLOBAL: OnceCell<MongoLock> = OnceCell::new();

/// Sets the process-wide [`MongoLock`] that `#[mongo_locked]` functions use.
/// Call it once at startup; a second call fails with
/// [`Error::AlreadyConfigured`] and leaves the first in place.
///
/// ```no_run
/// # async fn demo() -> mongolock::Result<()> {
/// let lock = mongolock::MongoLock::connect("mongodb://localhost:27017").await?;
/// mongolock::configure(lock)?;
/// # Ok(()) }
/// ```
pub fn configure(lock: MongoLock) -> Result<()> {
    GLOBAL.set(lock).map_err(|_| Error::AlreadyConfigured)
}

/// The lock set by [`configure`], or [`Error::NotConfigured`].
pub fn global() -> Result<&'static MongoLock> {
    GLOBAL.get().ok_or(Error::NotConfigured)
}
