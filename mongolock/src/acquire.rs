//! Taking a lock: the Python package's `lock()` and the guard-returning `acquire()`.

use std::future::IntoFuture;
use std::time::Duration;

use mongodb::options::ReturnDocument;
use tracing::Instrument;

use crate::clock::Probe;
use crate::error::{Error, Result};
use crate::guard::{Held, LockGuard};
use crate::info::LockInfo;
use crate::lease::Anchor;
use crate::mongo_lock::{BoxFuture, MongoLock, DEFAULT_EXPIRES};
use crate::owner::unique_owner;
use crate::query::{self, HandOver};
use crate::validate;

/// How often an attempt whose outcome is unknown is repeated at once:
/// - a duplicate-key error: two upserts of the same new `_id` raced, and the
///   loser's retry finds the document and decides normally;
/// - no document returned (an upsert returning the new document should always
///   return one; SecantusDB 0.7 rarely returns none under contention).
///
/// Repeating is safe because an attempt by the holder re-enters its own lock.
const IMMEDIATE_RETRIES: u32 = 5;

/// What one attempt found.
pub(crate) enum Attempt {
    /// The caller holds the lock now, until `info.expires_at` by the
    /// server's clock; `anchor` is a local instant known to precede a
    /// server reading no later than the grant, to count that lease from
    /// (see [`Anchor::believed_until`]). `handed` when a release handed the
    /// lock over (its lease may be shorter than asked for: see
    /// [`crate::query::release_update`]).
    Acquired {
        info: LockInfo,
        anchor: Anchor,
        handed: bool,
        /// Whether the lock document had a queue after the acquisition.
        queued: bool,
    },
    /// Someone else does; a fair waiter's place in the queue with it.
    Busy(LockInfo, Place),
}

/// Where a fair waiter stands in the queue after a busy attempt.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Place {
    /// 0 for the head; `None` when not queued (unfair, or the queue full).
    pub(crate) position: Option<usize>,
    /// When the head's entry lapses, by the server's clock.
    pub(crate) head_expires: Option<mongodb::bson::DateTime>,
    /// The server's `$$NOW` when this attempt refreshed the waiter's own
    /// entry (its expiry less the queue expiry), if it did.
    pub(crate) refreshed: Option<mongodb::bson::DateTime>,
}

impl Place {
    fn of(doc: &mongodb::bson::Document, claim: &str, expiry_millis: i64) -> Self {
        let Ok(queue) = doc.get_array(query::QUEUE) else {
            return Self::default();
        };
        let entries: Vec<&mongodb::bson::Document> =
            queue.iter().filter_map(|e| e.as_document()).collect();
        let position = entries
            .iter()
            .position(|e| e.get_str(query::WAITER) == Ok(claim));
        let expires =
            |e: &mongodb::bson::Document| e.get_datetime(query::ENTRY_EXPIRES).ok().copied();
        Self {
            position,
            head_expires: entries.first().and_then(|e| expires(e)),
            refreshed: position.and_then(|at| expires(entries[at])).map(|exp| {
                mongodb::bson::DateTime::from_millis(
                    exp.timestamp_millis().saturating_sub(expiry_millis),
                )
            }),
        }
    }
}

/// A validated request to take a lock.
pub(crate) struct Request {
    pub(crate) key: String,
    pub(crate) owner: String,
    /// Which acquisition this is: empty for the Python-shaped
    /// `lock(key, owner)`, which re-enters any lock of the same owner; unique
    /// for `acquire()`, whose guard never shares a lock with another.
    pub(crate) claim: String,
    pub(crate) lease_millis: i64,
    pub(crate) timeout: Option<Duration>,
    /// Whether the acquisition queues (only `acquire()`, which has a claim).
    pub(crate) fair: bool,
}

