//! Waking waiters when the key they want is released: one change stream per
//! `MongoLock`, shared by all its waiters. The stream only makes waiting
//! faster and cheaper; correctness never depends on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::Collection;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};

/// How long to wait before reopening a broken stream.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

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
}

/// The waiters of one key.
#[derive(Debug)]
struct KeyWaiters {
    notify: Arc<Notify>,
    /// How many interests share it.
    interests: usize,
    /// Releases by this `MongoLock` whose waiter is woken directly: their
    /// change events are not delivered again, so one release wakes one
    /// waiter of this process, not two.
    local_releases: u32,
}

/// A waiter's registration for one key.
pub(crate) struct Interest {
    wakeups: Arc<Wakeups>,
    key: String,
    notify: Arc<Notify>,
}

impl Interest {
    /// A wake-up for this key. Enable it before the attempt whose failure
    /// leads to a sleep, so that a release in between is not missed.
    ///
    /// A release wakes one waiter of this `MongoLock`: one retry is enough
    /// to take a free lock, and the rest would only load the server. If that
    /// waiter loses to another process, the next release wakes the next.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut keys = self.wakeups.keys();
        if let Some(waiters) = keys.get_mut(&self.key) {
            waiters.interests -= 1;
            if waiters.interests == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

impl Wakeups {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            keys: Mutex::default(),
            status: AtomicU8::new(NOT_STARTED),
            enabled,
            shutdown: watch::Sender::new(()),
        }
    }

    /// Whether waiters can rely on the stream to hear of releases.
    pub(crate) fn stream_open(&self) -> bool {
        self.status.load(Ordering::Acquire) == OPEN
    }

    /// The waiters by key. A panic elsewhere while holding the lock leaves
    /// plain counters behind, still usable.
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyWaiters>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `key`, starting the shared stream on first use.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        collection: &Collection<Document>,
        key: &str,
    ) -> Interest {
        if self.enabled
            && self
                .status
                .compare_exchange(NOT_STARTED, OPENING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let task = StreamTask {
                wakeups: Arc::downgrade(self),
                collection: collection.clone(),
                shutdown: self.shutdown.subscribe(),
                _alive: TaskAlive(Arc::downgrade(self)),
            };
            tokio::spawn(task.run());
        }
        let mut keys = self.keys();
        let waiters = keys.entry(key.to_owned()).or_insert_with(|| KeyWaiters {
            notify: Arc::new(Notify::new()),
            interests: 0,
            local_releases: 0,
        });
        waiters.interests += 1;
        Interest {
            wakeups: self.clone(),
            key: key.to_owned(),
            notify: waiters.notify.clone(),
        }
    }

    /// Called before this `MongoLock` releases `key`: if it has waiters of
    /// `key` and the stream is open, the release's change event is to wake
    /// nobody, since [`released_here`](Self::released_here) wakes a waiter
    /// directly. Set before the write, because the event may arrive before
    /// the write's reply.
    ///
    /// `emits_event` is false for a release into a minimum hold: the lock
    /// stays `locked` until the hold ends, and no event reports it.
    pub(crate) fn releasing_here(&self, key: &str, emits_event: bool) -> LocalRelease<'_> {
        let mut keys = self.keys();
        let expected = match keys.get_mut(key) {
            Some(waiters) if emits_event && self.stream_open() => {
                waiters.local_releases += 1;
                true
            }
            _ => false,
        };
        LocalRelease {
            wakeups: self,
            key: key.to_owned(),
            expected,
        }
    }

    /// A change event for `key`: wakes one waiter, unless it reports a
    /// release whose waiter this `MongoLock` woke directly.
    fn event(&self, key: &str) {
        let mut keys = self.keys();
        if let Some(waiters) = keys.get_mut(key) {
            if waiters.local_releases > 0 {
                waiters.local_releases -= 1;
                return;
            }
            tracing::trace!(key, "mongolock waking a waiter");
            waiters.notify.notify_one();
        }
    }

    /// Wakes one waiter of `key`.
    fn wake(&self, key: &str) {
        let keys = self.keys();
        if let Some(waiters) = keys.get(key) {
            tracing::trace!(key, "mongolock waking a waiter");
            waiters.notify.notify_one();
        }
    }

    /// Wakes every waiter, so they notice the stream is down and poll, or
    /// look again now that it is open. Pending local releases are
    /// forgotten: across a reopen their events may be lost, and a remote
    /// release must never be taken for one.
    fn wake_all(&self) {
        let mut keys = self.keys();
        for waiters in keys.values_mut() {
            waiters.local_releases = 0;
            waiters.notify.notify_waiters();
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

/// A release by this `MongoLock` under way; see
/// [`Wakeups::releasing_here`].
pub(crate) struct LocalRelease<'a> {
    wakeups: &'a Wakeups,
    key: String,
    expected: bool,
}

impl LocalRelease<'_> {
    /// The release took effect: wake one waiter of this process now.
    pub(crate) fn released_here(mut self) {
        self.wakeups.wake(&self.key);
        self.expected = false;
    }
}

