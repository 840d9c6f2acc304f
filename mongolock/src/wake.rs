//! Waking waiters when the key they want is released: one change stream per
//! `MongoLock`, shared by all its waiters. The stream only makes waiting
//! faster and cheaper; correctness never depends on it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::FullDocumentType;
use mongodb::Collection;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};

use crate::info::LockInfo;
use crate::query::{
    CLAIM, GRANTED_TO, PROCESS, PY_LOCKED, QUEUE, RELEASE_ID, RELEASE_VIEW, WAITER,
};

/// How long to wait before reopening a broken stream.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// How long the server holds a `getMore` open without an event to return
/// (its `maxAwaitTimeMS`): what an idle stream costs, one command per this
/// much time. A release is delivered as soon as it happens, whatever this is.
const MAX_AWAIT: Duration = Duration::from_secs(10);

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
    /// Ids of releases by this `MongoLock` whose waiter it woke directly:
    /// their change events are not delivered again, so one release wakes
    /// one waiter of this process, not two.
    own_releases: VecDeque<String>,
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

/// The head of a key's queue: whose turn it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    process: String,
    waiter: String,
}

impl Head {
    /// The first entry of a lock document's queue, if any.
    pub(crate) fn of(doc: Option<&Document>) -> Option<Self> {
        let entry = doc?.get_array(QUEUE).ok()?.first()?.as_document()?;
        Some(Self {
            process: entry.get_str(PROCESS).ok()?.to_owned(),
            waiter: entry.get_str(WAITER).ok()?.to_owned(),
        })
    }
}

/// A waiter's registration for one key.
pub(crate) struct Interest {
    wakeups: Arc<Wakeups>,
    key: String,
    id: u64,
    notify: Arc<Notify>,
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
        let mut keys = self.wakeups.keys();
        keys.get_mut(&self.key)?
            .waiters
            .iter_mut()
            .find(|w| w.id == self.id)?
            .handed_over
            .take()
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
            let task = StreamTask {
                wakeups: Arc::downgrade(self),
                collection: collection.clone(),
                shutdown: self.shutdown.subscribe(),
                widen: self.widen.clone(),
                _alive: TaskAlive(Arc::downgrade(self)),
            };
            tokio::spawn(task.run());
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
                waiters.own_releases.push_back(id.clone());
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
    /// `MongoLock` that already acted on its reply.
    fn event(&self, key: &str, release_id: Option<&str>, doc: Option<&Document>) {
        {
            let mut keys = self.keys();
            let Some(waiters) = keys.get_mut(key) else {
                return;
            };
            let own = release_id.map(|id| id.split(GRANTED_TO).next().unwrap_or(id));
            if let Some(at) =
                own.and_then(|id| waiters.own_releases.iter().position(|mine| mine == id))
            {
                waiters.own_releases.remove(at);
                return;
            }
        }
        self.released(key, release_id, doc);
    }

    /// A release of `key` took effect, leaving `doc`. If it handed the lock
    /// over to a waiter here, that waiter gets it; if to another process,
    /// nobody here is woken; if it left the lock free, the waiter whose turn
    /// it is is woken.
    fn released(&self, key: &str, release_id: Option<&str>, doc: Option<&Document>) {
        let Some((_, process)) = release_id.and_then(|id| id.split_once(GRANTED_TO)) else {
            self.wake(key, Head::of(doc).as_ref());
            return;
        };
        if process != self.tag {
            return;
        }
        // Only the document as that very release left it says who holds the
        // lock now; a later one (looked up after another release) is old news.
        let current = doc.filter(|d| d.get_str(RELEASE_ID).ok() == release_id);
        let Some((claim, info)) = current.and_then(|d| {
            let info = LockInfo::from_document(d).ok()?;
            Some((d.get_str(CLAIM).ok()?, info))
        }) else {
            return;
        };
        let mut keys = self.keys();
        match keys
            .get_mut(key)
            .and_then(|waiters| waiters.queued_as(claim))
        {
            Some(waiter) => {
                tracing::trace!(key, "mongolock handing the lock over to a waiter");
                waiter.handed_over = Some(info);
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

/// A release by this `MongoLock` under way; see
/// [`Wakeups::releasing_here`].
pub(crate) struct LocalRelease<'a> {
    wakeups: &'a Wakeups,
    key: String,
    id: String,
    expected: bool,
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
        self.wakeups
            .released(&self.key, doc.get_str(RELEASE_ID).ok(), Some(doc));
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
                waiters.own_releases.retain(|id| *id != self.id);
            }
        }
    }
}

