//! Waking waiters when the key they want is released: one change stream per
//! `MongoLock`, shared by all its waiters. The stream only makes waiting
//! faster and cheaper; correctness never depends on it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mongodb::bson::Document;
use mongodb::Collection;
use tokio::sync::{watch, Notify};

mod interest;
mod local_release;
mod marks;
mod stream;

pub(crate) use interest::Interest;
pub(crate) use local_release::LocalRelease;
use marks::{Head, Marks};
pub use stream::release_events;
use stream::StreamTask;

use crate::info::LockInfo;
use crate::query::{CLAIM, RELEASE_ID, TOKEN};

/// How many of its own releases per key a process remembers, to hold back
/// their change events. Their ids are unique, so an id that is never seen
/// again (its event went to another process) does no harm until it drops out.
const OWN_RELEASES: usize = 64;

const NOT_STARTED: u8 = 0;
const OPENING: u8 = 1;
const OPEN: u8 = 2;
const DOWN: u8 = 3;
const UNAVAILABLE: u8 = 4;

/// The waiters of one `MongoLock`, by key, and the stream that wakes them.
#[derive(Debug)]
pub(crate) struct Wakeups {
    /// Per key: the waiters and their wake-ups.
    keys: Mutex<HashMap<String, KeyWaiters>>,
    status: AtomicU8,
    enabled: bool,
    /// Dropped with the `MongoLock`, which stops the stream task.
    shutdown: watch::Sender<()>,
    /// This `MongoLock`'s name in queue entries: a release whose queue head
    /// carries it is this process's to act on.
    tag: String,
    next_id: AtomicU64,
    /// Whether a waiter here may wait outside any queue (unfair, or a full
    /// queue): only then does the stream pass releases that leave no queue.
    /// Once set, it stays.
    wide: AtomicBool,
    /// Tells the stream task to reopen with the wide filter.
    widen: Arc<Notify>,
    /// How long the stream stays open with no waiter.
    idle_close: Duration,
}

/// The waiters of one key.
#[derive(Debug, Default)]
struct KeyWaiters {
    /// Oldest first.
    waiters: Vec<Waiter>,
    /// Releases by this `MongoLock`, by id, whose waiter it wakes directly
    /// from the reply: their change events are not delivered again, so one
    /// release wakes one waiter of this process, not two.
    own_releases: VecDeque<(String, Own)>,
}

/// Where a release by this `MongoLock` stands between its reply and its
/// change event, which may come in either order, or the reply not at all.
#[derive(Debug)]
enum Own {
    /// Neither has come yet.
    Pending,
    /// The event came first: held until the reply says whether the release
    /// woke a waiter here (then it is dropped) or never came (then it is
    /// delivered, so a release whose reply was lost still wakes).
    EventFirst(Option<String>, Option<Document>),
    /// The reply came and woke a waiter here: the event is dropped.
    Replied,
}

impl KeyWaiters {
    /// The fair waiter queued with `claim`, if it is still here.
    fn queued_as(&mut self, claim: &str) -> Option<&mut Waiter> {
        self.waiters
            .iter_mut()
            .find(|w| w.claim.as_deref() == Some(claim))
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// A fair waiter's claim, as in its queue entry.
    claim: Option<String>,
    notify: Arc<Notify>,
    /// The lock, if a release handed it over to this waiter.
    handed_over: Option<LockInfo>,
}

impl Wakeups {
    pub(crate) fn new(enabled: bool, idle_close: Duration) -> Self {
        Self {
            keys: Mutex::default(),
            status: AtomicU8::new(NOT_STARTED),
            enabled,
            shutdown: watch::Sender::new(()),
            tag: format!("{:016x}", rand::random::<u64>()),
            next_id: AtomicU64::new(0),
            wide: AtomicBool::new(false),
            widen: Arc::new(Notify::new()),
            idle_close,
        }
    }

