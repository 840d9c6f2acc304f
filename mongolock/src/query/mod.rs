//! The MongoDB filters and update pipelines, in one place: the lock
//! document's fields and filters here, the acquisition's pipelines in
//! [`acquire`], the release's and the queue's in [`release`].
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
/// Set by each release (and each waiter leaving the queue) to an id of the
/// writer's, so that the releasing process recognises its own release's
/// change event, followed by what the write did, so that a change event
/// that carries only the changed fields (MongoDB 5.0+) says whom to wake
/// without the document being looked up:
/// `<id>[@<process>][^<process>:<claim> | *]`. [`GRANTED_TO`] and the new
/// holder's process tag if it handed the lock over; then [`TURN`] and the
/// queue's head if that waiter is to act now (take the lock left free, or
/// wait for the new holder's lease), or [`ANYONE`] if it left the lock free
/// with nobody queued; nothing more if the lock is still held (a minimum
/// hold, or a waiter leaving a held lock's queue).
pub(crate) const RELEASE_ID: &str = "release_id";
/// Separates a release id from the tag of the process it handed over to.
pub(crate) const GRANTED_TO: &str = "@";
/// Precedes `<process>:<claim>` of the waiter whose turn a write made it.
pub(crate) const TURN: &str = "^";
/// Ends the id of a write that left the lock free with nobody queued.
pub(crate) const ANYONE: &str = "*";
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

/// Filter for `key`'s lock while a lease on it runs by the server's clock.
pub(crate) fn held_by_key(key: &str) -> Document {
    doc! { "_id": key, "$expr": held_expr() }
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

/// A new acquisition's fencing token (see [`TOKENS_PER_MILLI`]).
fn next_token() -> Document {
    doc! { "$max": [
        { "$add": [{ "$ifNull": [field(TOKEN), 0_i64] }, 1_i64] },
        { "$multiply": [now_millis(), TOKENS_PER_MILLI] },
    ] }
}

/// The ending of a release id (see [`RELEASE_ID`]) for a lock left free,
/// whose queue's live entries are the array `live` (an expression): the
/// first entry's turn, or [`ANYONE`] if there is none.
fn turn_or_anyone(live: &str) -> Document {
    doc! { "$cond": [{ "$gt": [{ "$size": live }, 0] }, turn_of(live, 0), ANYONE] }
}

/// [`TURN`] and `<process>:<claim>` of the entry at `index` of the array
/// `live` (an expression), or an empty string if there is none.
fn turn_of(live: &str, index: i32) -> Document {
    doc! { "$let": {
        "vars": { "e": { "$arrayElemAt": [live, index] } },
        "in": { "$cond": [
            { "$gt": [{ "$size": live }, index] },
            { "$concat": [
                TURN,
                { "$ifNull": [format!("$$e.{PROCESS}"), ""] },
                ":",
                { "$ifNull": [format!("$$e.{WAITER}"), ""] },
            ] },
            "",
        ] },
    } }
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

mod acquire;
mod release;

pub use acquire::{acquire_pipeline, quick_filter, quick_take, Queueing, TickClaim};
pub(crate) use release::{free_for_anyone, queued_as, touch_pipeline, without_queue, HandOver};
pub use release::{leave_queue, release_plain, release_update};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_filter_matches_token_only_for_guards() {
        assert_eq!(by_holder("k", "o", None), doc! { "_id": "k", "owner": "o" });
        assert_eq!(
            by_holder("k", "o", Some(7)),
            doc! { "_id": "k", "owner": "o", "token": 7_i64 }
        );
    }
}
