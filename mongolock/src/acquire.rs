//! Taking a lock: the seed's `lock()` and the guard-returning `acquire()`.

use std::future::IntoFuture;
use std::time::Duration;

use mongodb::options::ReturnDocument;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::info::LockInfo;
use crate::mongo_lock::{BoxFuture, MongoLock, DEFAULT_EXPIRES};
use crate::owner::unique_owner;
use crate::query;
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
    /// The caller holds the lock now.
    Acquired(LockInfo),
    /// Someone else does.
    Busy(LockInfo),
}

/// A validated request to take a lock.
pub(crate) struct Request {
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) lease_millis: i64,
    pub(crate) timeout: Option<Duration>,
}

impl Request {
    pub(crate) fn new(
        key: String,
        owner: String,
        expires: Duration,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        validate::key(&key)?;
        validate::owner(&owner)?;
        let lease_millis = validate::positive_millis("expires", expires)?;
        if let Some(timeout) = timeout {
            validate::bounded("timeout", timeout)?;
        }
        Ok(Self {
            key,
            owner,
            lease_millis,
            timeout,
        })
    }
}

impl MongoLock {
    /// One atomic attempt: a single `findOneAndUpdate` round trip, repeated
    /// at once only if a concurrent first upsert raced it.
    pub(crate) async fn attempt(&self, req: &Request) -> Result<Attempt> {
        self.ensure_ttl_index().await;
        let mut retries = 0;
        loop {
            let result = self
                .collection()
                .find_one_and_update(
                    query::by_key(&req.key),
                    query::acquire_pipeline(&req.owner, req.lease_millis),
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match result {
                Ok(Some(doc)) => {
                    let info = LockInfo::from_document(&doc)?;
                    return Ok(if info.owner.as_deref() == Some(req.owner.as_str()) {
                        Attempt::Acquired(info)
                    } else {
                        Attempt::Busy(info)
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

    /// Attempts until the lock is taken or the timeout is reached. Sleeps
    /// never pass the deadline, and the last attempt is made at it.
    pub(crate) async fn attempt_until(&self, req: &Request) -> Result<Attempt> {
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let mut retry = 0_u32;
        loop {
            let attempt = self.attempt(req).await?;
            let Attempt::Busy(ref holder) = attempt else {
                tracing::debug!(key = %req.key, owner = %req.owner, retries = retry, "mongolock acquired");
                return Ok(attempt);
            };
            let now = Instant::now();
            let Some(deadline) = deadline.filter(|d| *d > now) else {
                tracing::debug!(key = %req.key, owner = %req.owner, holder = ?holder.owner, "mongolock busy");
                return Ok(attempt);
            };
            let delay = self.backoff().delay(retry).min(deadline - now);
            retry = retry.saturating_add(1);
            tracing::trace!(key = %req.key, ?delay, "mongolock waiting");
            tokio::time::sleep(delay).await;
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
        Box::pin(async move {
            let req = Request::new(self.key, self.owner, self.expires, self.timeout)?;
            let attempt = self.lock.attempt_until(&req).await?;
            Ok(matches!(attempt, Attempt::Acquired(_)))
        })
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
}

impl Acquire {
    pub(crate) fn new(lock: MongoLock, key: String) -> Self {
        Self {
            lock,
            key,
            owner: None,
            expires: DEFAULT_EXPIRES,
            timeout: None,
        }
    }

    /// The owner token to store. Default: a unique one per acquisition
    /// (`host:pid:random`), which is what you want unless another system
    /// must recognise the holder.
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
}

impl IntoFuture for Acquire {
    type Output = Result<LockGuard>;
    type IntoFuture = BoxFuture<Result<LockGuard>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let owner = self.owner.unwrap_or_else(unique_owner);
            let req = Request::new(self.key, owner, self.expires, self.timeout)?;
            match self.lock.attempt_until(&req).await? {
                Attempt::Acquired(info) => Ok(LockGuard::new(self.lock, info)),
                Attempt::Busy(holder) => Err(Error::Locked {
                    key: req.key,
                    owner: holder.owner,
                    since: holder.acquired_at,
                    expires: Some(holder.expires_at),
                }),
            }
        })
    }
}