    /// A waiter here found the lock taken without being queued: from now on
    /// the stream also passes releases that leave no queue, which it needs
    /// to hear of. (A queued waiter is woken by the releases that hand it
    /// the lock or leave it first in the queue; the others would only cost
    /// every process with a stream open one event per release.) An open
    /// stream is reopened where it stood, so no release is missed.
    pub(crate) fn widen(&self) {
        if !self.wide.swap(true, Ordering::AcqRel) {
            self.widen.notify_one();
        }
    }

    /// This `MongoLock`'s name in queue entries.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether no waiter is registered, for any key.
    fn idle(&self) -> bool {
        self.keys().is_empty()
    }

    /// Whether waiters can rely on the stream to hear of releases.
    pub(crate) fn stream_open(&self) -> bool {
        self.status.load(Ordering::Acquire) == OPEN
    }

    /// The waiters by key. A panic elsewhere while holding the lock leaves
    /// plain lists behind, still usable.
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyWaiters>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the shared stream, if it is not running: called by a waiter
    /// that found its lock taken, so that a process that never waits never
    /// watches. When the stream opens, every waiter looks again, so a
    /// release before that is not missed.
    pub(crate) fn watch(self: &Arc<Self>, collection: &Collection<Document>) {
        if self.enabled
            && self
                .status
                .compare_exchange(NOT_STARTED, OPENING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            StreamTask::spawn(self, collection);
        }
    }

    /// Registers a waiter of `key` (with its claim if it queues).
    pub(crate) fn subscribe(self: &Arc<Self>, key: &str, claim: Option<&str>) -> Interest {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.keys()
            .entry(key.to_owned())
            .or_default()
            .waiters
            .push(Waiter {
                id,
                claim: claim.map(str::to_owned),
                notify: notify.clone(),
                handed_over: None,
            });
        Interest {
            wakeups: self.clone(),
            key: key.to_owned(),
            id,
            notify,
        }
    }

    /// Called before this `MongoLock` releases `key`, with the id the
    /// release writes. If it has waiters of `key` and the stream is open,
    /// the release's change event is to wake nobody, since
    /// [`released_here`](LocalRelease::released_here) wakes a waiter
    /// directly. Recorded before the write, because the event may arrive
    /// before the write's reply.
    ///
    /// `emits_event` is false for a release into a minimum hold: the lock
    /// stays `locked` until the hold ends, and no event reports it.
    pub(crate) fn releasing_here(&self, key: &str, emits_event: bool) -> LocalRelease<'_> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut keys = self.keys();
        let expected = match keys.get_mut(key) {
            Some(waiters) if emits_event && self.stream_open() => {
                if waiters.own_releases.len() >= OWN_RELEASES {
                    waiters.own_releases.pop_front();
                }
                waiters.own_releases.push_back((id.clone(), Own::Pending));
                true
            }
            _ => false,
        };
        LocalRelease {
            wakeups: self,
            key: key.to_owned(),
            id,
            expected,
        }
    }

    /// A release event for `key`, with the release's id and the lock
    /// document as the stream looked it up: acted on as
    /// [`released`](Self::released), unless it reports a release by this
    /// `MongoLock` that acts on its reply (see [`Own`]).
    fn event(&self, key: &str, release_id: Option<&str>, doc: Option<&Document>) {
        {
            let mut keys = self.keys();
            let Some(waiters) = keys.get_mut(key) else {
                return;
            };
            let own = release_id.map(|id| Marks::of(id).own);
            if let Some(at) =
                own.and_then(|id| waiters.own_releases.iter().position(|(mine, _)| mine == id))
            {
                match waiters.own_releases[at].1 {
                    Own::Pending => {
                        waiters.own_releases[at].1 =
                            Own::EventFirst(release_id.map(str::to_owned), doc.cloned());
                    }
                    Own::EventFirst(..) | Own::Replied => {
                        waiters.own_releases.remove(at);
                    }
                }
                return;
            }
        }
        self.released(key, release_id, doc);
    }

