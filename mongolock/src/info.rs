//! What the server says about a lock.

use mongodb::bson::{DateTime, Document};

use crate::error::{Error, Result};
use crate::query::{
    ACQUIRED_AT, EXPIRES_AT, LAST_TICK, OWNER, PREV_TICK, PY_CREATED, PY_EXPIRE, PY_LOCKED, QUEUE,
    TICK_BY, TOKEN, VALUE, VALUE_TEXT, VALUE_TOKEN,
};

/// A lock document as the server wrote it.
///
/// Times are the server's. Whether the lease is still running depends on the
/// server's clock too: ask [`MongoLock::is_locked`](crate::MongoLock::is_locked)
/// rather than comparing `expires_at` with this machine's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock key (the document's `_id`).
    pub key: String,
    /// The holder's owner token; `None` once the lock was released.
    pub owner: Option<String>,
    /// When the current or last holder took the lock.
    pub acquired_at: Option<DateTime>,
    /// When the lease ends (or ended).
    pub expires_at: DateTime,
    /// The fencing token of the current or last acquisition. It grows with
    /// every acquisition of this key and never goes back, even after the
    /// document has been cleaned up and recreated. 0 for a lock the Python
    /// package `mongolock` took, which has no token.
    pub token: i64,
    /// The last tick a [scheduled job](crate::Job) claimed on this key, by
    /// the server's choice; `None` for a plain lock.
    pub tick: Option<DateTime>,
    /// The value the holder proclaimed, in a [leader election](crate::Election).
    pub value: Option<String>,
    /// Fair waiters queued on the key (entries whose waiter stopped
    /// asking count until they lapse, within the queue expiry).
    pub waiters: usize,
    /// The tick claimed before it.
    pub(crate) prev_tick: Option<i64>,
    /// The claim of the attempt that claimed `tick`.
    pub(crate) tick_by: Option<String>,
}

impl LockInfo {
    /// What a [quick take](crate::query::quick_take) knows of the lock it
    /// took, whose reply carries no document: its holder, its token, and
    /// `at`, a lower bound of the server's clock when the request left, for
    /// the server's `acquired_at` (and `at + lease` for `expires_at`).
    pub(crate) fn granted(
        key: &str,
        owner: &str,
        token: i64,
        at: DateTime,
        lease_millis: i64,
    ) -> Self {
        Self {
            key: key.to_owned(),
            owner: Some(owner.to_owned()),
            acquired_at: Some(at),
            expires_at: DateTime::from_millis(at.timestamp_millis().saturating_add(lease_millis)),
            token,
            tick: None,
            value: None,
            waiters: 0,
            prev_tick: None,
            tick_by: None,
        }
    }

    pub(crate) fn from_document(doc: &Document) -> Result<Self> {
        let key = doc
            .get_str("_id")
            .map_err(|_| corrupt(doc, "`_id` is not a string"))?
            .to_owned();
        let owner = match doc.get(OWNER) {
            None | Some(mongodb::bson::Bson::Null) => None,
            Some(_) => Some(
                doc.get_str(OWNER)
                    .map_err(|_| corrupt(doc, "`owner` is not a string"))?
                    .to_owned(),
            ),
        };
        let acquired_at = doc
            .get_datetime(ACQUIRED_AT)
            .or_else(|_| doc.get_datetime(PY_CREATED))
            .ok()
            .copied();
        let expires_at = match doc.get_datetime(EXPIRES_AT) {
            Ok(ours) => *ours,
            Err(_) => python_expiry(doc)
                .ok_or_else(|| corrupt(doc, "`expires_at` is missing or not a date"))?,
        };
        // A lock the Python package wrote and this crate never took has no
        // token yet; its first acquisition here gets one.
        let token = match doc.get(TOKEN) {
            None => 0,
            Some(_) => doc
                .get_i64(TOKEN)
                .map_err(|_| corrupt(doc, "`token` is not a 64-bit integer"))?,
        };
        Ok(Self {
            key,
            owner,
            acquired_at,
            expires_at,
            token,
            tick: doc.get_i64(LAST_TICK).ok().map(DateTime::from_millis),
            value: doc
                .get_document(VALUE)
                .ok()
                .filter(|v| v.get_i64(VALUE_TOKEN) == Ok(token))
                .and_then(|v| v.get_str(VALUE_TEXT).ok())
                .map(str::to_owned),
            waiters: doc.get_array(QUEUE).map_or(0, Vec::len),
            prev_tick: doc.get_i64(PREV_TICK).ok(),
            tick_by: doc.get_str(TICK_BY).ok().map(str::to_owned),
        })
    }
}

/// The lease end of a document only the Python package `mongolock` wrote:
/// its `expire` (set by its client's clock), or never while it is `locked`
/// without one; `None` if it has neither field.
fn python_expiry(doc: &Document) -> Option<DateTime> {
    let locked = doc.get_bool(PY_LOCKED).ok()?;
    match doc.get_datetime(PY_EXPIRE) {
        Ok(expire) => Some(*expire),
        Err(_) if locked => Some(DateTime::MAX),
        Err(_) => Some(DateTime::MIN),
    }
}

fn corrupt(doc: &Document, reason: &str) -> Error {
    Error::Corrupt {
        key: doc.get("_id").map(ToString::to_string).unwrap_or_default(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn released_lock_has_no_owner() {
        let info = LockInfo::from_document(&doc! {
            "_id": "k", "acquired_at": DateTime::from_millis(1),
            "expires_at": DateTime::from_millis(2), "token": 3_i64,
        })
        .ok();
        assert_eq!(info.map(|i| (i.owner, i.token)), Some((None, 3)));
    }

    #[test]
    fn python_package_lock_reads_as_held_until_its_expire() {
        let info = LockInfo::from_document(&doc! {
            "_id": "k", "locked": true, "owner": "py", "created": DateTime::from_millis(1),
            "expire": DateTime::from_millis(9),
        })
        .unwrap();
        assert_eq!(
            (
                info.owner.as_deref(),
                info.acquired_at,
                info.expires_at,
                info.token
            ),
            (
                Some("py"),
                Some(DateTime::from_millis(1)),
                DateTime::from_millis(9),
                0
            )
        );
        let forever = LockInfo::from_document(&doc! {
            "_id": "k", "locked": true, "owner": "py", "expire": null,
        })
        .unwrap();
        assert_eq!(forever.expires_at, DateTime::MAX);
    }

    #[test]
    fn foreign_document_is_reported_not_panicked() {
        let err = LockInfo::from_document(&doc! { "_id": "k", "owner": 5 }).err();
        assert!(matches!(err, Some(Error::Corrupt { .. })), "{err:?}");
    }
}
