//! The MongoDB filters and update pipelines, in one place.
//!
//! Rules every expression here keeps:
//! - Time comes from the server (`$$NOW`). Dates are compared as `$toLong`
//!   milliseconds, which sidesteps servers that compare `$$NOW` with stored
//!   dates across time zones wrongly.
//! - Filters of upserts hold `_id` only: real MongoDB refuses `$expr` there,
//!   and sharded clusters route on `_id`.
//! - User strings inside pipelines are wrapped in `$literal`, so an owner such
//!   as `"$owner"` is never read as a field path.
//! - Only `$add` on dates, never `$dateAdd` (MongoDB 5.0+).

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::UpdateModifications;

/// Field names of a lock document. `_id` is the key.
pub(crate) const OWNER: &str = "owner";
pub(crate) const ACQUIRED_AT: &str = "acquired_at";
pub(crate) const EXPIRES_AT: &str = "expires_at";
pub(crate) const TOKEN: &str = "token";
/// Set by [`acquire()`](crate::MongoLock::acquire): which acquisition holds
/// the lock, so only a retry of that very acquisition re-enters it.
pub(crate) const CLAIM: &str = "claim";
/// The Python package `mongolock`'s fields, kept in step so that a fleet
/// migrating job by job never runs a job twice: `locked` and `expire` (its
/// lease end), `created` (its acquisition time).
pub(crate) const PY_LOCKED: &str = "locked";
pub(crate) const PY_EXPIRE: &str = "expire";
pub(crate) const PY_CREATED: &str = "created";

/// A fair lock's queue of waiters, oldest first: `{ w, p, exp, o, l }` per
/// waiter, with its claim, its `MongoLock`'s tag (which process to wake),
/// when the entry lapses unless the waiter asks again, and the owner and
/// lease (milliseconds) a release hands the lock over with.
pub(crate) const QUEUE: &str = "queue";
/// Set by each release to a value of the releaser's, so that the releasing
/// process recognises its own release's change event. A release that hands
/// the lock over appends [`GRANTED_TO`] and the new holder's process tag.
pub(crate) const RELEASE_ID: &str = "release_id";
/// Separates a release id from the tag of the process it handed over to.
pub(crate) const GRANTED_TO: &str = "@";
/// What a release's reply and its change event carry: who holds the lock
/// now (after a handover) and whose turn it is.
pub(crate) const RELEASE_VIEW: [&str; 7] = [
    QUEUE,
    RELEASE_ID,
    OWNER,
    CLAIM,
    TOKEN,
    ACQUIRED_AT,
    EXPIRES_AT,
];
/// A scheduled job's last claimed tick (epoch milliseconds), the one
/// before it, and the claim of the attempt that claimed it (see
/// [`TickClaim`]).
pub(crate) const LAST_TICK: &str = "tick";
pub(crate) const PREV_TICK: &str = "prev_tick";
pub(crate) const TICK_BY: &str = "tick_by";
/// What a leader proclaimed: `{ t: token, v: text }`, the value of the
/// term whose token is `t` (a later term's document may still carry an
/// earlier term's value until its leader proclaims).
pub(crate) const VALUE: &str = "value";
pub(crate) const VALUE_TOKEN: &str = "t";
pub(crate) const VALUE_TEXT: &str = "v";
/// Queue entry fields.
pub(crate) const WAITER: &str = "w";
pub(crate) const PROCESS: &str = "p";
pub(crate) const ENTRY_EXPIRES: &str = "exp";
pub(crate) const ENTRY_OWNER: &str = "o";
pub(crate) const ENTRY_LEASE: &str = "l";
/// The most entries a queue holds: a document stays far below MongoDB's
/// 16 MiB, and waiters beyond it wait unqueued, as without fairness.
pub(crate) const MAX_QUEUE: i64 = 10_000;

/// How many fencing token steps one millisecond of server time is worth. A
/// token is `max(previous + 1, server epoch ms x TOKENS_PER_MILLI)`, so it
/// runs ahead of the clock only if one key is acquired more than this often
/// in a millisecond, which no server does. A document recreated after the
/// TTL index deleted it therefore starts above every token it ever had, as
/// long as the server's clock is not behind the clock that stamped them by
/// more than the cleanup delay.
pub(crate) const TOKENS_PER_MILLI: i64 = 1000;

/// A scratch field used between pipeline stages and removed at the end.
const SCRATCH: &str = "_mongolock";

