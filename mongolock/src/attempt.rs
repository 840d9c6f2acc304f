//! One attempt to take a lock: the request, the single round trip, and
//! what it found.

use std::time::Duration;

use mongodb::options::ReturnDocument;

use crate::clock::Probe;
use crate::contention::Hint;
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Anchor;
use crate::mongo_lock::MongoLock;
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

/// What a quick take did (see [`MongoLock::quick`]).
enum Quick {
    NotTried,
    Refused,
    Took(Box<Attempt>),
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
#[derive(Debug, Clone)]
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
    /// A scheduled run's tick claim: the candidate fire times, the
    /// tolerance and whether an abandoned tick is retried (see
    /// [`query::TickClaim`]). Such a request never queues.
    pub(crate) tick: Option<(Vec<i64>, i64, bool)>,
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
            tick: None,
        })
    }
}

impl MongoLock {
    /// One atomic attempt: a single `findOneAndUpdate` round trip, repeated
    /// at once only if a concurrent first upsert raced it.
    pub(crate) async fn attempt(&self, req: &Request) -> Result<Attempt> {
        let tick = req
            .tick
            .as_ref()
            .map(|(candidates, tolerance_millis, retry)| query::TickClaim {
                candidates,
                tolerance_millis: *tolerance_millis,
                retry_abandoned: *retry,
            });
        let fair = req.fair && !req.claim.is_empty() && tick.is_none();
        // A key not seen contended lately most likely has no queue, and is
        // most likely free.
        let hint = self.contention().of(&req.key);
        let calm = !hint.contended;
        let mut queueing = fair.then(|| query::Queueing {
            tag: self.wakeups().tag(),
            expiry_millis: self.queue_expiry_millis(),
            join: req.timeout.is_some(),
            expect_none: calm,
        });
        match self.quick(req, hint).await? {
            Quick::NotTried => {}
            Quick::Took(acquired) => return Ok(*acquired),
            // Taken, queued, expired but not released, or the token too low:
            // the full attempt decides by the server's clock, and queues.
            Quick::Refused => {
                if let Some(queueing) = queueing.as_mut() {
                    queueing.expect_none = false;
                }
            }
        }
        let mut retries = 0;
        loop {
            let probe = Probe::start();
            let result = match self.memory() {
                Some(memory) => Ok(Some(memory.acquire(
                    &req.key,
                    &req.owner,
                    &req.claim,
                    req.lease_millis,
                    queueing,
                    tick,
                ))),
                None => {
                    self.collection()
                        .find_one_and_update(
                            query::by_key(&req.key),
                            query::acquire_pipeline(
                                &req.owner,
                                &req.claim,
                                req.lease_millis,
                                queueing,
                                tick,
                            ),
                        )
                        .upsert(true)
                        .return_document(ReturnDocument::After)
                        .await
                }
            };
            match result {
                Ok(Some(doc)) => {
                    // After the first write, which created the collection if
                    // it was new: the build never races its creation.
                    self.start_ttl_index();
                    self.contention().exists(&req.key);
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

    /// The quick take (see [`query::quick_take`]), where it may succeed: an
    /// attempt (fair or not, not a tick's claim) on a key not seen contended
    /// lately, whose document a reply showed (both as `hint` says), with a
    /// fresh reading of the server's clock to propose the fencing token
    /// from. Unless it took the lock, the caller's pipeline attempt follows.
    ///
    /// The lease is counted as every lease is (see
    /// [`Anchor::believed_until`]): from when the request left, with the
    /// token's instant as the server's reading. That instant is at or before
    /// the server's grant, which the span from it to `at + lease` therefore
    /// never overstates.
    async fn quick(&self, req: &Request, hint: Hint) -> Result<Quick> {
        let worth_trying =
            self.memory().is_none() && req.tick.is_none() && !hint.contended && hint.known;
        let Some(token) = worth_trying
            .then(|| self.server_clock().floor_micros())
            .flatten()
        else {
            return Ok(Quick::NotTried);
        };
        let probe = Probe::start();
        let reply = self
            .collection()
            .update_one(
                query::quick_filter(&req.key, token),
                query::quick_take(&req.owner, &req.claim, req.lease_millis, token),
            )
            .await?;
        if reply.matched_count != 1 {
            return Ok(Quick::Refused);
        }
        let at = mongodb::bson::DateTime::from_millis(token.div_euclid(query::TOKENS_PER_MILLI));
        Ok(Quick::Took(Box::new(Attempt::Acquired {
            info: LockInfo::granted(&req.key, &req.owner, token, at, req.lease_millis),
            anchor: Anchor {
                sent: probe.sent(),
                server: at,
            },
            handed: false,
            queued: false,
        })))
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
