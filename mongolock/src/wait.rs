//! How a waiter spaces its attempts.

use std::time::Duration;

use tokio::time::Instant;

use crate::attempt::{Attempt, Place, Request};
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Anchor;
use crate::mongo_lock::MongoLock;

/// The shortest time the attempt at the deadline may take: a waiter returns
/// at most this long after its timeout when the server does not answer.
const LAST_ATTEMPT_GRACE: Duration = Duration::from_millis(500);

/// With a change stream open, a waiter still rechecks this often, in case
/// an event was lost.
const STREAM_RECHECK: Duration = Duration::from_secs(30);

impl MongoLock {
    /// Attempts until the lock is taken or the timeout is reached.
    ///
    /// Between attempts a waiter sleeps until the holder's lease ends (by
    /// the server's clock, converted to ours), until the change stream says
    /// the key was released, or, without a stream, until its next poll;
    /// never past the deadline, where it makes a last attempt. Every await is
    /// bounded: an attempt by the operation timeout and the deadline (the
    /// last one after [`LAST_ATTEMPT_GRACE`]), the clock estimate by the
    /// deadline.
    ///
    /// A transient error (a lost connection, an election, a write concern
    /// not met in time) does not end the wait: the waiter backs off and
    /// tries again with the same owner and claim, which re-enters a lock
    /// that an attempt with an unknown outcome did take. Only when the
    /// deadline passes is the last error returned. An acquisition that gives
    /// up (or is dropped) after such an attempt releases what it may hold.
    pub(crate) async fn attempt_until(&self, req: &Request) -> Result<Attempt> {
        let started = Instant::now();
        let mut orphan = Orphan {
            lock: self,
            req,
            armed: false,
            lingering: false,
            queued: false,
        };
        let result = self.attempt_until_inner(req, &mut orphan).await;
        if matches!(result, Ok(Attempt::Acquired { .. })) {
            // Taking the lock also took the waiter out of the queue.
            orphan.armed = false;
            orphan.queued = false;
        }
        if let Ok(attempt) = &result {
            log_outcome(req, attempt);
            match attempt {
                Attempt::Acquired { .. } => {
                    crate::metrics::acquired(&req.key);
                    crate::metrics::waited(&req.key, started.elapsed());
                }
                Attempt::Busy(..) => crate::metrics::busy(&req.key),
            }
        }
        result
    }

