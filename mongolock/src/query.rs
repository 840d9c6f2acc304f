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

/// Field names of a lock document. `_id` is the key.
pub(crate) const OWNER: &str = "owner";
pub(crate) const ACQUIRED_AT: &str = "acquired_at";
pub(crate) const EXPIRES_AT: &str = "expires_at";
pub(crate) const TOKEN: &str = "token";

/// A scratch field used between pipeline stages and removed at the end.
const SCRATCH: &str = "_mongolock";

fn now_millis() -> Bson {
    Bson::Document(doc! { "$toLong": "$$NOW" })
}

/// The stored expiry in milliseconds, 0 when there is none (a new document).
fn expires_millis() -> Bson {
    Bson::Document(doc! { "$ifNull": [{ "$toLong": format!("${EXPIRES_AT}") }, 0_i64] })
}

/// True when the lease is still running by the server's clock.
pub(crate) fn held_expr() -> Document {
    doc! { "$gt": [expires_millis(), now_millis()] }
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

/// The single-round-trip acquisition, used with `findOneAndUpdate`, upsert,
/// and the document returned after the update.
///
/// - `free`: no lease is running (new document, released, or expired).
/// - `mine`: `owner` holds a running lease (a retry after a lost reply, or a
///   re-entry); it renews the lease and keeps the token and `acquired_at`.
/// - A new acquisition (`free`) gets a fencing token of
///   `max(previous + 1, server epoch millis)`, which keeps growing even after
///   the TTL index deleted the document.
/// - Otherwise the document is written back unchanged.
pub fn acquire_pipeline(owner: &str, lease_millis: i64) -> Vec<Document> {
    let free = format!("${SCRATCH}.free");
    let mine = format!("${SCRATCH}.mine");
    let take = doc! { "$or": [&free, &mine] };
    vec![
        doc! { "$set": { SCRATCH: { "free": { "$lte": [expires_millis(), now_millis()] } } } },
        doc! { "$set": { format!("{SCRATCH}.mine"): { "$and": [
            { "$eq": [format!("${OWNER}"), { "$literal": owner }] },
            { "$not": [&free] },
        ] } } },
        doc! { "$set": {
            OWNER: { "$cond": [&take, { "$literal": owner }, format!("${OWNER}")] },
            ACQUIRED_AT: { "$cond": [&free, "$$NOW", format!("${ACQUIRED_AT}")] },
            EXPIRES_AT: { "$cond": [&take, { "$add": ["$$NOW", lease_millis] }, format!("${EXPIRES_AT}")] },
            TOKEN: { "$cond": [&free,
                { "$max": [{ "$add": [{ "$ifNull": [format!("${TOKEN}"), 0_i64] }, 1_i64] }, now_millis()] },
                format!("${TOKEN}"),
            ] },
        } },
        doc! { "$unset": SCRATCH },
    ]
}

/// Extends the lease from the server's now. Used with a [`by_holder`] filter.
pub(crate) fn touch_pipeline(lease_millis: i64) -> Vec<Document> {
    vec![doc! { "$set": { EXPIRES_AT: { "$add": ["$$NOW", lease_millis] } } }]
}

/// Marks the lock free but keeps the document, so its fencing token carries
/// on. With a minimum hold the lease ends at `acquired_at + min_hold` if that
/// is later than now. Used with a [`by_holder`] filter.
pub fn release_pipeline(min_hold_millis: i64) -> Vec<Document> {
    let ends = if min_hold_millis > 0 {
        let hold_until = doc! { "$add": [format!("${ACQUIRED_AT}"), min_hold_millis] };
        Bson::Document(doc! { "$cond": [
            { "$gt": [{ "$toLong": &hold_until }, now_millis()] },
            &hold_until,
            "$$NOW",
        ] })
    } else {
        Bson::String("$$NOW".to_owned())
    };
    vec![
        doc! { "$set": { EXPIRES_AT: ends } },
        doc! { "$unset": OWNER },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_always_literal_in_acquire_pipeline() {
        let text: String = acquire_pipeline("$evil", 1000)
            .iter()
            .map(ToString::to_string)
            .collect();
        let uses = text.matches("\"$evil\"").count();
        let wrapped = text.matches("\"$literal\": \"$evil\"").count();
        assert_eq!(uses, 2, "{text}");
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
    fn release_without_min_hold_ends_lease_now() {
        assert_eq!(
            release_pipeline(0),
            vec![
                doc! { "$set": { "expires_at": "$$NOW" } },
                doc! { "$unset": "owner" }
            ]
        );
    }
}
