//! What the server says about a lock.

use mongodb::bson::{DateTime, Document};

use crate::error::{Error, Result};
use crate::query::{ACQUIRED_AT, EXPIRES_AT, OWNER, TOKEN};

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
    /// document has been cleaned up and recreated.
    pub token: i64,
}

impl LockInfo {
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
        let acquired_at = doc.get_datetime(ACQUIRED_AT).ok().copied();
        let expires_at = *doc
            .get_datetime(EXPIRES_AT)
            .map_err(|_| corrupt(doc, "`expires_at` is missing or not a date"))?;
        let token = doc
            .get_i64(TOKEN)
            .map_err(|_| corrupt(doc, "`token` is missing or not a 64-bit integer"))?;
        Ok(Self {
            key,
            owner,
            acquired_at,
            expires_at,
            token,
        })
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
    fn foreign_document_is_reported_not_panicked() {
        let err = LockInfo::from_document(&doc! { "_id": "k", "owner": 5 }).err();
        assert!(matches!(err, Some(Error::Corrupt { .. })), "{err:?}");
    }
}
