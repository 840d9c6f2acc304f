//! The background renewal that keeps a guard's lease alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lease::{Lease, TAKEN};
use crate::mongo_lock::MongoLock;

/// What a renewal task needs to know.
pub(crate) struct Renewal {
    pub(crate) lock: MongoLock,
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) token: i64,
    pub(crate) lease: Duration,
    pub(crate) interval: Duration,
    /// When to renew first.
    pub(crate) first: Instant,
    /// Stop after the first confirmed renewal: a lock handed over with a
    /// lease shorter than asked for is extended once to the whole lease.
    pub(crate) once: bool,
}

impl Renewal {
    /// Extends the lease at `first`, then every `interval` (unless `once`)
    /// until the task is aborted or the lease is lost. Failed renewals are
    /// retried with backoff while the lease lasts; only a foreign holder or
    /// a passed deadline loses it.
    pub(crate) fn spawn(self, state: Arc<Lease>) -> JoinHandle<()> {
        tokio::spawn(async move { self.run(&state).await })
    }

    async fn run(self, state: &Lease) {
        let lease_millis = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let mut next = self.first;
        let mut failures = 0_u32;
        loop {
            tokio::time::sleep_until(next.min(state.deadline())).await;
            if state.lost_reason().is_some() {
                break;
            }
            let sent = Instant::now();
            let remaining = state.deadline().saturating_duration_since(sent);
            let renewal =
                self.lock
                    .touch_held(&self.key, &self.owner, Some(self.token), lease_millis);
            match tokio::time::timeout(remaining, renewal).await {
                Ok(Ok(Some(_))) => {
                    state.extend(sent, self.lock.local_lease(self.lease));
                    failures = 0;
                    next = sent + self.interval;
                    crate::metrics::renewed(&self.key);
                    tracing::debug!(key = %self.key, owner = %self.owner, "mongolock renewed");
                    if self.once {
                        return;
                    }
                }
                Ok(Ok(None)) => {
                    state.mark_lost(TAKEN);
                    break;
                }
                Ok(Err(error)) => {
                    let delay = self.lock.backoff().delay(failures);
                    failures = failures.saturating_add(1);
                    next = Instant::now() + delay;
                    tracing::debug!(key = %self.key, owner = %self.owner, %error, ?delay, "mongolock renewal failed; retrying within the lease");
                }
                Err(_) => {
                    state.lost_reason();
                    break;
                }
            }
        }
        if let Some(reason) = state.lost_reason() {
            crate::metrics::lost(&self.key);
            tracing::warn!(key = %self.key, owner = %self.owner, reason, "mongolock lock lost");
        }
    }
}