    async fn attempt_until_inner(&self, req: &Request, orphan: &mut Orphan<'_>) -> Result<Attempt> {
        let single = self.operation_timeout();
        let (Some(timeout), Some(deadline)) =
            (req.timeout, req.timeout.map(|t| Instant::now() + t))
        else {
            orphan.armed = true;
            orphan.lingering = true;
            return self
                .bounded(&req.key, single, self.attempt(req))
                .await
                .inspect(|_| orphan.armed = false);
        };
        let claim = req.fair.then_some(req.claim.as_str());
        let interest = self.wakeups().subscribe(&req.key, claim);
        // An unfair waiter that has waited a queue expiry joins the line
        // (see `queues_late`): from then on it asks as this request.
        let mut aged: Option<Request> = None;
        let began = Instant::now();
        // From the first attempt on, a fair waiter may be in the queue, even
        // when that attempt's reply is lost.
        orphan.queued = req.fair;
        let (mut polls, mut late, mut failures) = (0_u32, 0_u32, 0_u32);
        let mut unknown = false;
        let mut last_error = None;
        // The newest attempt that refreshed this waiter's queue entry: when
        // it was sent, and the server's now at that refresh. A handed-over
        // lease is counted from it.
        let mut anchor = None;
        // The newest fencing token seen on the lock: a handover with an
        // older one is stale.
        let mut newest_token = i64::MIN;
        loop {
            let mut woken = std::pin::pin!(interest.notified());
            woken.as_mut().enable();
            let asking = aged.as_ref().unwrap_or(req);
            if let Some(info) = interest.take_handed_over() {
                if let Some(acquired) = self.handed_over(asking, info, anchor, newest_token) {
                    return Ok(acquired);
                }
            }
            let start = Instant::now();
            let cutoff = deadline.max(start + LAST_ATTEMPT_GRACE).min(start + single);
            orphan.armed = true;
            orphan.lingering = true;
            let attempt = match tokio::time::timeout_at(cutoff, self.attempt(asking)).await {
                Ok(result) => result,
                Err(_) => Err(self.timed_out(&req.key, timeout, last_error.take())),
            };
            let now = Instant::now();
            let (holder, place) = match attempt {
                Ok(Attempt::Busy(holder, place)) => {
                    // Answered: no attempt of this waiter is in flight any
                    // more, and none took the lock (it would have
                    // re-entered). One earlier unanswered attempt might
                    // still land late: a single release covers that.
                    orphan.armed = unknown;
                    orphan.lingering = false;
                    failures = 0;
                    newest_token = newest_token.max(holder.token);
                    if let Some(server) = place.refreshed {
                        anchor = Some(Anchor {
                            sent: start,
                            server,
                        });
                    }
                    if place.position.is_none() {
                        self.wakeups().widen();
                    }
                    if now >= deadline {
                        return Ok(Attempt::Busy(holder, place));
                    }
                    self.wakeups().watch(self.collection());
                    let joins = now.saturating_duration_since(began) >= self.queue_expiry();
                    if aged.is_none() && queues_late(req) && joins {
                        tracing::debug!(key = %req.key, "mongolock unfair waiter joins the line");
                        interest.queue_as(&req.claim);
                        orphan.queued = true;
                        aged = Some(Request {
                            fair: true,
                            ..req.clone()
                        });
                        // It asks again at once, to join.
                        continue;
                    }
                    (holder, place)
                }
                Err(error) if error.is_transient() && now < deadline => {
                    unknown = true;
                    if let Error::Mongo(cause) = &error {
                        last_error = Some(cause.clone());
                    }
                    let delay = self.backoff().delay(failures);
                    failures = failures.saturating_add(1);
                    tracing::debug!(key = %req.key, %error, ?delay, "mongolock attempt failed; retrying within the timeout");
                    tokio::time::sleep_until((now + delay).min(deadline)).await;
                    continue;
                }
                // The time is up after a transient error: a timeout, with
                // the driver's error as its cause. (Before the deadline a
                // transient error was retried above; any other error is
                // returned as it is.)
                Err(Error::Mongo(cause)) if crate::error::transient(&cause) => {
                    return Err(Error::TimedOut {
                        key: req.key.clone(),
                        timeout,
                        cause: Some(cause),
                    })
                }
                other => return other,
            };
            let wake_at = self
                .next_wake(&holder, &mut polls, &mut late, now, deadline)
                .await;
            let mut wake_at = self.queued_wake(&place, wake_at, now).min(deadline);
            if aged.is_none() && queues_late(req) {
                // Releases that hand the lock over wake nobody here: the
                // unfair waiter wakes to join the line in time.
                wake_at = wake_at.min(began + self.queue_expiry());
            }
            tracing::trace!(key = %req.key, wait = ?wake_at.saturating_duration_since(now), "mongolock waiting");
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = woken => {
                    tracing::debug!(key = %req.key, "mongolock waiter woken by a release");
                }
            }
        }
    }

    /// A lock a release handed over to this waiter, delivered by a change
    /// event or a release's reply, however late (this process may have been
    /// paused since). Believed only by the server's word: its lease ends at
    /// `expires_at` by the server's clock, counted locally from `anchor`,
    /// the newest attempt known to have refreshed the waiter's entry (any
    /// such attempt's reply is a server reading after its sending, so the
    /// count ends before the server's whichever it is). A handover older
    /// than a token this waiter has seen since, or with less than half of
    /// its believed lease left, or with no anchor, gives `None`: the next
    /// attempt then asks the server, and re-enters the lock (with the whole
    /// lease) only if the handover still holds.
    fn handed_over(
        &self,
        req: &Request,
        info: LockInfo,
        anchor: Option<Anchor>,
        newest_token: i64,
    ) -> Option<Attempt> {
        let anchor = anchor?;
        if info.owner.as_deref() != Some(req.owner.as_str()) || info.token < newest_token {
            return None;
        }
        let until = self.believed_until(anchor, info.expires_at);
        // The lease the release granted, from its now (`acquired_at`).
        let granted = info.acquired_at.map_or(0, |at| {
            info.expires_at.timestamp_millis() - at.timestamp_millis()
        });
        let granted = Duration::from_millis(u64::try_from(granted).unwrap_or(0));
        if until.saturating_duration_since(Instant::now()) < self.local_lease(granted) / 2 {
            tracing::debug!(key = %req.key, "mongolock handover too old to believe; asking the server");
            return None;
        }
        tracing::debug!(key = %req.key, "mongolock lock handed over by a release");
        Some(Attempt::Acquired {
            info,
            anchor,
            handed: true,
            queued: true,
        })
    }

    /// When to try again after finding `holder` in the way.
    async fn next_wake(
        &self,
        holder: &LockInfo,
        polls: &mut u32,
        late: &mut u32,
        now: Instant,
        deadline: Instant,
    ) -> Instant {
        // Asking the server's time must not outlive the wait.
        let _ = tokio::time::timeout_at(deadline, self.refresh_clock()).await;
        let expiry = self.server_clock().local_instant(holder.expires_at);
        if let Some(expiry) = expiry {
            if expiry <= now {
                // Our estimate says the lease is over, the server disagrees:
                // the estimate is a little early. Retry soon.
                *late = late.saturating_add(1);
                return now + self.backoff().delay(*late - 1);
            }
            *late = 0;
            if self.wakeups().stream_open() {
                return expiry.min(now + STREAM_RECHECK);
            }
        }
        // No change stream (or no clock estimate): poll for releases.
        let poll = now + self.backoff().delay(*polls);
        *polls = polls.saturating_add(1);
        expiry.map_or(poll, |expiry| expiry.min(poll))
    }

    /// When a queued waiter tries again, given `wake_at`, when an unqueued
    /// one would. Every waiter re-asks within a third of the queue expiry,
    /// to keep its entry. One that is not the head, with the stream open,
    /// does not wait for the lease to end (the head takes the lock then, and
    /// the release that makes it the head wakes it) but for the head's entry
    /// to lapse, in case the head died.
    fn queued_wake(&self, place: &Place, wake_at: Instant, now: Instant) -> Instant {
        let Some(position) = place.position else {
            return wake_at;
        };
        let keep_entry = now + self.queue_expiry() / 3;
        if position > 0 && self.wakeups().stream_open() {
            let head_lapses = place
                .head_expires
                .and_then(|at| self.server_clock().local_instant(at))
                .map_or(keep_entry, |at| at.max(now));
            return keep_entry.min(head_lapses);
        }
        keep_entry.min(wake_at)
    }
}