impl Drop for LocalRelease<'_> {
    /// The release did not take effect (or its outcome is unknown): its
    /// event, if any, wakes a waiter as any event does.
    fn drop(&mut self) {
        if self.expected {
            let mut keys = self.wakeups.keys();
            if let Some(waiters) = keys.get_mut(&self.key) {
                waiters.local_releases = waiters.local_releases.saturating_sub(1);
            }
        }
    }
}

struct StreamTask {
    wakeups: std::sync::Weak<Wakeups>,
    collection: Collection<Document>,
    shutdown: watch::Receiver<()>,
    /// Part of the task from its creation, so that it is dropped also with
    /// a task that a runtime shutting down never polled.
    _alive: TaskAlive,
}

/// The events after which a waiter may take a lock: a release (which sets
/// `locked: false`, as the Python package's does too; `force_release` also
/// during a minimum hold) and a deleted document. Acquisitions, takeovers
/// and renewals wake nobody: a waiter could not take the lock after them.
///
/// Written for both shapes of events: MongoDB 5.0+ reports pipeline updates
/// as `update` with the changed fields, 4.4 as `replace` with the whole
/// document (SERVER-42116), so an acquisition or renewal there is a
/// `replace` of a document with `locked: true`.
pub fn release_events() -> Vec<Document> {
    let locked = crate::query::PY_LOCKED;
    vec![
        doc! { "$match": { "$or": [
            { "operationType": "delete" },
            { format!("updateDescription.updatedFields.{locked}"): false },
            { "operationType": "replace", format!("fullDocument.{locked}"): false },
        ] } },
        doc! { "$project": { "operationType": 1, "documentKey": 1 } },
    ]
}

/// Server errors that mean "no change streams here": not a replica set or
/// sharded cluster (40573), not authorized (13), unsupported (115, 40324).
fn unsupported(error: &mongodb::error::Error) -> bool {
    matches!(
        error.kind.as_ref(),
        mongodb::error::ErrorKind::Command(c) if matches!(c.code, 13 | 115 | 40324 | 40573)
    )
}