fn field(name: &str) -> String {
    format!("${name}")
}

fn now_millis() -> Bson {
    Bson::Document(doc! { "$toLong": "$$NOW" })
}

/// When the lease ends, in milliseconds: the later of this crate's
/// `expires_at` and, while the Python package's `locked` is true, its
/// `expire` (no `expire` there means no expiry). 0 for a new document.
fn held_until_millis() -> Bson {
    let ours = doc! { "$ifNull": [{ "$toLong": field(EXPIRES_AT) }, 0_i64] };
    let python = doc! { "$cond": [
        { "$eq": [field(PY_LOCKED), true] },
        { "$ifNull": [{ "$toLong": field(PY_EXPIRE) }, i64::MAX] },
        0_i64,
    ] };
    Bson::Document(doc! { "$max": [ours, python] })
}

/// True when the lease is still running by the server's clock.
pub(crate) fn held_expr() -> Document {
    doc! { "$gt": [held_until_millis(), now_millis()] }
}

/// Filter for `_id` alone, the only shape allowed for upserts.
pub fn by_key(key: &str) -> Document {
    doc! { "_id": key }
}

/// Filter for a lock held by `owner`, and, for a guard, by that very
/// acquisition (`token`), so a stale guard whose owner name was reused cannot
/// touch the new holder's lock.
pub fn by_holder(key: &str, owner: &str, token: Option<i64>) -> Document {
    let mut filter = doc! { "_id": key, OWNER: owner };
    if let Some(token) = token {
        filter.insert(TOKEN, token);
    }
    filter
}

/// Filter for the lock taken by one acquisition, known by its claim.
pub(crate) fn by_claim(key: &str, owner: &str, claim: &str) -> Document {
    doc! { "_id": key, OWNER: owner, CLAIM: claim }
}

/// How a fair acquisition queues: its process's tag and how long its entry
/// lasts after each attempt.
#[derive(Debug, Clone, Copy)]
pub struct Queueing<'a> {
    /// The waiter's process (`MongoLock`), woken by releases it heads.
    pub tag: &'a str,
    /// How long the entry lasts after each attempt, in milliseconds.
    pub expiry_millis: i64,
    /// Whether a waiter that cannot take the lock joins the queue. A single
    /// attempt (no timeout) does not: it respects the queue but does not
    /// wait in it.
    pub join: bool,
    /// The light attempt, for a key this process has not seen contended
    /// lately: it takes a free lock only while the queue has no entry at
    /// all, and otherwise changes nothing (it neither joins nor refreshes
    /// an entry), so it costs what an unfair attempt does. A caller whose
    /// light attempt did not take the lock tries again at once without it.
    pub expect_none: bool,
}

/// A scheduled run's claim of a tick, made in the acquisition's round
/// trip. The server picks the tick: of `candidates` (fire times around the
/// client's estimate of the server's clock), the one nearest its `$$NOW`.
/// The tick is *due* when it is within `tolerance_millis` of `$$NOW` and
/// later than the last tick claimed on the key. A due tick is claimed
/// (`tick`, `prev_tick`, `tick_by`) whether or not the lock is free: taken
/// with the lock when it is, recorded as skipped when a previous run still
/// holds it. Either way no later attempt claims it again.
#[derive(Debug, Clone, Copy)]
pub struct TickClaim<'a> {
    /// Fire times, epoch milliseconds.
    pub candidates: &'a [i64],
    /// How far from the server's clock the tick may be.
    pub tolerance_millis: i64,
    /// Whether the last claimed tick may be claimed again when its run
    /// ended without a release (its runner died, or lost the lock): the
    /// lock is free by the server's clock and still names an owner.
    pub retry_abandoned: bool,
}

