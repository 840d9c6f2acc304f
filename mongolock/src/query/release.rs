//! The release's pipelines (plain, with a minimum hold, handing over to
//! the queue's head), the lease's renewal and leaving the queue.

use mongodb::bson::{doc, Bson, Document};

use super::*;

/// Filter for the lock document while `claim` is in its queue.
pub(crate) fn queued_as(key: &str, claim: &str) -> Document {
    doc! { "_id": key, format!("{QUEUE}.{WAITER}"): claim }
}

/// Takes `claim` out of the queue, and marks the write with a fresh
/// `release_id`, which names the new head's turn if the lock is free (or
/// says anyone's, with nobody left in the queue): the change stream tells
/// that head, as a release would (see [`crate::wake::release_events`]).
/// Used with `queued_as`.
pub fn leave_queue(claim: &str, release_id: &str) -> Vec<Document> {
    let left = doc! { "$filter": {
        "input": { "$ifNull": [field(QUEUE), []] },
        "as": "e",
        "cond": { "$ne": [format!("$$e.{WAITER}"), { "$literal": claim }] },
    } };
    let turn = doc! { "$let": {
        "vars": { "live": live_entries() },
        "in": turn_or_anyone("$$live"),
    } };
    vec![
        doc! { "$set": { QUEUE: left } },
        doc! { "$set": { RELEASE_ID: { "$concat": [
            { "$literal": release_id },
            { "$cond": [held_expr(), "", turn] },
        ] } } },
    ]
}

/// Whether and how a release hands the lock over to the queue's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandOver {
    /// Leave the lock free: an unfair release, `release(key, owner)`. First
    /// the plain operator release while there is no queue, as for
    /// [`HandOver::ToHeadIfQueued`]; with a queue, the release that
    /// returns it (to wake its head if it is in this process).
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

/// The id a release that leaves the lock free with nobody queued writes
/// (see [`RELEASE_ID`]).
pub(crate) fn free_for_anyone(release_id: &str) -> String {
    format!("{release_id}{ANYONE}")
}

/// The release of a lock nobody queues for, without a minimum hold: a plain
/// operator update (no pipeline, nothing returned). The lease ends at the
/// server's now. Used with a [`by_holder`] filter made
/// `without_queue`, so its id says that anyone may take the lock.
pub fn release_plain(release_id: &str) -> Document {
    doc! {
        "$currentDate": { EXPIRES_AT: true, PY_EXPIRE: true },
        "$set": { PY_LOCKED: false, RELEASE_ID: free_for_anyone(release_id) },
        "$unset": { OWNER: "", CLAIM: "" },
    }
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
/// would have held the queue up.
///
/// Otherwise the lock is left free: the lease ends at the server's now, or,
/// with a minimum hold, at `acquired_at + min_hold` if that is later, and
/// the Python package's view stays `locked` until then. Either way lapsed
/// queue entries are dropped.
///
/// `release_id` marks the release, so that its change event is known as
/// this process's own, and is followed by what the release did (see
/// the `release_id` field): the process it handed over to, and the next waiter's
/// turn, or anyone's.
pub fn release_update(min_hold_millis: i64, release_id: &str, hand_over: bool) -> Vec<Document> {
    // The head, if it can take over: an entry with a lease (so written
    // whole by this crate), and no minimum hold running.
    let head = if hand_over {
        Bson::Document(doc! { "$let": {
            "vars": { "h": { "$arrayElemAt": ["$$live", 0] } },
            "in": { "$cond": [{ "$isNumber": format!("$$h.{ENTRY_LEASE}") }, "$$h", null] },
        } })
    } else {
        Bson::Null
    };
    let live = format!("${SCRATCH}.live");
    // Whose turn it is when the lock is left free.
    let free_turn = Bson::Document(turn_or_anyone(&live));
    let (head, ends, still_locked, free_turn) = if min_hold_millis > 0 {
        let (held, ends) = min_hold(min_hold_millis);
        let head = doc! { "$cond": [&held, null, head] };
        let turn = doc! { "$cond": [held, "", free_turn] };
        (
            head.into(),
            Bson::Document(ends),
            Bson::String(field(PY_LOCKED)),
            turn.into(),
        )
    } else {
        (
            head,
            Bson::String("$$NOW".to_owned()),
            Bson::Boolean(false),
            free_turn,
        )
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
        // Handed over: the new holder's process, and the next waiter's turn
        // to wait for it. Left free: whose turn it is, if the lock is.
        RELEASE_ID: { "$concat": [
            { "$literal": release_id },
            either(doc! { "$concat": [GRANTED_TO, head(PROCESS)] }.into(), "".into()),
            either(turn_of(&live, 1).into(), free_turn),
        ] },
        QUEUE: queue,
        SCRATCH: removed(),
    };
    // The Python package's lease end follows ours, set in the stage before.
    let third = doc! { "$set": { PY_EXPIRE: field(EXPIRES_AT) } };
    vec![first, doc! { "$set": second }, third]
}

/// Whether a minimum hold is still running, and when the lease ends for a
/// release now: `acquired_at + min_hold` if that is later than now.
fn min_hold(min_hold_millis: i64) -> (Document, Document) {
    let hold_until = doc! { "$add": [field(ACQUIRED_AT), min_hold_millis] };
    let held = doc! { "$gt": [{ "$toLong": &hold_until }, now_millis()] };
    let ends = doc! { "$cond": [&held, &hold_until, "$$NOW"] };
    (held, ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_of_a_lock_nobody_queues_for_is_an_operator_update() {
        assert_eq!(
            release_plain("r1"),
            doc! {
                "$currentDate": { "expires_at": true, "expire": true },
                "$set": { "locked": false, "release_id": "r1*" },
                "$unset": { "owner": "", "claim": "" },
            }
        );
    }
}
