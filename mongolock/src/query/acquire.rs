//! The acquisition's pipelines: the single round trip that takes a lock,
//! queues a fair waiter or claims a scheduled tick.

use mongodb::bson::{doc, Bson, Document};

use super::*;

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
    // What a taking attempt writes; `$$free` tells a new acquisition from
    // a re-entry, which keeps its token and times.
    let on_new = |name: &str, new: Bson| Bson::from(doc! { "$cond": ["$$free", new, field(name)] });
    let taken = taken(owner, claim, lease_millis, on_new, next_token().into());
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

/// The fields an acquisition writes: the holder, its claim, its lease from
/// the server's now, the Python package's view of it, and, through
/// `on_new(field, value)`, the times and the fencing `token` of a new
/// acquisition (a re-entry keeps the old ones).
fn taken(
    owner: &str,
    claim: &str,
    lease_millis: i64,
    on_new: impl Fn(&str, Bson) -> Bson,
    token: Bson,
) -> Document {
    let expires = doc! { "$add": ["$$NOW", lease_millis] };
    doc! {
        OWNER: { "$literal": owner },
        CLAIM: { "$literal": claim },
        ACQUIRED_AT: on_new(ACQUIRED_AT, "$$NOW".into()),
        EXPIRES_AT: &expires,
        TOKEN: on_new(TOKEN, token),
        PY_LOCKED: true,
        PY_EXPIRE: &expires,
        PY_CREATED: on_new(PY_CREATED, "$$NOW".into()),
    }
}

/// The quick take of an uncontended lock: an `update` (no upsert, nothing
/// returned) whose filter ([`quick_filter`]) matches only a lock that is
/// free without asking any clock, and whose one `$set` stage takes it with
/// the fencing token `token`, proposed by the client. It matched (the
/// reply's `n` is 1) exactly when it took the lock: `n` is defined alike
/// on every server, unlike whether a write that changes nothing counts as
/// modified.
///
/// What it spares, on the path most acquisitions take: the `findAndModify`
/// and the document it sends back, and every expression of the acquire
/// pipeline (its filter holds no `$expr`). A refused quick take (the lock
/// held, expired but not released, queued, under a minimum hold, the
/// document gone, or the token not above the last) is followed by the
/// acquire pipeline, which decides by the server's clock.
pub fn quick_take(owner: &str, claim: &str, lease_millis: i64, token: i64) -> Vec<Document> {
    vec![doc! { "$set": taken(owner, claim, lease_millis, |_, new| new, token.into()) }]
}

/// The filter of [`quick_take`]: the lock `key` was released and nothing
/// holds it (no `owner`, the Python package's `locked` false: a release
/// with a minimum hold still running keeps `locked`), nobody queues, and
/// its fencing token is below `token` (or it has none, after the Python
/// package replaced the document), so tokens only grow. Plain query
/// operators, no `$expr`: a server matches it with its index on `_id`.
pub fn quick_filter(key: &str, token: i64) -> Document {
    doc! {
        "_id": key,
        OWNER: null_bson(),
        PY_LOCKED: false,
        format!("{QUEUE}.0"): { "$exists": false },
        TOKEN: { "$not": { "$gte": token } },
    }
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
}