/// The single-round-trip acquisition, used with `findOneAndUpdate`, upsert,
/// and the document returned after the update. One `$replaceWith` stage
/// that keeps the document (`$$ROOT`) and merges into it only what changes,
/// so an attempt that takes nothing writes nothing back.
///
/// - `free`: no lease is running (new document, released, or expired).
/// - `mine`: `owner` with the same `claim` (empty for `lock(key, owner)`)
///   holds the lock: a retry after a lost reply, or the Python package's
///   re-entry by owner name. It renews the lease and keeps the token and
///   `acquired_at` while the lease runs.
/// - A new acquisition (`free`) gets a fencing token of
///   `max(previous + 1, server epoch ms x TOKENS_PER_MILLI)`.
/// - An attempt that does not take the lock leaves the holder's fields as
///   they are (and a free lock free: no token or time is stamped on it).
///
/// With `fair`, a free lock is taken only by the head of the queue's live
/// entries (or by anyone when none is live); a waiter that cannot take it
/// extends its entry or, not queued yet, joins the queue's end (if
/// [`Queueing::join`]); one that takes it leaves the queue; lapsed entries
/// are dropped. While there is no queue (no entry at all, the uncontended
/// case), none of that is evaluated: the attempt costs what an unfair one
/// does. Without `fair`, the queue is left as it is: an unfair acquisition
/// ignores it.
pub fn acquire_pipeline(
    owner: &str,
    claim: &str,
    lease_millis: i64,
    fair: Option<Queueing<'_>>,
    tick: Option<TickClaim<'_>>,
) -> Vec<Document> {
    let mine = doc! { "$and": [
        { "$eq": [field(OWNER), { "$literal": owner }] },
        { "$eq": [{ "$ifNull": [field(CLAIM), ""] }, { "$literal": claim }] },
    ] };
    let expires = doc! { "$add": ["$$NOW", lease_millis] };
    let on_new = |name: &str, new: Bson| doc! { "$cond": ["$$free", new, field(name)] };
    // What a taking attempt writes; `$$free` tells a new acquisition from
    // a re-entry.
    let taken = doc! {
        OWNER: { "$literal": owner },
        CLAIM: { "$literal": claim },
        ACQUIRED_AT: on_new(ACQUIRED_AT, "$$NOW".into()),
        EXPIRES_AT: &expires,
        TOKEN: on_new(TOKEN, next_token().into()),
        PY_LOCKED: true,
        PY_EXPIRE: &expires,
        PY_CREATED: on_new(PY_CREATED, "$$NOW".into()),
    };
    let merge = |fields: Document| doc! { "$mergeObjects": ["$$ROOT", fields] };
    let take_or = |otherwise: Bson| {
        doc! { "$cond": [{ "$or": ["$$free", &mine] }, merge(taken.clone()), otherwise] }
    };
    if let Some(tick) = tick {
        return tick_claim(tick, claim, merge, taken);
    }
    let decide = match fair {
        None => take_or("$$ROOT".into()),
        Some(queueing) if queueing.expect_none => doc! { "$cond": [
            { "$or": [&mine, { "$and": [
                "$$free",
                { "$eq": [{ "$size": { "$ifNull": [field(QUEUE), []] } }, 0] },
            ] }] },
            merge(taken.clone()),
            "$$ROOT",
        ] },
        Some(queueing) => {
            let entry = doc! {
                WAITER: { "$literal": claim },
                PROCESS: { "$literal": queueing.tag },
                ENTRY_EXPIRES: { "$add": ["$$NOW", queueing.expiry_millis] },
                ENTRY_OWNER: { "$literal": owner },
                ENTRY_LEASE: lease_millis,
            };
            let busy = if queueing.join {
                Bson::Document(merge(doc! { QUEUE: [entry.clone()] }))
            } else {
                Bson::String("$$ROOT".to_owned())
            };
            let no_queue = take_or(busy);
            let admitted = doc! { "$or": [
                { "$eq": [{ "$size": "$$live" }, 0] },
                { "$eq": [{ "$arrayElemAt": [waiters("$$live"), 0] }, { "$literal": claim }] },
            ] };
            let mut taken_leaving = taken.clone();
            taken_leaving.insert(QUEUE, without(claim, "$$live"));
            let queued = doc! { "$let": {
                "vars": { "live": live_entries() },
                "in": { "$cond": [
                    { "$or": [&mine, { "$and": ["$$free", admitted] }] },
                    merge(taken_leaving),
                    merge(doc! { QUEUE: queue_staying(claim, "$$live", entry, queueing.join) }),
                ] },
            } };
            doc! { "$cond": [
                { "$eq": [{ "$size": { "$ifNull": [field(QUEUE), []] } }, 0] },
                no_queue,
                queued,
            ] }
        }
    };
    vec![doc! { "$replaceWith": { "$let": {
        "vars": { "free": { "$lte": [held_until_millis(), now_millis()] } },
        "in": decide,
    } } }]
}

