//! Taking a lock: the Python package's `lock()` and the guard-returning `acquire()`.

use std::future::IntoFuture;
use std::time::Duration;

use tracing::Instrument;

use crate::attempt::{Attempt, Request};
use crate::error::{Error, Result};
use crate::guard::{Held, LockGuard};
use crate::mongo_lock::{BoxFuture, MongoLock};
use crate::owner::unique_owner;
use crate::query::HandOver;
use crate::settings::DEFAULT_EXPIRES;
use crate::validate;

impl MongoLock {
    /// Tries to take `key` for `owner`; resolves to `true` if `owner` holds it
    /// afterwards. The Python package's `lock(key, owner, expire, timeout)`.
    ///
    /// Without [`timeout`](Lock::timeout) it makes a single attempt; with one
    /// it retries until the deadline. The lease (default 60 s) starts when the
    /// lock is taken.
    ///
    /// Unlike the Python package, an attempt by the current holder succeeds and renews
    /// the lease: a retry after a lost reply must not lock you out of your own
    /// lock. Give each worker its own owner, or use [`acquire`](Self::acquire),
    /// which makes a unique one.
    pub fn lock(&self, key: impl Into<String>, owner: impl Into<String>) -> Lock {
        Lock::new(self.clone(), key.into(), owner.into())
    }

    /// Takes `key` and returns a [`LockGuard`](crate::LockGuard) that releases
    /// it. The Python package's context manager: on timeout it fails with
    /// [`Error::Locked`], the Python package's `MongoLockLocked`.
    pub fn acquire(&self, key: impl Into<String>) -> Acquire {
        Acquire::new(self.clone(), key.into())
    }
}

/// The pending [`MongoLock::lock`](crate::MongoLock::lock). Await it for a `bool`: `true` if the
/// owner holds the lock.
#[must_use = "a lock attempt does nothing until awaited"]
#[derive(Debug)]
pub struct Lock {
    lock: MongoLock,
    key: String,
    owner: String,
    expires: Duration,
    timeout: Option<Duration>,
}

impl Lock {
    pub(crate) fn new(lock: MongoLock, key: String, owner: String) -> Self {
        Self {
            lock,
            key,
            owner,
            expires: DEFAULT_EXPIRES,
            timeout: None,
        }
    }

    /// The lease, from the moment the lock is taken (default 60 s).
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// Keep trying until this much time has passed. Without it, a single
    /// attempt is made.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl IntoFuture for Lock {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<Result<bool>>;

    fn into_future(self) -> Self::IntoFuture {
        let span = tracing::debug_span!("mongolock.acquire", key = %self.key, owner = %self.owner);
        Box::pin(
            async move {
                let req = Request::new(
                    self.key,
                    self.owner,
                    String::new(),
                    self.expires,
                    self.timeout,
                )?;
                let attempt = self.lock.attempt_until(&req).await?;
                Ok(matches!(attempt, Attempt::Acquired { .. }))
            }
            .instrument(span),
        )
    }
}

/// The pending [`MongoLock::acquire`](crate::MongoLock::acquire). Await it for a
/// [`LockGuard`](crate::LockGuard).
#[must_use = "an acquisition does nothing until awaited"]
#[derive(Debug)]
pub struct Acquire {
    lock: MongoLock,
    key: String,
    owner: Option<String>,
    expires: Duration,
    timeout: Option<Duration>,
    renew: bool,
    renew_every: Option<Duration>,
    min_hold: Duration,
    fair: Option<bool>,
}

impl Acquire {
    pub(crate) fn new(lock: MongoLock, key: String) -> Self {
        Self {
            lock,
            key,
            owner: None,
            expires: DEFAULT_EXPIRES,
            timeout: None,
            renew: false,
            renew_every: None,
            min_hold: Duration::ZERO,
            fair: None,
        }
    }

    /// Wait in line (default: [`MongoLock::with_fairness`](crate::MongoLock::with_fairness), on unless
    /// changed). A fair acquisition that finds the lock taken joins the
    /// key's queue, kept in the lock document, and a released lock goes to
    /// the queue's head: waiters acquire in the order they first asked,
    /// whichever process they run in, and a release wakes only the head's
    /// process. A waiter's entry lapses
    /// [`queue_expiry`](MongoLock::with_queue_expiry) after its last attempt,
    /// so a waiter that died blocks the queue no longer than that; a waiting
    /// one re-asks every third of it.
    ///
    /// A fair guard's release hands the lock straight to the queue's head in
    /// the same write; the head learns it from the release's change event
    /// (or reply, in the same process) and sends nothing to take it. Its
    /// lease then runs from the release, but no further than its queue entry
    /// would have lasted, so a head that died holds the lock no longer than
    /// that either; if that cut the lease short, the guard extends it to the
    /// whole lease in the background, once, within the first half of it.
    ///
    /// Unfair acquisitions (`fair(false)`, and [`MongoLock::lock`](crate::MongoLock::lock)) ignore
    /// the queue: they take a lock that is free, ahead of queued waiters.
    /// Fair waiters that keep queueing hand the lock from one to the next
    /// and never leave it free, so an unfair `acquire()` that has waited a
    /// whole queue expiry joins the queue's end rather than starve (its
    /// release still leaves the lock free, as unfair releases do).
    pub fn fair(mut self, fair: bool) -> Self {
        self.fair = Some(fair);
        self
    }

