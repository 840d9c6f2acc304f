//! The change stream that wakes a process's waiters: one per `MongoLock`,
//! opened by the first waiter that finds a lock taken, filtered on the
//! server to the releases this process's waiters can act on, and closed
//! once it has had no waiter for a while.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::Collection;
use tokio::sync::{watch, Notify};

use super::{TaskAlive, Wakeups, DOWN, OPEN, OPENING, UNAVAILABLE};
use crate::query::{ANYONE, GRANTED_TO, PROCESS, PY_LOCKED, QUEUE, RELEASE_ID, RELEASE_VIEW, TURN};

/// How long to wait before reopening a broken stream.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// How long the server holds a `getMore` open without an event to return
/// (its `maxAwaitTimeMS`): what an idle stream costs, one command per this
/// much time. A release is delivered as soon as it happens, whatever this is.
const MAX_AWAIT: Duration = Duration::from_secs(10);

pub(super) struct StreamTask {
    wakeups: std::sync::Weak<Wakeups>,
    collection: Collection<Document>,
    shutdown: watch::Receiver<()>,
    widen: Arc<Notify>,
    /// Part of the task from its creation, so that it is dropped also with
    /// a task that a runtime shutting down never polled.
    _alive: TaskAlive,
}

/// The events after which a waiter of the process tagged `tag` may take a
/// lock or was handed one, filtered on the server so that a process hears
/// only of the releases its waiters can act on.
///
/// Written for both shapes of events: MongoDB 5.0+ reports pipeline updates
/// as `update` with only the changed fields, 4.4 (and the test server) as
/// `replace` with the whole document (SERVER-42116). No event is looked up
/// (`updateLookup` would cost the server a read per event and per open
/// stream, and send every process the queue): an `update` is judged by the
/// release id it writes, which says what the write did (see
/// the `release_id` field): handed the lock over to a waiter of this
/// process (`@tag`), made it a waiter of this process's turn (`^tag:`, the
/// queue's head of a lock left free, or the next in line after a hand-over
/// to another process), or, for waiters outside any queue (if `wide`), left
/// the lock free with nobody queued (`*`). A `replace` is judged by the
/// document: a release (`locked: false`) whose queue is headed by this
/// process, or has no entry if `wide`; a hand-over to this process, or to
/// another with this process's waiter at the head; and a release by the
/// Python package (a replacement without a release id, which drops the
/// queue), which every process hears. A deleted document wakes every
/// process. Acquisitions, takeovers, renewals and queue updates wake nobody:
/// a waiter could not take the lock after them.
pub fn release_events(tag: &str, wide: bool) -> Vec<Document> {
    let granted_here = doc! { "$regex": format!("{GRANTED_TO}{tag}([\\{TURN}\\{ANYONE}]|$)") };
    let handed_anywhere = doc! { "$regex": GRANTED_TO };
    let turn_here = doc! { "$regex": format!("\\{TURN}{tag}:") };
    let anyone = doc! { "$regex": format!("\\{ANYONE}$") };
    let updated = format!("updateDescription.updatedFields.{RELEASE_ID}");
    let whole = |name: &str| format!("fullDocument.{name}");
    let mut project = doc! {
        "operationType": 1,
        "documentKey": 1,
        "updateDescription.removedFields": 1,
        "fullDocument._id": 1,
    };
    for field in RELEASE_VIEW {
        project.insert(whole(field), 1);
        if field != QUEUE {
            project.insert(format!("updateDescription.updatedFields.{field}"), 1);
        }
    }
    let mut whose_turn = vec![doc! { format!("{}.0.{PROCESS}", whole(QUEUE)): tag }];
    let mut updates = vec![
        doc! { &updated: &granted_here },
        doc! { &updated: &turn_here },
    ];
    if wide {
        whose_turn.push(doc! { format!("{}.0", whole(QUEUE)): { "$exists": false } });
        updates.push(doc! { &updated: &anyone });
    }
    vec![
        doc! { "$match": { "$or": [
            { "operationType": "delete" },
            { "operationType": "update", "$or": updates },
            { "operationType": "replace", "$or": [
                { whole(PY_LOCKED): false, "$or": whose_turn },
                { whole(RELEASE_ID): &granted_here },
                // A hand-over to another process's waiter that leaves one
                // of this process's at the head: it now waits for the new
                // holder's lease, not for the queue to move (if that
                // holder dies, the head takes over when its lease ends).
                {
                    whole(RELEASE_ID): &handed_anywhere,
                    format!("{}.0.{PROCESS}", whole(QUEUE)): tag,
                },
                // A release by the Python package: it replaces the whole
                // document, our queue included, so whoever asks first may
                // take the lock, and every process is told.
                { whole(PY_LOCKED): false, whole(RELEASE_ID): { "$exists": false } },
            ] },
        ] } },
        doc! { "$project": project },
    ]
}