/// [`acquire_pipeline`] for a [`TickClaim`]: no queue, no re-entry.
fn tick_claim(
    tick: TickClaim<'_>,
    claim: &str,
    merge: impl Fn(Document) -> Document,
    mut taken: Document,
) -> Vec<Document> {
    let distance = |t: &str| doc! { "$abs": { "$subtract": [t, now_millis()] } };
    let nearest = doc! { "$reduce": {
        "input": tick.candidates,
        "initialValue": tick.candidates.first().copied().unwrap_or(i64::MIN),
        "in": { "$cond": [
            { "$lt": [distance("$$this"), distance("$$value")] }, "$$this", "$$value",
        ] },
    } };
    let claimed = doc! {
        LAST_TICK: "$$tick",
        PREV_TICK: field(LAST_TICK),
        TICK_BY: { "$literal": claim },
    };
    taken.extend(claimed.clone());
    let last = doc! { "$ifNull": [field(LAST_TICK), i64::MIN] };
    let later = doc! { "$gt": ["$$tick", &last] };
    let unfinished_again = doc! { "$and": [
        tick.retry_abandoned,
        "$$free",
        { "$eq": ["$$tick", &last] },
        { "$ne": [{ "$ifNull": [field(OWNER), null_bson()] }, null_bson()] },
    ] };
    let due = doc! { "$and": [
        { "$lte": [distance("$$tick"), tick.tolerance_millis] },
        { "$or": [later, unfinished_again] },
    ] };
    vec![doc! { "$replaceWith": { "$let": {
        "vars": {
            "free": { "$lte": [held_until_millis(), now_millis()] },
            "tick": nearest,
        },
        "in": { "$cond": [
            due,
            { "$cond": ["$$free", merge(taken), merge(claimed)] },
            "$$ROOT",
        ] },
    } } }]
}

fn null_bson() -> Bson {
    Bson::Null
}

/// A new acquisition's fencing token (see [`TOKENS_PER_MILLI`]).
fn next_token() -> Document {
    doc! { "$max": [
        { "$add": [{ "$ifNull": [field(TOKEN), 0_i64] }, 1_i64] },
        { "$multiply": [now_millis(), TOKENS_PER_MILLI] },
    ] }
}

/// The queue's entries that have not lapsed, oldest first.
fn live_entries() -> Document {
    doc! { "$let": {
        "vars": { "now": now_millis() },
        "in": { "$filter": {
            "input": { "$ifNull": [field(QUEUE), []] },
            "as": "e",
            "cond": { "$gt": [{ "$toLong": format!("$$e.{ENTRY_EXPIRES}") }, "$$now"] },
        } },
    } }
}

/// The claims in a queue: `$map` rather than a `queue.w` path, which some
/// servers resolve to null on an empty array.
fn waiters(queue: &str) -> Document {
    doc! { "$map": { "input": queue, "as": "e", "in": format!("$$e.{WAITER}") } }
}

/// The entries of `queue` other than `claim`'s.
fn without(claim: &str, queue: &str) -> Document {
    doc! { "$filter": {
        "input": queue, "as": "e",
        "cond": { "$ne": [format!("$$e.{WAITER}"), { "$literal": claim }] },
    } }
}

/// The queue after a fair attempt that did not take the lock: `queue` (the
/// live entries) with the waiter's entry extended or, if it `join`s and
/// there is room, appended.
fn queue_staying(claim: &str, queue: &str, entry: Document, join: bool) -> Document {
    let extended = doc! { "$map": {
        "input": queue, "as": "e",
        "in": { "$cond": [
            { "$eq": [format!("$$e.{WAITER}"), { "$literal": claim }] },
            &entry,
            "$$e",
        ] },
    } };
    let queued = doc! { "$in": [{ "$literal": claim }, waiters(queue)] };
    if !join {
        return doc! { "$cond": [queued, extended, queue] };
    }
    let room = doc! { "$lt": [{ "$size": queue }, MAX_QUEUE] };
    doc! { "$cond": [queued, extended, {
        "$cond": [room, { "$concatArrays": [queue, [entry]] }, queue],
    }] }
}

/// Filter for the lock document while `claim` is in its queue.
pub(crate) fn queued_as(key: &str, claim: &str) -> Document {
    doc! { "_id": key, format!("{QUEUE}.{WAITER}"): claim }
}

