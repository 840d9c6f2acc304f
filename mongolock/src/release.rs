//! Ending a hold: the owner-checked release, the hand-over to the queue's
//! head, and the releases left to the background (dropped guards,
//! abandoned acquisitions, waiters leaving the queue).

use std::future::{Future, IntoFuture};
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};

use crate::error::Result;
use crate::mongo_lock::{BoxFuture, MongoLock};
use crate::query::{self, HandOver};
use crate::validate;

impl MongoLock {
    /// Releases `key` if `owner` holds it; resolves to `true` only then. The
    /// document stays (marked free) so the fencing token keeps growing.
    pub fn release(&self, key: impl Into<String>, owner: impl Into<String>) -> Release {
        Release::new(self.clone(), key.into(), owner.into())
    }

    /// The owner-checked release shared by [`release`](Self::release) and
    /// guards.
    pub(crate) async fn release_held(
        &self,
        key: &str,
        owner: &str,
        token: Option<i64>,
        min_hold_millis: i64,
        hand_over: HandOver,
    ) -> Result<bool> {
        let released = self
            .release_where(
                key,
                query::by_holder(key, owner, token),
                min_hold_millis,
                hand_over,
            )
            .await?;
        tracing::debug!(key, owner, released, "mongolock release");
        Ok(released)
    }

    /// Releases the lock document `filter` matches, within the operation
    /// timeout, and hands the lock over to or wakes the waiter of this
    /// `MongoLock` whose turn it is, if any (whose change event then wakes
    /// nobody else here). The reply carries the queue and the new holder, to
    /// know whose turn it is.
    pub(crate) async fn release_where(
        &self,
        key: &str,
        filter: Document,
        min_hold_millis: i64,
        hand_over: HandOver,
    ) -> Result<bool> {
        let local = self.wakeups().releasing_here(key, min_hold_millis <= 0);
        if let Some(memory) = self.memory() {
            let Some(released) = memory.release(key, &filter, min_hold_millis, local.id())? else {
                return Ok(false);
            };
            local.released_here(&released);
            return Ok(true);
        }
        let write = |filter: Document, hand_over: bool| {
            self.collection()
                .find_one_and_update(
                    filter,
                    query::release_update(min_hold_millis, local.id(), hand_over),
                )
                .projection(
                    query::RELEASE_VIEW
                        .iter()
                        .map(|f| ((*f).to_owned(), Bson::Int32(1)))
                        .collect(),
                )
                .return_document(mongodb::options::ReturnDocument::After)
        };
        if hand_over != HandOver::ToHead && min_hold_millis <= 0 {
            // No queue means nothing to hand over and no head to name: the
            // plain update, which returns no document, says all there is.
            // (With a queue, an unfair release, which leaves the lock free,
            // still needs the queue's head, to wake it if it is here.)
            let plain = self.collection().update_one(
                query::without_queue(filter.clone()),
                query::release_plain(local.id()),
            );
            let plain = self
                .bounded(key, self.operation_timeout(), async { Ok(plain.await?) })
                .await?;
            if plain.matched_count == 1 {
                let left = doc! { query::RELEASE_ID: query::free_for_anyone(local.id()) };
                local.released_here(&left);
                return Ok(true);
            }
        }
        let update = write(filter, hand_over != HandOver::Never);
        let released = self
            .bounded(key, self.operation_timeout(), async { Ok(update.await?) })
            .await?;
        let Some(released) = released else {
            return Ok(false);
        };
        local.released_here(&released);
        Ok(true)
    }