/// Server errors that mean "no change streams here", which will not go away
/// by themselves: not a replica set or sharded cluster (40573), not
/// authorized (13), unsupported (115, 40324), a namespace that cannot be
/// watched (73, InvalidNamespace: `admin`, `local`, `config`).
fn unsupported(error: &mongodb::error::Error) -> bool {
    matches!(
        error.kind.as_ref(),
        mongodb::error::ErrorKind::Command(c) if matches!(c.code, 13 | 73 | 115 | 40324 | 40573)
    )
}

/// The longest wait before reopening a stream that keeps failing.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);

impl StreamTask {
    /// Starts the stream task of `wakeups`, reading `collection`.
    pub(super) fn spawn(wakeups: &Arc<Wakeups>, collection: &Collection<Document>) {
        let task = StreamTask {
            wakeups: Arc::downgrade(wakeups),
            collection: collection.clone(),
            shutdown: wakeups.shutdown.subscribe(),
            widen: wakeups.widen.clone(),
            _alive: TaskAlive(Arc::downgrade(wakeups)),
        };
        tokio::spawn(task.run());
    }

    async fn run(mut self) {
        // Where to pick up after a broken stream, so that no release between
        // the break and the reopen goes unseen.
        let mut resume = None;
        // Opens that failed in a row: the wait before the next doubles.
        let mut failures = 0_u32;
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
                .max_await_time(MAX_AWAIT)
                .resume_after(resume.clone())
                .await;
            let Some(wakeups) = self.wakeups.upgrade() else {
                return;
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(error) if unsupported(&error) => {
                    tracing::warn!(%error, "mongolock: change streams unavailable here; waiters will poll");
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
                    failures = failures.saturating_add(1);
                    if self.pause(failures).await {
                        return;
                    }
                    continue;
                }
            };
            failures = 0;
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
                            // The whole document of a `replace`; of an
                            // `update`, what its changed fields tell.
                            let changed = event
                                .update_description
                                .as_ref()
                                .map(|u| super::marks::changed_view(key, &u.updated_fields));
                            let doc = event.full_document.as_ref().or(changed.as_ref());
                            wakeups.event(key, release_id, doc);
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
                    // The next stream opens narrow: a waiter outside any
                    // queue widens it again at its first busy attempt.
                    wakeups.wide.store(false, Ordering::Release);
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
            } else if self.pause(1).await {
                return;
            }
        }
    }

    /// Waits before reopening after `failures` failures in a row (1 s,
    /// doubling, at most [`MAX_REOPEN_DELAY`]); true if the lock was dropped
    /// meanwhile.
    async fn pause(&mut self, failures: u32) -> bool {
        let doubled = 1_u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let delay = REOPEN_DELAY
            .checked_mul(doubled)
            .map_or(MAX_REOPEN_DELAY, |d| d.min(MAX_REOPEN_DELAY));
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.wakeups.strong_count() == 0,
            _ = self.shutdown.changed() => true,
        }
    }
}