impl StreamTask {
    async fn run(mut self) {
        // Where to pick up after a broken stream, so that no release between
        // the break and the reopen goes unseen.
        let mut resume = None;
        loop {
            let opened = self
                .collection
                .watch()
                .pipeline(release_events())
                .resume_after(resume.clone())
                .await;
            let Some(wakeups) = self.wakeups.upgrade() else {
                return;
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(error) if unsupported(&error) => {
                    tracing::debug!(%error, "mongolock: change streams unavailable; waiters will poll");
                    wakeups.set_status(UNAVAILABLE);
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "mongolock: cannot open the change stream; retrying");
                    // The token may be too old to resume from; waiters
                    // re-check when the new stream opens.
                    resume = None;
                    wakeups.set_status(DOWN);
                    drop(wakeups);
                    if self.pause().await {
                        return;
                    }
                    continue;
                }
            };
            wakeups.set_status(OPEN);
            drop(wakeups);
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = self.shutdown.changed() => return,
                };
                let Some(wakeups) = self.wakeups.upgrade() else {
                    return;
                };
                match event {
                    Some(Ok(event)) => {
                        resume = Some(event.id.clone());
                        if let Some(key) = event
                            .document_key
                            .as_ref()
                            .and_then(|k| k.get_str("_id").ok())
                        {
                            wakeups.event(key);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "mongolock: change stream failed; reopening");
                        wakeups.set_status(DOWN);
                        break;
                    }
                    None => {
                        wakeups.set_status(DOWN);
                        break;
                    }
                }
            }
            if self.pause().await {
                return;
            }
        }
    }

    /// Waits before reopening; true if the lock was dropped meanwhile.
    async fn pause(&mut self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(REOPEN_DELAY) => self.wakeups.strong_count() == 0,
            _ = self.shutdown.changed() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A collection handle that is never used: the client connects lazily.
    async fn unused_collection() -> Collection<Document> {
        let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:9")
            .await
            .unwrap();
        client.database("unused").collection("lock")
    }

    #[tokio::test]
    async fn waiters_recheck_when_the_stream_opens() {
        // A release before the stream is open is heard by nobody: the
        // waiters must look again once it is open, and when it reopens.
        let wakeups = Arc::new(Wakeups::new(false));
        let interest = wakeups.subscribe(&unused_collection().await, "job");
        for status in [OPEN, DOWN, OPEN] {
            let mut woken = std::pin::pin!(interest.notified());
            woken.as_mut().enable();
            wakeups.set_status(status);
            assert!(woken.now_or_never().is_some(), "not woken at {status}");
        }
    }

    /// Regression: the status was reset only by a task that had run, and a
    /// runtime that shut down before polling it left the stream "open".
    #[test]
    fn stream_that_died_with_its_runtime_is_not_reported_open() {
        let wakeups = Arc::new(Wakeups::new(true));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let _interest = wakeups.subscribe(&unused_collection().await, "job");
            // As if the stream had opened.
            wakeups.set_status(OPEN);
            assert!(wakeups.stream_open());
        });
        drop(runtime);
        assert!(
            !wakeups.stream_open(),
            "waiters would neither be woken nor poll"
        );
        assert_eq!(wakeups.status.load(Ordering::Acquire), NOT_STARTED);
    }

    #[tokio::test]
    async fn a_local_release_wakes_one_waiter_here_not_two() {
        let wakeups = Arc::new(Wakeups::new(false));
        let interest = wakeups.subscribe(&unused_collection().await, "job");
        wakeups.set_status(OPEN);
        let woken_by = |act: Box<dyn FnOnce() + '_>| {
            let mut notified = std::pin::pin!(interest.notified());
            notified.as_mut().enable();
            act();
            notified.now_or_never().is_some()
        };
        // The release's event may come before the write's reply: it is not
        // delivered; the direct wake after the reply is.
        let release = wakeups.releasing_here("job", true);
        assert!(!woken_by(Box::new(|| wakeups.event("job"))), "woken twice");
        assert!(woken_by(Box::new(|| release.released_here())));
        // The next event is someone else's release: delivered.
        assert!(woken_by(Box::new(|| wakeups.event("job"))));
        // A release that did not happen leaves events alone.
        drop(wakeups.releasing_here("job", true));
        assert!(woken_by(Box::new(|| wakeups.event("job"))));
        // A release into a minimum hold has no event to hold back.
        wakeups.releasing_here("job", false).released_here();
        assert!(woken_by(Box::new(|| wakeups.event("job"))));
        // A reopened stream forgets pending releases: their events may be lost.
        let pending = wakeups.releasing_here("job", true);
        wakeups.set_status(DOWN);
        wakeups.set_status(OPEN);
        assert!(woken_by(Box::new(|| wakeups.event("job"))));
        drop(pending);
    }
}
