//! The held lock, released on drop.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::DateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::{Anchor, Lease};
use crate::mongo_lock::MongoLock;
use crate::query::HandOver;
use crate::renewal::Renewal;
use crate::validate;

/// How an acquisition was made, for the guard it becomes.
pub(crate) struct Held {
    /// What the lease is counted from: a local instant before a server
    /// reading that came no later than the grant.
    pub(crate) anchor: Anchor,
    /// The lease asked for.
    pub(crate) lease: Duration,
    /// Whether a release handed the lock over: its lease (from the
    /// release, `acquired_at`, to `expires_at`) may be shorter than `lease`
    /// (see [`crate::query::release_update`]), and is then extended to
    /// `lease` in the background.
    pub(crate) handed: bool,
    /// How the release hands the lock over to the queue's head.
    pub(crate) hand_over: HandOver,
    /// Background renewal interval, if on.
    pub(crate) renew_every: Option<Duration>,
    /// Minimum hold applied at release.
    pub(crate) min_hold_millis: i64,
}

/// A held lock. Release it with [`release`](Self::release); dropping it
/// unreleased inside a tokio runtime releases it in the background (await
/// [`MongoLock::finish_releases`](crate::MongoLock::finish_releases) before the runtime ends), and elsewhere the
/// lease simply runs out.
///
/// Renewals and the release check both the owner and this acquisition's
/// fencing token, so a guard can never extend or free a later holder's lock,
/// even one that reuses its owner name.
///
/// The guard also keeps a local, conservative view of the lease: it counts
/// the lease from when the acquiring (or renewing) request was *sent*, and
/// ends it a [drift allowance](MongoLock::drift_allowance) early, so
/// [`is_lost`](Self::is_lost) turns true before the server lets another
/// worker in, as long as the servers' clocks are within the
/// [maximum clock skew](MongoLock::with_max_clock_skew) of each other.
///
/// ```no_run
/// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
/// use std::time::Duration;
///
/// let guard = lock
///     .acquire("invoices")
///     .timeout(Duration::from_secs(10))
///     .renew(true)
///     .await?;
/// tokio::select! {
///     _ = async { /* the work */ } => {}
///     lost = guard.lost() => return Err(lost),
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    lock: MongoLock,
    info: LockInfo,
    owner: String,
    min_hold_millis: i64,
    hand_over: HandOver,
    lease: Arc<Lease>,
    renewal: Option<JoinHandle<()>>,
    released: bool,
    /// When the winning request was sent, for the hold-time metric.
    acquired: Instant,
}

impl LockGuard {
    pub(crate) fn new(lock: MongoLock, info: LockInfo, held: Held) -> Self {
        let owner = info.owner.clone().unwrap_or_default();
        let until = lock.believed_until(held.anchor, info.expires_at);
        let lease = Lease::new(until);
        let granted = info
            .acquired_at
            .map(|at| info.expires_at.timestamp_millis() - at.timestamp_millis())
            .and_then(|millis| u64::try_from(millis).ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        let short = held.handed && granted < held.lease;
        // A short first lease is renewed halfway through what is left of it
        // at the latest.
        let first = |interval: Duration| {
            let regular = held.anchor.sent + interval;
            if short {
                let now = Instant::now();
                regular.min(now + until.saturating_duration_since(now) / 2)
            } else {
                regular
            }
        };
        let renewal = match held.renew_every {
            Some(interval) => Some((interval, first(interval), false)),
            None if short => Some((held.lease, first(held.lease), true)),
            None => None,
        };
        let renewal = renewal.map(|(interval, first, once)| {
            Renewal {
                lock: lock.clone(),
                key: info.key.clone(),
                owner: owner.clone(),
                token: info.token,
                lease: held.lease,
                interval,
                first,
                once,
            }
            .spawn(lease.clone())
        });
        Self {
            lock,
            info,
            owner,
            min_hold_millis: held.min_hold_millis,
            hand_over: held.hand_over,
            lease,
            renewal,
            released: false,
            acquired: held.anchor.sent,
        }
    }

    /// The `MongoLock` the guard came from.
    pub(crate) fn lock(&self) -> &MongoLock {
        &self.lock
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

    /// When the lock was taken, by the server's clock. For a quick take
    /// (an uncontended acquisition, whose reply carries no document) it is
    /// this process's lower bound of the server's clock when the request
    /// left, at most about a round trip before the server's own stamp.
    pub fn acquired_at(&self) -> Option<DateTime> {
        self.info.acquired_at
    }

    /// When the lease ends, by the server's clock, as of the acquisition or
    /// the last successful [`touch`](Self::touch) (background renewals do
    /// not update it). For a lock a release handed over (see
    /// [`Acquire::fair`](crate::Acquire::fair)), that may be the end of a
    /// shorter first lease, which the guard extends in the background. For
    /// a quick take, it is [`acquired_at`](Self::acquired_at) plus the
    /// lease: never later than the server's.
    pub fn expires_at(&self) -> DateTime {
        self.info.expires_at
    }

    /// Whether the lock is lost: a renewal found another owner or no lock,
    /// or the lease ran out locally before a renewal was confirmed. Once
    /// lost, always lost.
    pub fn is_lost(&self) -> bool {
        self.lease.lost_reason().is_some()
    }

    /// Resolves when the lock is lost, with [`Error::LockLost`]. Without
    /// renewal, that is when the lease runs out. Meant for `tokio::select!`
    /// next to the work.
    pub async fn lost(&self) -> Error {
        let reason = self.lease.wait_lost().await;
        self.lost_error(reason)
    }

    fn lost_error(&self, reason: &str) -> Error {
        Error::LockLost {
            key: self.info.key.clone(),
            owner: self.owner.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Extends the lease to `expires` from the server's now. Resolves to
    /// `false` if this acquisition no longer holds the lock.
    pub async fn touch(&mut self, expires: Duration) -> Result<bool> {
        let lease = validate::positive_millis("expires", expires)?;
        let sent = Instant::now();
        let touched = self
            .lock
            .touch_held(self.key(), &self.owner, Some(self.info.token), lease)
            .await?;
        Ok(match touched {
            Some(info) => {
                self.info = info;
                self.lease.extend(sent, self.lock.local_lease(expires));
                true
            }
            None => {
                self.lease.mark_lost(crate::lease::TAKEN);
                crate::metrics::lost(self.key());
                false
            }
        })
    }

    /// Releases the lock (keeping it until the minimum hold, if one was
    /// set). Resolves to `false` if this acquisition no longer held it.
    ///
    /// If this future is dropped before the server answered, the guard's
    /// drop releases in the background once more. A release that failed is
    /// not repeated: the lease runs out by itself.
    pub async fn release(mut self) -> Result<bool> {
        self.stop_renewal();
        let result = self
            .lock
            .release_held(
                self.key(),
                &self.owner,
                Some(self.info.token),
                self.min_hold_millis,
                self.hand_over,
            )
            .await;
        self.released = true;
        crate::metrics::held(self.key(), self.acquired.elapsed());
        if result.is_err() {
            crate::metrics::release_failed(self.key());
        }
        result
    }

    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        if self.released {
            return;
        }
        crate::metrics::held(&self.info.key, self.acquired.elapsed());
        let filter = crate::query::by_holder(&self.info.key, &self.owner, Some(self.info.token));
        self.lock.release_in_background(
            std::mem::take(&mut self.info.key),
            filter,
            self.min_hold_millis,
            self.hand_over,
            crate::release::Until::Done,
        );
    }
}
