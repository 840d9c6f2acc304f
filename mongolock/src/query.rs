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
}

/// The single-round-trip acquisition, used with `findOneAndUpdate`, upsert,
/// and the document returned after the update.
///
/// - `free`: no lease is running (new document, released, or expired).
/// - `mine`: `owner` with the same `claim` (empty for `lock(key, owner)`)
///   holds a running lease: a retry after a lost reply, or the Python
///   package's re-entry by owner name. It renews the lease and keeps the
///   token and `acquired_at`.
/// - A new acquisition (`free`) gets a fencing token of
///   `max(previous + 1, server epoch ms x TOKENS_PER_MILLI)`.
/// - Otherwise the holder's fields are written back unchanged.
///
/// With `fair`, a free lock is taken only by the head of the queue's live
/// entries (or by anyone when none is live); a waiter that cannot take it
/// extends its entry or, not queued yet, joins the queue's end (if
/// [`Queueing::join`]); one that
/// takes it leaves the queue; lapsed entries are dropped. Without, the queue
/// is left as it is: an unfair acquisition ignores it.
pub fn acquire_pipeline(
    owner: &str,
    claim: &str,
    lease_millis: i64,
    fair: Option<Queueing<'_>>,
) -> Vec<Document> {
    let free = format!("${SCRATCH}.free");
    let take = format!("${SCRATCH}.take");
    let mine = doc! { "$and": [
        { "$eq": [field(OWNER), { "$literal": owner }] },
        { "$eq": [{ "$ifNull": [field(CLAIM), ""] }, { "$literal": claim }] },
    ] };
    let claim_value = if claim.is_empty() {
        Bson::String("$$REMOVE".to_owned())
    } else {
        Bson::Document(doc! { "$literal": claim })
    };
    let keep = |name: &str| Bson::String(field(name));
    let expires = doc! { "$add": ["$$NOW", lease_millis] };
    // Stage 1 computes, once: whether the lease is over (`free`), the live
    // queue entries (fair only) and whether this attempt takes the lock.
    let mut vars = doc! { "free": { "$lte": [held_until_millis(), now_millis()] } };
    let mut scratch = doc! { "free": "$$free" };
    let take_now = match fair {
        None => doc! { "$or": ["$$free", mine] },
        Some(_) => {
            vars.insert("live", live_entries());
            scratch.insert("live", "$$live");
            let admitted = doc! { "$or": [
                { "$eq": [{ "$size": "$$live" }, 0] },
                { "$eq": [{ "$arrayElemAt": [waiters("$$live"), 0] }, { "$literal": claim }] },
            ] };
            doc! { "$or": [mine, { "$and": ["$$free", admitted] }] }
        }
    };
    scratch.insert("take", take_now);
    let first = doc! { "$set": { SCRATCH: { "$let": { "vars": vars, "in": scratch } } } };
    let mut second = doc! {
            OWNER: { "$cond": [&take, { "$literal": owner }, keep(OWNER)] },
            CLAIM: { "$cond": [&take, claim_value, keep(CLAIM)] },
            ACQUIRED_AT: { "$cond": [&free, "$$NOW", keep(ACQUIRED_AT)] },
            EXPIRES_AT: { "$cond": [&take, &expires, keep(EXPIRES_AT)] },
            TOKEN: { "$cond": [&free, next_token(), keep(TOKEN)] },
            PY_LOCKED: { "$cond": [&take, true, keep(PY_LOCKED)] },
            PY_EXPIRE: { "$cond": [&take, &expires, keep(PY_EXPIRE)] },
        PY_CREATED: { "$cond": [&free, "$$NOW", keep(PY_CREATED)] },
        SCRATCH: "$$REMOVE",
    };
    if let Some(queueing) = fair {
        second.insert(
            QUEUE,
            queue_after(owner, claim, lease_millis, &take, queueing),
        );
    }
    vec![first, doc! { "$set": second }]
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

/// The queue after a fair attempt: without its lapsed entries, and without
/// the waiter if it takes the lock, else with its entry extended or (if it
/// joins) appended. Removed when empty.
fn queue_after(
    owner: &str,
    claim: &str,
    lease_millis: i64,
    take: &str,
    queueing: Queueing<'_>,
) -> Document {
    let live = format!("${SCRATCH}.live");
    let waiter = format!("$$e.{WAITER}");
    let entry = doc! {
        WAITER: { "$literal": claim },
        PROCESS: { "$literal": queueing.tag },
        ENTRY_EXPIRES: { "$add": ["$$NOW", queueing.expiry_millis] },
        ENTRY_OWNER: { "$literal": owner },
        ENTRY_LEASE: lease_millis,
    };
    let without_me = doc! { "$filter": {
        "input": &live, "as": "e", "cond": { "$ne": [&waiter, { "$literal": claim }] },
    } };
    let extended = doc! { "$map": {
        "input": &live, "as": "e",
        "in": { "$cond": [{ "$eq": [&waiter, { "$literal": claim }] }, &entry, "$$e"] },
    } };
    let queued = doc! { "$in": [{ "$literal": claim }, waiters(&live)] };
    let room = doc! { "$lt": [{ "$size": &live }, MAX_QUEUE] };
    let stay = if queueing.join {
        doc! { "$cond": [queued, extended, {
            "$cond": [room, { "$concatArrays": [&live, [entry.clone()]] }, &live],
        }] }
    } else {
        doc! { "$cond": [queued, extended, &live] }
    };
    let after = doc! { "$cond": [take, without_me, stay] };
    doc! { "$let": {
        "vars": { "q": after },
        "in": { "$cond": [{ "$eq": [{ "$size": "$$q" }, 0] }, "$$REMOVE", "$$q"] },
    } }
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
        let text: String = acquire_pipeline("$evil", "", 1000, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        let uses = text.matches("\"$evil\"").count();
        let wrapped = text.matches("\"$literal\": \"$evil\"").count();
        assert_eq!(uses, 2, "{text}");
        let text: String = acquire_pipeline("o", "$evil_claim", 1000, None)
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