    /// The owner token to store. Default: a unique one per acquisition
    /// (`host:pid:random`), which is what you want unless another system
    /// must recognise the holder.
    ///
    /// Unlike [`MongoLock::lock`](crate::MongoLock::lock), a guard never shares a lock with another
    /// acquisition of the same owner: a second `acquire` while the first
    /// guard holds the key waits or fails with [`Error::Locked`].
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The lease, from the moment the lock is taken (default 60 s).
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// Keep trying until this much time has passed. Without it, a single
    /// attempt is made, and a held lock fails at once with [`Error::Locked`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Keep the lease alive in the background while the guard lives,
    /// renewing every `expires / 3` (see [`renew_every`](Self::renew_every)).
    /// The guard reports a failed keep-alive through
    /// [`LockGuard::is_lost`] and [`LockGuard::lost`].
    pub fn renew(mut self, renew: bool) -> Self {
        self.renew = renew;
        self
    }

    /// Renew in the background at this interval, which must be shorter
    /// than the lease. Implies [`renew(true)`](Self::renew).
    pub fn renew_every(mut self, interval: Duration) -> Self {
        self.renew = true;
        self.renew_every = Some(interval);
        self
    }

    /// Keep the lock held until at least `acquired_at + min_hold` by the
    /// server's clock, even if released sooner (ShedLock's
    /// `lockAtLeastFor`). A job that finishes in a second on one machine is
    /// then not run again by another machine whose cron fires a little
    /// later.
    pub fn min_hold(mut self, min_hold: Duration) -> Self {
        self.min_hold = min_hold;
        self
    }
}

impl IntoFuture for Acquire {
    type Output = Result<LockGuard>;
    type IntoFuture = BoxFuture<Result<LockGuard>>;

    fn into_future(self) -> Self::IntoFuture {
        let owner = self.owner.unwrap_or_else(unique_owner);
        let span = tracing::debug_span!("mongolock.acquire", key = %self.key, owner = %owner);
        Box::pin(
            async move {
                let claim = format!("{:016x}", rand::random::<u64>());
                let mut req = Request::new(self.key, owner, claim, self.expires, self.timeout)?;
                req.fair = self.fair.unwrap_or_else(|| self.lock.fair_by_default());
                let min_hold_millis = validate::bounded("min_hold", self.min_hold)?;
                let renew_every = match (self.renew, self.renew_every) {
                    (false, _) => None,
                    (true, None) => {
                        validate::positive_millis(
                            "renew interval (expires / 3)",
                            self.expires / 3,
                        )?;
                        Some(self.expires / 3)
                    }
                    (true, Some(interval)) => {
                        validate::positive_millis("renew interval", interval)?;
                        if interval >= self.expires {
                            return Err(Error::InvalidDuration {
                                what: "renew interval",
                                duration: interval,
                                reason: "must be shorter than the lease (`expires`)",
                            });
                        }
                        Some(interval)
                    }
                };
                if let Some(interval) = renew_every {
                    if interval >= self.lock.local_lease(self.expires) {
                        return Err(Error::InvalidDuration {
                            what: "renew interval",
                            duration: interval,
                            reason: "must be shorter than the lease less the drift allowance (MongoLock::drift_allowance)",
                        });
                    }
                }
                match self.lock.attempt_until(&req).await? {
                    Attempt::Acquired {
                        info,
                        anchor,
                        handed,
                        queued,
                    } => Ok(LockGuard::new(
                        self.lock,
                        info,
                        Held {
                            anchor,
                            lease: self.expires,
                            handed,
                            hand_over: match (req.fair, queued) {
                                (false, _) => HandOver::Never,
                                (true, true) => HandOver::ToHead,
                                (true, false) => HandOver::ToHeadIfQueued,
                            },
                            renew_every,
                            min_hold_millis,
                        },
                    )),
                    Attempt::Busy(holder, _) => Err(Error::Locked {
                        key: req.key,
                        owner: holder.owner,
                        since: holder.acquired_at,
                        expires: Some(holder.expires_at),
                    }),
                }
            }
            .instrument(span),
        )
    }
}