impl Request {
    pub(crate) fn new(
        key: String,
        owner: String,
        claim: String,
        expires: Duration,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        validate::holder(&key, &owner)?;
        let lease_millis = validate::positive_millis("expires", expires)?;
        if let Some(timeout) = timeout {
            validate::bounded("timeout", timeout)?;
        }
        Ok(Self {
            key,
            owner,
            claim,
            lease_millis,
            // A zero timeout is the single attempt of no timeout.
            timeout: timeout.filter(|t| !t.is_zero()),
            fair: false,
        })
    }
}

impl MongoLock {
    /// One atomic attempt: a single `findOneAndUpdate` round trip, repeated
    /// at once only if a concurrent first upsert raced it.
    pub(crate) async fn attempt(&self, req: &Request) -> Result<Attempt> {
        self.ensure_ttl_index().await?;
        let mut queueing = (req.fair && !req.claim.is_empty()).then(|| query::Queueing {
            tag: self.wakeups().tag(),
            expiry_millis: self.queue_expiry_millis(),
            join: req.timeout.is_some(),
            // A key not seen contended lately most likely has no queue.
            expect_none: !self.contention().lately(&req.key),
        });
        let mut retries = 0;
        loop {
            let probe = Probe::start();
            let result = self
                .collection()
                .find_one_and_update(
                    query::by_key(&req.key),
                    query::acquire_pipeline(&req.owner, &req.claim, req.lease_millis, queueing),
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match result {
                Ok(Some(doc)) => {
                    let info = LockInfo::from_document(&doc)?;
                    let claim = doc.get_str(query::CLAIM).unwrap_or_default();
                    let ours =
                        info.owner.as_deref() == Some(req.owner.as_str()) && claim == req.claim;
                    return Ok(if ours {
                        // expires_at - lease is the server's $$NOW at the write.
                        let server = mongodb::bson::DateTime::from_millis(
                            info.expires_at.timestamp_millis() - req.lease_millis,
                        );
                        self.server_clock().observe(&probe, server);
                        Attempt::Acquired {
                            info,
                            anchor: Anchor {
                                sent: probe.sent(),
                                server,
                            },
                            handed: false,
                            queued: doc.get_array(query::QUEUE).is_ok_and(|q| !q.is_empty()),
                        }
                    } else {
                        self.contention().saw(&req.key);
                        if let Some(light) = queueing.as_mut().filter(|q| q.expect_none) {
                            // The light attempt changed nothing: the real one
                            // (which queues) follows at once.
                            light.expect_none = false;
                            continue;
                        }
                        let expiry = queueing.map_or(0, |q| q.expiry_millis);
                        Attempt::Busy(info, Place::of(&doc, &req.claim, expiry))
                    });
                }
                Ok(None) if retries < IMMEDIATE_RETRIES => {
                    retries += 1;
                    tracing::debug!(key = %req.key, "mongolock upsert returned no document; retrying");
                }
                Ok(None) => {
                    return Err(Error::Corrupt {
                        key: req.key.clone(),
                        reason: "the server returned no document for an upsert".to_owned(),
                    })
                }
                Err(e) if is_duplicate_key(&e) && retries < IMMEDIATE_RETRIES => {
                    retries += 1;
                    tracing::debug!(key = %req.key, "mongolock upsert raced another; retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    const DUPLICATE_KEY: i32 = 11000;
    match error.kind.as_ref() {
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// The pending [`MongoLock::lock`]. Await it for a `bool`: `true` if the
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

/// The pending [`MongoLock::acquire`]. Await it for a
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

    /// Wait in line (default: [`MongoLock::with_fairness`], on unless
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
    /// Unfair acquisitions (`fair(false)`, and [`MongoLock::lock`]) ignore
    /// the queue: they take a lock that is free, ahead of queued waiters.
    pub fn fair(mut self, fair: bool) -> Self {
        self.fair = Some(fair);
        self
    }

    /// The owner token to store. Default: a unique one per acquisition
    /// (`host:pid:random`), which is what you want unless another system
    /// must recognise the holder.
    ///
    /// Unlike [`MongoLock::lock`], a guard never shares a lock with another
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