/// Takes `claim` out of the queue, and marks the write with a fresh
/// `release_id`: if the lock is free, the change stream tells the new head
/// that it is its turn, as a release would (see
/// [`crate::wake::release_events`]). Used with [`queued_as`].
pub(crate) fn leave_queue(claim: &str, release_id: &str) -> Document {
    doc! {
        "$pull": { QUEUE: { WAITER: claim } },
        "$set": { RELEASE_ID: release_id },
    }
}

/// Whether and how a release hands the lock over to the queue's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOver {
    /// Leave the lock free: an unfair release, `release(key, owner)`.
    Never,
    /// A fair release, by the hand-over pipeline ([`release_update`]).
    ToHead,
    /// A fair release by a holder that saw no queue when it took the lock
    /// (the uncontended case): first the plain operator release, on a
    /// filter that matches only while there is still no queue
    /// ([`without_queue`]); the hand-over pipeline only if that found
    /// nothing.
    ToHeadIfQueued,
}

/// `filter`, matching only a lock without a queue (no entry at all).
pub(crate) fn without_queue(mut filter: Document) -> Document {
    filter.insert(format!("{QUEUE}.0"), doc! { "$exists": false });
    filter
}

/// Extends the lease from the server's now. Used with a [`by_holder`] filter.
pub(crate) fn touch_pipeline(lease_millis: i64) -> Vec<Document> {
    let expires = doc! { "$add": ["$$NOW", lease_millis] };
    vec![doc! { "$set": { EXPIRES_AT: &expires, PY_EXPIRE: &expires } }]
}

/// Ends this holder's lease, keeping the document so its fencing token
/// carries on. Used with a [`by_holder`] filter.
///
/// With `hand_over` (a fair holder's release), the lock goes straight to
/// the queue's live head in the same write, if there is one and no minimum
/// hold is still running: the head's owner and claim become the holder's, it
/// gets a new fencing token and leaves the queue, and its lease is its own
/// lease from the server's now, but never past its queue entry's expiry, so
/// a head that died while queued holds the lock no longer than its entry
/// would have held the queue up. The release id then names the head's
/// process after an `@`. Lapsed entries are dropped.
///
/// Otherwise the lock is left free. Without a minimum hold and without
/// `hand_over` that is a plain operator update (no pipeline): the lease ends
/// at the server's now. With a minimum hold, the lease ends at `acquired_at
/// + min_hold` if that is later than now, and the Python package's view
/// stays `locked` until then.
///
/// `release_id` marks the release, so that its change event is known as
/// this process's own (the `release_id` field).
pub fn release_update(
    min_hold_millis: i64,
    release_id: &str,
    hand_over: bool,
) -> UpdateModifications {
    if hand_over {
        return UpdateModifications::Pipeline(hand_over_pipeline(min_hold_millis, release_id));
    }
    if min_hold_millis <= 0 {
        return UpdateModifications::Document(doc! {
            "$currentDate": { EXPIRES_AT: true, PY_EXPIRE: true },
            "$set": { PY_LOCKED: false, RELEASE_ID: release_id },
            "$unset": { OWNER: "", CLAIM: "" },
        });
    }
    let (_, ends) = min_hold(min_hold_millis);
    UpdateModifications::Pipeline(vec![
        doc! { "$set": {
            EXPIRES_AT: &ends,
            PY_EXPIRE: &ends,
            RELEASE_ID: { "$literal": release_id },
        } },
        doc! { "$unset": [OWNER, CLAIM] },
    ])
}

/// Whether a minimum hold is still running, and when the lease ends for a
/// release now: `acquired_at + min_hold` if that is later than now.
fn min_hold(min_hold_millis: i64) -> (Document, Document) {
    let hold_until = doc! { "$add": [field(ACQUIRED_AT), min_hold_millis] };
    let held = doc! { "$gt": [{ "$toLong": &hold_until }, now_millis()] };
    let ends = doc! { "$cond": [&held, &hold_until, "$$NOW"] };
    (held, ends)
}

