//! The held lock, released on drop.

use std::time::Duration;

use mongodb::bson::DateTime;

use crate::error::Result;
use crate::info::LockInfo;
use crate::mongo_lock::MongoLock;
use crate::validate;

/// A held lock. Release it with [`release`](Self::release); dropping it
/// unreleased inside a tokio runtime releases it in the background, and
/// elsewhere the lease simply runs out.
///
/// Renewals and the release check both the owner and this acquisition's
/// fencing token, so a guard can never extend or free a later holder's lock,
/// even one that reuses its owner name.
///
/// ```no_run
/// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
/// use std::time::Duration;
///
/// let guard = lock.acquire("invoices").timeout(Duration::from_secs(10)).await?;
/// println!("token {} for {}", guard.token(), guard.owner());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    lock: MongoLock,
    info: LockInfo,
    owner: String,
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(lock: MongoLock, info: LockInfo) -> Self {
        let owner = info.owner.clone().unwrap_or_default();
        Self {
            lock,
            info,
            owner,
            released: false,
        }
    }

    /// The lock key.
    pub fn key(&self) -> &str {
        &self.info.key
    }

    /// The owner token this guard holds the lock with.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token of this acquisition. Pass it to the systems you
    /// write to, and have them refuse writes with a smaller token than the
    /// largest they saw.
    pub fn token(&self) -> i64 {
        self.info.token
    }

    /// When the lock was taken, by the server's clock.
    pub fn acquired_at(&self) -> Option<DateTime> {
        self.info.acquired_at
    }

    /// When the lease ends, by the server's clock, as of the acquisition or
    /// the last successful [`touch`](Self::touch).
    pub fn expires_at(&self) -> DateTime {
        self.info.expires_at
    }

    /// Extends the lease to `expires` from the server's now. Resolves to
    /// `false` if this acquisition no longer holds the lock.
    pub async fn touch(&mut self, expires: Duration) -> Result<bool> {
        let lease = validate::positive_millis("expires", expires)?;
        let touched = self
            .lock
            .touch_held(self.key(), &self.owner, Some(self.info.token), lease)
            .await?;
        Ok(match touched {
            Some(info) => {
                self.info = info;
                true
            }
            None => false,
        })
    }

    /// Releases the lock. Resolves to `false` if this acquisition no longer
    /// held it (its lease ran out and someone else took it).
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.lock
            .release_held(self.key(), &self.owner, Some(self.info.token), 0)
            .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(key = %self.info.key, "mongolock guard dropped outside a runtime; the lease will run out");
            return;
        };
        let lock = self.lock.clone();
        let key = std::mem::take(&mut self.info.key);
        let owner = std::mem::take(&mut self.owner);
        let token = self.info.token;
        runtime.spawn(async move {
            if let Err(error) = lock.release_held(&key, &owner, Some(token), 0).await {
                tracing::warn!(%key, %owner, %error, "mongolock release on drop failed; the lease will run out");
            }
        });
    }
}
