//! The in-process store of [`MongoLock::in_memory`](crate::MongoLock::in_memory):
//! lock documents and run records kept in this process, for users' unit
//! tests of `#[mongo_locked]` functions without a MongoDB server.
//!
//! It keeps the documents this crate writes, in the same shape, and makes
//! the decisions the server's pipelines make (see [`crate::query`]) with
//! this machine's clock as the server's: exclusion, leases, re-entry by
//! owner, fencing tokens, the FIFO queue, tick claims. The rest of the
//! crate (waiting, guards, renewal, the lost signal, run records) runs
//! unchanged above it. What it leaves out: direct handoff (a released lock
//! goes to the queue's head at its next attempt, which the release wakes),
//! the Python package's fields, TTL cleanup, and change streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use mongodb::bson::{doc, Bson, DateTime, Document};

use crate::error::{Error, Result};
use crate::query::{
    self, Queueing, TickClaim, ACQUIRED_AT, CLAIM, ENTRY_EXPIRES, EXPIRES_AT, LAST_TICK, OWNER,
    PREV_TICK, QUEUE, RELEASE_ID, TICK_BY, TOKEN, TOKENS_PER_MILLI, WAITER,
};

/// Lock documents and run records, by `_id`.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    locks: Mutex<HashMap<String, Document>>,
    runs: Mutex<BTreeMap<String, Document>>,
}

fn now_millis() -> i64 {
    DateTime::now().timestamp_millis()
}

fn millis(doc: &Document, field: &str) -> Option<i64> {
    match doc.get(field) {
        Some(Bson::DateTime(d)) => Some(d.timestamp_millis()),
        Some(Bson::Int64(n)) => Some(*n),
        _ => None,
    }
}

fn held(doc: &Document, now: i64) -> bool {
    millis(doc, EXPIRES_AT).is_some_and(|end| end > now)
}

fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