/// An acquisition whose attempt may have taken the lock without the caller
/// knowing it (a lost reply, a timeout, a dropped future). Unless disarmed,
/// it releases that lock in the background when dropped, matched by owner
/// and claim, so it cannot touch any other acquisition's lock. Only
/// `acquire()` has claims; `lock(key, owner)`'s caller knows its owner and
/// can release it.
///
/// A fair acquisition that queued and did not take the lock leaves the
/// queue the same way, so that the waiters behind it need not wait for its
/// entry to lapse.
struct Orphan<'a> {
    lock: &'a MongoLock,
    req: &'a Request,
    armed: bool,
    /// The last attempt went unanswered (or is in flight): the server may
    /// still apply it after a release, so the release is repeated until it
    /// finds the lock or the operation timeout has passed. Otherwise one
    /// release is enough.
    lingering: bool,
    queued: bool,
}

impl Drop for Orphan<'_> {
    fn drop(&mut self) {
        if self.queued {
            self.lock.leave_queue_in_background(
                self.req.key.clone(),
                self.req.owner.clone(),
                self.req.claim.clone(),
            );
        }
        if self.armed && !self.req.claim.is_empty() {
            tracing::debug!(key = %self.req.key, owner = %self.req.owner, "mongolock releasing what an unanswered attempt may have taken");
            self.lock.release_in_background(
                self.req.key.clone(),
                crate::query::by_claim(&self.req.key, &self.req.owner, &self.req.claim),
                0,
                if self.req.fair {
                    crate::query::HandOver::ToHeadIfQueued
                } else {
                    crate::query::HandOver::Never
                },
                if self.lingering {
                    crate::release::Until::Found
                } else {
                    crate::release::Until::Done
                },
            );
        }
    }
}

/// Whether `req` is an unfair waiter (`fair(false)`) that joins the queue
/// once it has waited a whole queue expiry. A lock whose fair waiters keep
/// queueing is handed from one to the next and never left free, so an
/// unfair waiter would otherwise wait for as long as they keep coming. Only
/// an acquisition with a claim can queue (not `lock(key, owner)`, not a
/// scheduled run's tick claim).
fn queues_late(req: &Request) -> bool {
    !req.fair && !req.claim.is_empty() && req.tick.is_none()
}

fn log_outcome(req: &Request, attempt: &Attempt) {
    match attempt {
        Attempt::Acquired { info, .. } => {
            tracing::debug!(key = %req.key, owner = %req.owner, token = info.token, "mongolock acquired");
        }
        Attempt::Busy(holder, _) => {
            tracing::debug!(key = %req.key, owner = %req.owner, holder = ?holder.owner, "mongolock busy");
        }
    }
}
