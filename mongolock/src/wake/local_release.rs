//! A release by this `MongoLock` between its write and its reply: its
//! change event is held back until the reply says whether the reply woke a
//! waiter here, so that one release wakes one waiter, not two.

use mongodb::bson::Document;

use super::{Own, Wakeups};
use crate::query::RELEASE_ID;

/// A release by this `MongoLock` under way; see
/// [`Wakeups::releasing_here`].
pub(crate) struct LocalRelease<'a> {
    pub(super) wakeups: &'a Wakeups,
    pub(super) key: String,
    pub(super) id: String,
    pub(super) expected: bool,
}

impl LocalRelease<'_> {
    /// The id the release writes into the lock document.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The release took effect, leaving `doc` (the reply of
    /// [`crate::query::release_update`]): hand the lock over or wake the
    /// waiter here whose turn it is, if any.
    pub(crate) fn released_here(mut self, doc: &Document) {
        if self.expected {
            let mut keys = self.wakeups.keys();
            if let Some(waiters) = keys.get_mut(&self.key) {
                let mine = waiters
                    .own_releases
                    .iter()
                    .position(|(id, _)| *id == self.id);
                match mine.map(|at| (at, &waiters.own_releases[at].1)) {
                    Some((at, Own::EventFirst(..))) => {
                        waiters.own_releases.remove(at);
                    }
                    Some((at, _)) => waiters.own_releases[at].1 = Own::Replied,
                    None => {}
                }
            }
        }
        self.expected = false;
        self.wakeups
            .released(&self.key, doc.get_str(RELEASE_ID).ok(), Some(doc));
    }
}

impl Drop for LocalRelease<'_> {
    /// The release did not take effect, or its reply was lost: its event,
    /// if one came already, is delivered now; one that comes later is
    /// delivered as any event is.
    fn drop(&mut self) {
        if !self.expected {
            return;
        }
        let held = {
            let mut keys = self.wakeups.keys();
            let Some(waiters) = keys.get_mut(&self.key) else {
                return;
            };
            let Some(at) = waiters
                .own_releases
                .iter()
                .position(|(id, _)| *id == self.id)
            else {
                return;
            };
            match waiters.own_releases.remove(at) {
                Some((_, Own::EventFirst(id, doc))) => Some((id, doc)),
                _ => None,
            }
        };
        if let Some((id, doc)) = held {
            self.wakeups
                .released(&self.key, id.as_deref(), doc.as_ref());
        }
    }
}