/// [`release_update`] with `hand_over`. Written for few expressions, which
/// is what a server that interprets pipelines spends its time on: the head
/// is found once, and every field after asks only whether there is one.
fn hand_over_pipeline(min_hold_millis: i64, release_id: &str) -> Vec<Document> {
    // The head, if it can take over: an entry with a lease (so written
    // whole by this crate), and no minimum hold running.
    let head = doc! { "$let": {
        "vars": { "h": { "$arrayElemAt": ["$$live", 0] } },
        "in": { "$cond": [{ "$isNumber": format!("$$h.{ENTRY_LEASE}") }, "$$h", null] },
    } };
    let (head, ends, still_locked) = if min_hold_millis > 0 {
        let (held, ends) = min_hold(min_hold_millis);
        let head = doc! { "$cond": [held, null, head] };
        (head, Bson::Document(ends), Bson::String(field(PY_LOCKED)))
    } else {
        (head, Bson::String("$$NOW".to_owned()), Bson::Boolean(false))
    };
    let first = doc! { "$set": { SCRATCH: { "$let": {
        "vars": { "live": live_entries() },
        "in": { "live": "$$live", "head": head },
    } } } };
    let granted = format!("${SCRATCH}.head");
    let head = |name: &str| Bson::String(format!("{granted}.{name}"));
    let either = |given: Bson, otherwise: Bson| doc! { "$cond": [&granted, given, otherwise] };
    let keep = |name: &str| Bson::String(field(name));
    let now = || Bson::String("$$NOW".to_owned());
    let removed = || Bson::String("$$REMOVE".to_owned());
    let handed_until = doc! { "$toDate": { "$min": [
        { "$add": [now_millis(), head(ENTRY_LEASE)] },
        { "$toLong": head(ENTRY_EXPIRES) },
    ] } };
    let live = format!("${SCRATCH}.live");
    let queue = doc! { "$let": {
        "vars": { "q": either(
            doc! { "$slice": [&live, 1, MAX_QUEUE] }.into(),
            Bson::String(live.clone()),
        ) },
        "in": { "$cond": [{ "$eq": [{ "$size": "$$q" }, 0] }, "$$REMOVE", "$$q"] },
    } };
    let second = doc! {
        OWNER: either(head(ENTRY_OWNER), removed()),
        CLAIM: either(head(WAITER), removed()),
        ACQUIRED_AT: either(now(), keep(ACQUIRED_AT)),
        EXPIRES_AT: either(handed_until.into(), ends),
        TOKEN: either(next_token().into(), keep(TOKEN)),
        PY_LOCKED: either(true.into(), still_locked),
        PY_CREATED: either(now(), keep(PY_CREATED)),
        RELEASE_ID: either(
            doc! { "$concat": [{ "$literal": release_id }, GRANTED_TO, head(PROCESS)] }.into(),
            doc! { "$literal": release_id }.into(),
        ),
        QUEUE: queue,
        SCRATCH: removed(),
    };
    // The Python package's lease end follows ours, set in the stage before.
    let third = doc! { "$set": { PY_EXPIRE: field(EXPIRES_AT) } };
    vec![first, doc! { "$set": second }, third]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_always_literal_in_acquire_pipeline() {
        let text: String = acquire_pipeline("$evil", "", 1000, None, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        let uses = text.matches("\"$evil\"").count();
        let wrapped = text.matches("\"$literal\": \"$evil\"").count();
        assert_eq!(uses, 2, "{text}");
        let text: String = acquire_pipeline("o", "$evil_claim", 1000, None, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.matches("\"$evil_claim\"").count(), 2, "{text}");
        assert_eq!(
            text.matches("\"$literal\": \"$evil_claim\"").count(),
            2,
            "{text}"
        );
        assert_eq!(wrapped, uses, "{text}");
    }

    #[test]
    fn holder_filter_matches_token_only_for_guards() {
        assert_eq!(by_holder("k", "o", None), doc! { "_id": "k", "owner": "o" });
        assert_eq!(
            by_holder("k", "o", Some(7)),
            doc! { "_id": "k", "owner": "o", "token": 7_i64 }
        );
    }

    #[test]
    fn release_without_min_hold_is_an_operator_update() {
        let UpdateModifications::Document(update) = release_update(0, "r1", false) else {
            panic!("a pipeline where an operator update does");
        };
        assert_eq!(
            update,
            doc! {
                "$currentDate": { "expires_at": true, "expire": true },
                "$set": { "locked": false, "release_id": "r1" },
                "$unset": { "owner": "", "claim": "" },
            }
        );
        assert!(matches!(
            release_update(5, "r1", false),
            UpdateModifications::Pipeline(_)
        ));
        assert!(matches!(
            release_update(0, "r1", true),
            UpdateModifications::Pipeline(_)
        ));
    }
}