struct StreamTask {
    wakeups: std::sync::Weak<Wakeups>,
    collection: Collection<Document>,
    shutdown: watch::Receiver<()>,
    widen: Arc<Notify>,
    /// Part of the task from its creation, so that it is dropped also with
    /// a task that a runtime shutting down never polled.
    _alive: TaskAlive,
}

/// The events after which a waiter of the process tagged `tag` may take a
/// lock: a release (which sets `locked: false`, as the Python package's does
/// too; `force_release` also during a minimum hold) and a deleted document,
/// and of the releases only those that leave a queue headed by this process
/// or (if `wide`, for waiters outside any queue) no queue; and the releases that handed the lock over to a waiter of
/// this process (their release id ends in its tag), whose looked-up
/// document tells that waiter its lock; and releases by the Python package
/// (a replacement without a release id, which drops the queue), which every
/// process hears. Acquisitions, takeovers, renewals
/// and queue updates wake nobody: a waiter could not take the lock after
/// them; nor does a release whose next holder waits in another process.
///
/// Written for both shapes of events: MongoDB 5.0+ reports pipeline updates
/// as `update` with the changed fields, 4.4 as `replace` with the whole
/// document (SERVER-42116), so an acquisition or renewal there is a
/// `replace` of a document with `locked: true`. The queue is read from the
/// document as the stream looks it up (`updateLookup`), which may be a
/// little later than the release: at worst a waiter is woken whose turn
/// has just passed, and finds the lock taken.
pub fn release_events(tag: &str, wide: bool) -> Vec<Document> {
    let handed_here = doc! { "$regex": format!("{GRANTED_TO}{tag}$") };
    let mut project = doc! {
        "operationType": 1,
        "documentKey": 1,
        "updateDescription": 1,
        "fullDocument._id": 1,
    };
    for field in RELEASE_VIEW {
        project.insert(format!("fullDocument.{field}"), 1);
    }
    let mut whose_turn = vec![doc! { format!("fullDocument.{QUEUE}.0.{PROCESS}"): tag }];
    if wide {
        whose_turn.push(doc! { format!("fullDocument.{QUEUE}.0"): { "$exists": false } });
    }
    vec![
        doc! { "$match": { "$or": [
            { "operationType": "delete" },
            { "$and": [
                { "$or": [
                    { format!("updateDescription.updatedFields.{PY_LOCKED}"): false },
                    { "operationType": "replace", format!("fullDocument.{PY_LOCKED}"): false },
                ] },
                { "$or": whose_turn },
            ] },
            { format!("updateDescription.updatedFields.{RELEASE_ID}"): &handed_here },
            { "operationType": "replace", format!("fullDocument.{RELEASE_ID}"): &handed_here },
            // A release by the Python package: it replaces the whole
            // document, our queue included, so whoever asks first may
            // take the lock, and every process is told.
            {
                "operationType": "replace",
                format!("fullDocument.{PY_LOCKED}"): false,
                format!("fullDocument.{RELEASE_ID}"): { "$exists": false },
            },
        ] } },
        doc! { "$project": project },
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
            let Some((tag, wide)) = self
                .wakeups
                .upgrade()
                .map(|w| (w.tag.clone(), w.wide.load(Ordering::Acquire)))
            else {
                return;
            };
            let opened = self
                .collection
                .watch()
                .pipeline(release_events(&tag, wide))
                .full_document(FullDocumentType::UpdateLookup)
                .max_await_time(MAX_AWAIT)
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
            // Where the stream starts (the server's first resume token),
            // before any `getMore`: a widening before the first event
            // resumes from here too.
            resume = stream.resume_token().or(resume);
            let idle_close = wakeups.idle_close;
            drop(wakeups);
            let mut widened = false;
            // Since when the stream has found no waiter, at each `getMore`.
            let mut idle_since = None;
            loop {
                // One `getMore` at a time (`next_if_any`), so that between
                // them the stream can say where it stands, also past events
                // the filter dropped: a stream reopened from there misses
                // nothing and replays nothing. (A `getMore` cut short
                // leaves the stream unusable, so it is dropped then.)
                let event = tokio::select! {
                    event = stream.next_if_any() => event,
                    _ = self.shutdown.changed() => return,
                    _ = self.widen.notified(), if !wide => {
                        widened = true;
                        break;
                    }
                };
                let Some(wakeups) = self.wakeups.upgrade() else {
                    return;
                };
                match event {
                    Ok(Some(event)) => {
                        if let Some(key) = event
                            .document_key
                            .as_ref()
                            .and_then(|k| k.get_str("_id").ok())
                        {
                            // The event's own id first: a looked-up
                            // document may already show a later release's.
                            let release_id = event
                                .update_description
                                .as_ref()
                                .and_then(|u| u.updated_fields.get_str(RELEASE_ID).ok())
                                .or_else(|| {
                                    event
                                        .full_document
                                        .as_ref()
                                        .and_then(|d| d.get_str(RELEASE_ID).ok())
                                });
                            wakeups.event(key, release_id, event.full_document.as_ref());
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(%error, "mongolock: change stream failed; reopening");
                        wakeups.set_status(DOWN);
                        break;
                    }
                }
                resume = stream.resume_token().or(resume);
                if !stream.is_alive() {
                    wakeups.set_status(DOWN);
                    break;
                }
                if !wakeups.idle() {
                    idle_since = None;
                } else if idle_since
                    .get_or_insert_with(tokio::time::Instant::now)
                    .elapsed()
                    >= idle_close
                {
                    // Ending the task closes the stream and marks it not
                    // started (`TaskAlive`), which wakes any waiter that
                    // registered since: it looks again and opens a new one.
                    tracing::debug!("mongolock: closing the change stream, no waiter left");
                    return;
                }
            }
            // Widening reopens at once, where the stream stood, and waiters
            // go on counting on it meanwhile. Without a position (a server
            // that gave no resume token yet) a release before the reopen
            // could go unseen, so the waiters look again now and once the
            // stream is open (the status leaves `OPEN` and comes back).
            if widened {
                if resume.is_none() {
                    if let Some(wakeups) = self.wakeups.upgrade() {
                        wakeups.set_status(OPENING);
                    }
                }
            } else if self.pause().await {
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
    use crate::query::{EXPIRES_AT, OWNER, TOKEN};
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
        let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
        let interest = wakeups.subscribe("job", None);
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
        let wakeups = Arc::new(Wakeups::new(true, Duration::ZERO));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let _interest = wakeups.subscribe("job", None);
            wakeups.watch(&unused_collection().await);
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

    /// Whether `act` wakes `interest`.
    fn wakes(interest: &Interest, act: impl FnOnce()) -> bool {
        let mut notified = std::pin::pin!(interest.notified());
        notified.as_mut().enable();
        act();
        notified.now_or_never().is_some()
    }

    /// A lock document whose queue is headed by `waiter` of `process`.
    fn headed_by(process: &str, waiter: &str) -> Document {
        doc! { QUEUE: [{ PROCESS: process, WAITER: waiter }] }
    }

    /// A lock document as a release that handed the lock over to `claim`
    /// of `process` left it.
    fn handed_to(process: &str, claim: &str, release_id: &str) -> Document {
        doc! {
            "_id": "job",
            OWNER: "next-owner",
            CLAIM: claim,
            TOKEN: 7_i64,
            EXPIRES_AT: mongodb::bson::DateTime::now(),
            RELEASE_ID: format!("{release_id}{GRANTED_TO}{process}"),
        }
    }

    #[tokio::test]
    async fn a_local_release_wakes_one_waiter_here_not_two() {
        let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
        let interest = wakeups.subscribe("job", None);
        wakeups.set_status(OPEN);
        let free = doc! {};
        // The release's event may come before the write's reply: it is not
        // delivered; the direct wake after the reply is.
        let release = wakeups.releasing_here("job", true);
        let id = release.id().to_owned();
        assert!(!wakes(&interest, || wakeups.event("job", Some(&id), None)));
        assert!(wakes(&interest, || release.released_here(&free)));
        // Someone else's release: delivered.
        assert!(wakes(&interest, || wakeups.event(
            "job",
            Some("other"),
            None
        )));
        // A release that did not happen leaves events alone.
        let failed = wakeups.releasing_here("job", true);
        let id = failed.id().to_owned();
        drop(failed);
        assert!(wakes(&interest, || wakeups.event("job", Some(&id), None)));
        // A release into a minimum hold has no event to hold back.
        let held = wakeups.releasing_here("job", false);
        let id = held.id().to_owned();
        held.released_here(&free);
        assert!(wakes(&interest, || wakeups.event("job", Some(&id), None)));
        // A reopened stream forgets its own releases: their events may be lost.
        let pending = wakeups.releasing_here("job", true);
        let id = pending.id().to_owned();
        wakeups.set_status(DOWN);
        wakeups.set_status(OPEN);
        assert!(wakes(&interest, || wakeups.event("job", Some(&id), None)));
        drop(pending);
    }

    #[tokio::test]
    async fn a_release_wakes_only_the_queue_head() {
        let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
        let first = wakeups.subscribe("job", Some("c1"));
        let second = wakeups.subscribe("job", Some("c2"));
        let here = wakeups.tag().to_owned();
        // The second in line here is the head: it alone is woken.
        let doc = headed_by(&here, "c2");
        assert!(!wakes(&first, || wakeups.event("job", None, Some(&doc))));
        assert!(wakes(&second, || wakeups.event("job", None, Some(&doc))));
        // Another process's head: nobody here.
        let doc = headed_by("elsewhere", "c1");
        assert!(!wakes(&first, || wakeups.event("job", None, Some(&doc))));
        let release = wakeups.releasing_here("job", true);
        let doc = headed_by("elsewhere", "x");
        assert!(!wakes(&first, || release.released_here(&doc)));
        // A head that left: the oldest waiter here looks.
        let doc = headed_by(&here, "gone");
        assert!(wakes(&first, || wakeups.event("job", None, Some(&doc))));
    }

    #[tokio::test]
    async fn a_release_that_hands_over_gives_the_lock_to_its_waiter_only() {
        let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
        let first = wakeups.subscribe("job", Some("c1"));
        let second = wakeups.subscribe("job", Some("c2"));
        wakeups.set_status(OPEN);
        let here = wakeups.tag().to_owned();
        // Handed over to the second waiter here, by another process.
        let doc = handed_to(&here, "c2", "r1");
        let id = doc.get_str(RELEASE_ID).unwrap().to_owned();
        assert!(wakes(&second, || wakeups.event(
            "job",
            Some(&id),
            Some(&doc)
        )));
        assert!(!wakes(&first, || {}), "only the waiter it was given to");
        assert!(first.take_handed_over().is_none());
        let given = second.take_handed_over().expect("handed over");
        assert_eq!(
            (given.token, given.owner.as_deref()),
            (7, Some("next-owner"))
        );
        assert!(second.take_handed_over().is_none(), "given once");
        // The looked-up document shows a later release: old news, nobody
        // is given anything.
        let later = handed_to(&here, "c2", "r2");
        assert!(!wakes(&second, || wakeups.event(
            "job",
            Some(&id),
            Some(&later)
        )));
        assert!(second.take_handed_over().is_none());
        // Handed over to another process: nobody here is woken.
        let doc = handed_to("elsewhere", "c1", "r3");
        let id = doc.get_str(RELEASE_ID).unwrap().to_owned();
        assert!(!wakes(&first, || wakeups.event(
            "job",
            Some(&id),
            Some(&doc)
        )));
        // This process's own release hands over directly from its reply;
        // its event then does nothing more.
        let release = wakeups.releasing_here("job", true);
        let doc = handed_to(&here, "c1", release.id());
        let id = doc.get_str(RELEASE_ID).unwrap().to_owned();
        assert!(wakes(&first, || release.released_here(&doc)));
        assert!(first.take_handed_over().is_some());
        assert!(!wakes(&first, || wakeups.event(
            "job",
            Some(&id),
            Some(&doc)
        )));
        assert!(first.take_handed_over().is_none());
    }
}