/// The live entries of a document's queue (their claims and expiries).
fn live_queue(doc: &Document, now: i64) -> Vec<Document> {
    doc.get_array(QUEUE)
        .map(|q| {
            q.iter()
                .filter_map(Bson::as_document)
                .filter(|e| millis(e, ENTRY_EXPIRES).is_some_and(|exp| exp > now))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `doc` matches a filter of the shapes [`crate::query`] builds:
/// equality on top-level fields, a queue entry's claim (`queue.w`), no
/// queue (`queue.0: {$exists: false}`), and `$expr` of
/// [`query::held_expr`].
fn matches(doc: &Document, filter: &Document, now: i64) -> Result<bool> {
    for (field, wanted) in filter {
        let ok = match field.as_str() {
            "$expr" if *wanted == Bson::Document(query::held_expr()) => held(doc, now),
            "queue.0" => doc.get_array(QUEUE).map_or(true, Vec::is_empty),
            "queue.w" => doc.get_array(QUEUE).is_ok_and(|q| {
                q.iter()
                    .filter_map(Bson::as_document)
                    .any(|e| e.get(WAITER) == Some(wanted))
            }),
            name if !name.starts_with('$') && !name.contains('.') => doc.get(name) == Some(wanted),
            other => {
                return Err(Error::Corrupt {
                    key: doc.get_str("_id").unwrap_or_default().to_owned(),
                    reason: format!(
                        "the in-memory store cannot evaluate the filter field {other:?}"
                    ),
                })
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Memory {
    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Document>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Document>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`query::acquire_pipeline`]'s decision, on the document of `key`
    /// (created if missing): the document after it.
    pub(crate) fn acquire(
        &self,
        key: &str,
        owner: &str,
        claim: &str,
        lease_millis: i64,
        fair: Option<Queueing<'_>>,
        tick: Option<TickClaim<'_>>,
    ) -> Document {
        let now = now_millis();
        let mut locks = self.locks();
        let doc = locks
            .entry(key.to_owned())
            .or_insert_with(|| doc! { "_id": key });
        let free = !held(doc, now);
        let mine = doc.get_str(OWNER) == Ok(owner) && doc.get_str(CLAIM).unwrap_or("") == claim;
        let take = |doc: &mut Document| {
            if free {
                let token = doc
                    .get_i64(TOKEN)
                    .unwrap_or(0)
                    .saturating_add(1)
                    .max(now.saturating_mul(TOKENS_PER_MILLI));
                doc.insert(TOKEN, token);
                doc.insert(ACQUIRED_AT, date(now));
            }
            doc.insert(OWNER, owner);
            doc.insert(CLAIM, claim);
            doc.insert(EXPIRES_AT, date(now.saturating_add(lease_millis)));
        };
        if let Some(tick) = tick {
            let nearest = tick
                .candidates
                .iter()
                .copied()
                .min_by_key(|t| (t - now).abs());
            let last = doc.get_i64(LAST_TICK).unwrap_or(i64::MIN);
            if let Some(t) = nearest {
                let retry = tick.retry_abandoned && free && t == last && doc.contains_key(OWNER);
                if (t - now).abs() <= tick.tolerance_millis && (t > last || retry) {
                    match doc.get(LAST_TICK).cloned() {
                        Some(prev) => doc.insert(PREV_TICK, prev),
                        None => doc.remove(PREV_TICK),
                    };
                    doc.insert(LAST_TICK, t);
                    doc.insert(TICK_BY, claim);
                    if free {
                        take(doc);
                    }
                }
            }
            return doc.clone();
        }
        match fair {
            None => {
                if free || mine {
                    take(doc);
                }
            }
            Some(queueing) => {
                let mut queue = live_queue(doc, now);
                let admitted = queue
                    .first()
                    .is_none_or(|head| head.get_str(WAITER) == Ok(claim));
                if mine || (free && admitted) {
                    take(doc);
                    queue.retain(|e| e.get_str(WAITER) != Ok(claim));
                } else if queueing.join && !queueing.expect_none {
                    let expires = date(now.saturating_add(queueing.expiry_millis));
                    let room = i64::try_from(queue.len()).unwrap_or(i64::MAX) < query::MAX_QUEUE;
                    match queue.iter_mut().find(|e| e.get_str(WAITER) == Ok(claim)) {
                        Some(entry) => {
                            entry.insert(ENTRY_EXPIRES, expires);
                        }
                        None if room => {
                            queue.push(doc! { WAITER: claim, ENTRY_EXPIRES: expires });
                        }
                        None => {}
                    }
                }
                if queue.is_empty() {
                    doc.remove(QUEUE);
                } else {
                    doc.insert(QUEUE, queue);
                }
            }
        }
        doc.clone()
    }

    /// Applies `update` (given the now) to `key`'s document if `filter`
    /// matches it; the document after, if it did.
    fn update_matching(
        &self,
        key: &str,
        filter: &Document,
        update: impl FnOnce(&mut Document, i64),
    ) -> Result<Option<Document>> {
        let now = now_millis();
        let mut locks = self.locks();
        let Some(doc) = locks.get_mut(key) else {
            return Ok(None);
        };
        if !matches(doc, filter, now)? {
            return Ok(None);
        }
        update(doc, now);
        Ok(Some(doc.clone()))
    }

    /// [`query::release_update`] without a hand-over, on the document
    /// `filter` matches: the lease ends now (or at the end of the minimum
    /// hold), the owner is cleared. The document after, if one matched.
    pub(crate) fn release(
        &self,
        key: &str,
        filter: &Document,
        min_hold_millis: i64,
        release_id: &str,
    ) -> Result<Option<Document>> {
        self.update_matching(key, filter, |doc, now| {
            let hold_end =
                millis(doc, ACQUIRED_AT).map_or(now, |t| t.saturating_add(min_hold_millis));
            let end = if min_hold_millis > 0 {
                now.max(hold_end)
            } else {
                now
            };
            doc.insert(EXPIRES_AT, date(end));
            doc.remove(OWNER);
            doc.remove(CLAIM);
            doc.insert(RELEASE_ID, release_id);
        })
    }

    /// [`query::touch_pipeline`] on the document `filter` matches.
    pub(crate) fn touch(
        &self,
        key: &str,
        filter: &Document,
        lease_millis: i64,
    ) -> Result<Option<Document>> {
        self.update_matching(key, filter, |doc, now| {
            doc.insert(EXPIRES_AT, date(now.saturating_add(lease_millis)));
        })
    }

    /// Sets `field` on the document `filter` matches; whether one did.
    pub(crate) fn set_field(
        &self,
        key: &str,
        filter: &Document,
        field: &str,
        value: Bson,
    ) -> Result<bool> {
        let updated = self.update_matching(key, filter, |doc, _| {
            doc.insert(field, value);
        })?;
        Ok(updated.is_some())
    }

    /// Takes `claim` out of `key`'s queue ([`query::leave_queue`]).
    pub(crate) fn leave_queue(&self, key: &str, claim: &str) {
        if let Some(doc) = self.locks().get_mut(key) {
            if let Ok(queue) = doc.get_array_mut(QUEUE) {
                queue.retain(|e| {
                    e.as_document()
                        .is_none_or(|e| e.get_str(WAITER) != Ok(claim))
                });
            }
        }
    }

    /// The document of `key`.
    pub(crate) fn find(&self, key: &str) -> Option<Document> {
        self.locks().get(key).cloned()
    }

    /// Whether a lease on `key` is running.
    pub(crate) fn is_held(&self, key: &str) -> bool {
        let now = now_millis();
        self.locks().get(key).is_some_and(|d| held(d, now))
    }

    /// The held documents, by key.
    pub(crate) fn held(&self) -> Vec<Document> {
        let now = now_millis();
        let mut held: Vec<Document> = self
            .locks()
            .values()
            .filter(|d| held(d, now))
            .cloned()
            .collect();
        held.sort_by(|a, b| a.get_str("_id").ok().cmp(&b.get_str("_id").ok()));
        held
    }

    /// Upserts run record `id` with `set` (and, with `stamp`, the server's
    /// now in each of those fields); with `only_new`, only if it is missing.
    pub(crate) fn upsert_run(&self, id: &str, set: Document, stamp: &[&str], only_new: bool) {
        let mut runs = self.runs();
        if only_new && runs.contains_key(id) {
            return;
        }
        let record = runs
            .entry(id.to_owned())
            .or_insert_with(|| doc! { "_id": id });
        record.extend(set);
        for field in stamp {
            record.insert(*field, date(now_millis()));
        }
    }

    /// Updates every run record `select` picks with `set` and the now in
    /// `stamp`; how many.
    pub(crate) fn update_runs(
        &self,
        select: impl Fn(&Document) -> bool,
        set: &Document,
        stamp: &[&str],
    ) -> usize {
        let mut count = 0;
        for record in self.runs().values_mut().filter(|r| select(r)) {
            record.extend(set.clone());
            for field in stamp {
                record.insert(*field, date(now_millis()));
            }
            count += 1;
        }
        count
    }

    /// The run records `select` picks.
    pub(crate) fn runs_where(&self, select: impl Fn(&Document) -> bool) -> Vec<Document> {
        self.runs()
            .values()
            .filter(|r| select(r))
            .cloned()
            .collect()
    }
}