    /// Starts [`release_where`](Self::release_where) in the background, for
    /// a guard dropped unreleased or an abandoned acquisition;
    /// [`finish_releases`](Self::finish_releases) waits for it. Outside a
    /// tokio runtime nothing can run it: that is logged, and the lease runs
    /// out by itself.
    ///
    /// With [`Until::Found`] (an acquisition whose attempt went unanswered,
    /// which the server may still apply after this release) it is repeated
    /// with backoff until it releases something or the operation timeout has
    /// passed.
    pub(crate) fn release_in_background(
        &self,
        key: String,
        filter: Document,
        min_hold_millis: i64,
        hand_over: HandOver,
        until: Until,
    ) {
        let (lock, task_key) = (self.clone(), key.clone());
        let spawned = self.in_background(async move {
            let key = task_key;
            let give_up = tokio::time::Instant::now() + lock.operation_timeout();
            let mut retry = 0;
            loop {
                match lock
                    .release_where(&key, filter.clone(), min_hold_millis, hand_over)
                    .await
                {
                    Ok(false) if until == Until::Found && tokio::time::Instant::now() < give_up => {
                        tokio::time::sleep(lock.backoff().delay(retry)).await;
                        retry += 1;
                    }
                    Ok(released) => {
                        tracing::debug!(%key, released, "mongolock background release");
                        return;
                    }
                    Err(error) => {
                        crate::metrics::release_failed(&key);
                        tracing::warn!(%key, %error, "mongolock background release failed; the lease will run out");
                        return;
                    }
                }
            }
        });
        if !spawned {
            tracing::warn!(%key, "mongolock cannot release outside a tokio runtime; the lease will run out");
        }
    }

    /// Runs `task` on the current tokio runtime, counted by
    /// [`finish_releases`](Self::finish_releases) until it ends. `false`
    /// (and nothing runs) outside a runtime.
    fn in_background(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let ticket = self.releases().start();
        runtime.spawn(async move {
            let _ticket = ticket;
            task.await;
        });
        true
    }

    /// Takes a fair waiter that gave up out of `key`'s queue, in the
    /// background, so that the next in line need not wait for its entry to
    /// lapse; then releases the lock if a release handed it over to that
    /// waiter before it left (in that order: once out of the queue, no
    /// release can hand the lock to it any more). Only the waiter's own entry
    /// and lock are touched; if this never runs, both lapse by themselves
    /// within the queue expiry.
    pub(crate) fn leave_queue_in_background(&self, key: String, owner: String, claim: String) {
        let lock = self.clone();
        self.in_background(async move {
            let id = format!("{:016x}", rand::random::<u64>());
            let left = match lock.memory() {
                Some(memory) => {
                    memory.leave_queue(&key, &claim);
                    Ok(())
                }
                None => {
                    let leave = lock.collection().update_one(
                        query::queued_as(&key, &claim),
                        query::leave_queue(&claim, &id),
                    );
                    lock.bounded(&key, lock.operation_timeout(), async {
                        leave.await?;
                        Ok(())
                    })
                    .await
                }
            };
            let released = match left {
                Ok(_) => {
                    let filter = query::by_claim(&key, &owner, &claim);
                    lock.release_where(&key, filter, 0, HandOver::ToHead)
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = released {
                tracing::debug!(%key, %error, "mongolock could not leave the queue; the entry will lapse");
            }
        });
    }

    /// Waits until the releases started in the background (by guards dropped
    /// unreleased, by `#[mongo_locked]` functions whose future was dropped)
    /// are done, for at most `within`; `true` if none is left. Call it before
    /// the runtime shuts down, at the end of `main`: a runtime that ends
    /// drops the tasks it has not run, and a release that never ran leaves
    /// the lock taken until its lease runs out. Each release is bounded by
    /// the [operation timeout](Self::with_operation_timeout).
    ///
    /// ```no_run
    /// # async fn demo(lock: mongolock::MongoLock) {
    /// use std::time::Duration;
    /// let guard = lock.acquire("job").await;
    /// drop(guard); // released in the background
    /// lock.finish_releases(Duration::from_secs(5)).await;
    /// # }
    /// ```
    pub async fn finish_releases(&self, within: Duration) -> bool {
        self.releases().wait_idle(within).await
    }
}

/// How long a background release keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// One release.
    Done,
    /// Until it releases something, within the operation timeout.
    Found,
}

/// The pending [`MongoLock::release`](crate::MongoLock::release). Await it for a `bool`.
#[must_use = "a release does nothing until awaited"]
#[derive(Debug)]
pub struct Release {
    lock: MongoLock,
    key: String,
    owner: String,
}

impl Release {
    pub(crate) fn new(lock: MongoLock, key: String, owner: String) -> Self {
        Self { lock, key, owner }
    }
}

impl IntoFuture for Release {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<Result<bool>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            validate::holder(&self.key, &self.owner)?;
            self.lock
                .release_held(&self.key, &self.owner, None, 0, HandOver::Never)
                .await
        })
    }
}
