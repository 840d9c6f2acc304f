//! A waiter's registration for one key: its wake-ups and the lock a
//! release hands over to it.

use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::{Waiter, Wakeups};
use crate::info::LockInfo;

/// A waiter's registration for one key.
pub(crate) struct Interest {
    pub(super) wakeups: Arc<Wakeups>,
    pub(super) key: String,
    pub(super) id: u64,
    pub(super) notify: Arc<Notify>,
}

impl Interest {
    /// A wake-up for this waiter. Enable it before the attempt whose
    /// failure leads to a sleep, so that a release in between is not missed.
    ///
    /// A release wakes at most one waiter of this `MongoLock`: the queue's
    /// head if it is here, else (no queue) the oldest waiter. One retry is
    /// enough to take a free lock; the rest would only load the server.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// The lock as a release handed it over to this waiter, if one did
    /// since the last call.
    pub(crate) fn take_handed_over(&self) -> Option<LockInfo> {
        self.with_waiter(|w| w.handed_over.take()).flatten()
    }

    /// This waiter now queues, as `claim`: releases that hand the lock to
    /// that claim hand it to this waiter.
    pub(crate) fn queue_as(&self, claim: &str) {
        self.with_waiter(|w| w.claim = Some(claim.to_owned()));
    }

    fn with_waiter<T>(&self, f: impl FnOnce(&mut Waiter) -> T) -> Option<T> {
        let mut keys = self.wakeups.keys();
        let waiter = keys
            .get_mut(&self.key)?
            .waiters
            .iter_mut()
            .find(|w| w.id == self.id)?;
        Some(f(waiter))
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut keys = self.wakeups.keys();
        if let Some(waiters) = keys.get_mut(&self.key) {
            waiters.waiters.retain(|w| w.id != self.id);
            if waiters.waiters.is_empty() {
                keys.remove(&self.key);
            }
        }
    }
}
