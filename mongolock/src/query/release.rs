//! The release's pipelines (plain, with a minimum hold, handing over to
//! the queue's head), the lease's renewal and leaving the queue.

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::UpdateModifications;

use super::*;

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