    /// A release of `key` took effect, leaving `doc` (see
    /// [`changed_view`](marks::changed_view) for an event that carries only
    /// the changed fields). If it handed the lock over to a waiter here,
    /// that waiter gets it; if to another process, nobody here is woken
    /// unless a waiter here is the queue's head now; if it left the lock
    /// free, the waiter whose turn it is is woken.
    fn released(&self, key: &str, release_id: Option<&str>, doc: Option<&Document>) {
        let Some(process) = release_id.and_then(|id| Marks::of(id).granted_to) else {
            self.wake(key, Head::of(doc).as_ref());
            return;
        };
        if process != self.tag {
            // Handed to another process's waiter: this process's waiter
            // may be the queue's new head, and wait for that holder now.
            if let Some(head) = Head::of(doc) {
                self.wake(key, Some(&head));
            }
            return;
        }
        // Only the document as that very release left it says who holds the
        // lock now; one that shows another release's id is old news.
        let Some(current) = doc.filter(|d| d.get_str(RELEASE_ID).ok() == release_id) else {
            return;
        };
        let Ok(claim) = current.get_str(CLAIM) else {
            return;
        };
        // A new holder always has a new token; without one (a change event
        // that left it out) the waiter is only woken, to ask the server.
        let info = current
            .get_i64(TOKEN)
            .ok()
            .and_then(|_| LockInfo::from_document(current).ok());
        let mut keys = self.keys();
        match keys
            .get_mut(key)
            .and_then(|waiters| waiters.queued_as(claim))
        {
            Some(waiter) => {
                tracing::trace!(key, "mongolock handing the lock over to a waiter");
                if info.is_some() {
                    waiter.handed_over = info;
                }
                waiter.notify.notify_one();
            }
            // It gave up: its leaving the queue releases what it was given.
            None => tracing::debug!(key, "mongolock lock handed over to a waiter that left"),
        }
    }

    /// Wakes the waiter of `key` whose turn it is: the queue's head if it
    /// is this process's (or, gone, the oldest waiter here); nobody if the
    /// head is another process's; the oldest waiter if there is no queue.
    fn wake(&self, key: &str, head: Option<&Head>) {
        let mut keys = self.keys();
        let Some(waiters) = keys.get_mut(key) else {
            return;
        };
        let chosen = match head {
            Some(head) if head.process != self.tag => return,
            Some(head) => match waiters.queued_as(&head.waiter) {
                Some(waiter) => Some(waiter),
                None => waiters.waiters.first_mut(),
            },
            None => waiters.waiters.first_mut(),
        };
        if let Some(waiter) = chosen {
            tracing::trace!(key, "mongolock waking a waiter");
            waiter.notify.notify_one();
        }
    }

    /// Wakes every waiter, so they notice the stream is down and poll, or
    /// look again now that it is open. Their own releases are forgotten:
    /// across a reopen their events may be lost.
    fn wake_all(&self) {
        let mut keys = self.keys();
        for waiters in keys.values_mut() {
            waiters.own_releases.clear();
            for waiter in &waiters.waiters {
                waiter.notify.notify_waiters();
            }
        }
    }

    /// Records the stream's state. Waiters are woken when it opens (a
    /// release may have happened while it was not, and nobody would hear of
    /// it) and when it goes down (they must poll now).
    fn set_status(&self, status: u8) {
        let previous = self.status.swap(status, Ordering::AcqRel);
        if previous != status && (status == OPEN || previous == OPEN) {
            self.wake_all();
        }
    }
}

/// Held by the stream task. Dropped when the task ends in any way, also
/// when its runtime shuts down under it (a `MongoLock` kept in a static and
/// used from several runtimes): the stream is then marked not started, so
/// the next waiter starts a new one, and waiters poll meanwhile.
struct TaskAlive(std::sync::Weak<Wakeups>);

impl Drop for TaskAlive {
    fn drop(&mut self) {
        if let Some(wakeups) = self.0.upgrade() {
            if wakeups.status.load(Ordering::Acquire) != UNAVAILABLE {
                wakeups.set_status(NOT_STARTED);
            }
        }
    }
}

#[cfg(test)]
mod tests;
