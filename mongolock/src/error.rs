//! The one error type of the crate.

use std::time::Duration;

use mongodb::bson::DateTime;

/// Everything that can go wrong when taking, renewing or releasing a lock.
///
/// The enum is `#[non_exhaustive]`: match the variants you act on and keep a
/// catch-all arm. Errors from the MongoDB driver are kept whole in
/// [`Error::Mongo`], with the server's error code and labels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by someone else and could not be taken before the
    /// timeout ran out (or at the single attempt, when no timeout was set).
    ///
    /// It carries what the server said about the current holder at the last
    /// attempt. `owner` is `None` when the lock is free of an owner but still
    /// within a minimum hold time, or when the holder released it between the
    /// attempt and the read.
    #[error(
        "lock {key:?} is held by {} since {} and expires {}",
        display_opt(owner),
        display_opt(since),
        display_opt(expires)
    )]
    Locked {
        /// The key that was asked for.
        key: String,
        /// The current holder's owner token, as stored.
        owner: Option<String>,
        /// When the current holder took the lock, by the server's clock.
        since: Option<DateTime>,
        /// When the current lease ends, by the server's clock.
        expires: Option<DateTime>,
    },

    /// The lock was lost while it was believed held: a renewal found another
    /// owner or no lock at all, or the lease ran out before a renewal was
    /// confirmed.
    #[error("lock {key:?} held by {owner:?} was lost: {reason}")]
    LockLost {
        /// The key of the lost lock.
        key: String,
        /// The owner token this holder used.
        owner: String,
        /// What showed that the lock was lost.
        reason: String,
    },

    /// The server did not answer in time: a wait's deadline passed while an
    /// attempt was under way, or a single round trip outlasted the
    /// [operation timeout](crate::MongoLock::with_operation_timeout) (the
    /// server may be paused, failing over or unreachable). An operation cut
    /// short may still be applied by the server later; a lease it took then
    /// runs out.
    #[error("no answer from MongoDB for lock {key:?} within the timeout of {timeout:?}{}", cause.as_ref().map(|c| format!(" (last error: {c})")).unwrap_or_default())]
    TimedOut {
        /// The key that was asked for.
        key: String,
        /// The timeout that ran out.
        timeout: Duration,
        /// The driver's last error before the time ran out, if an attempt
        /// failed (the server unreachable, an election): the real cause.
        #[source]
        cause: Option<mongodb::error::Error>,
    },

    /// [`global`](crate::global) was called before [`configure`](crate::configure).
    #[error("mongolock is not configured: call mongolock::configure(MongoLock) once at startup")]
    NotConfigured,

    /// [`configure`](crate::configure) was called a second time.
    #[error("mongolock is already configured: configure() may be called only once")]
    AlreadyConfigured,

    /// The lock key cannot be used.
    #[error("invalid lock key {}: {reason}", preview(key))]
    InvalidKey {
        /// The key as given (shown shortened in the message).
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The owner token cannot be used.
    #[error("invalid lock owner {}: {reason}", preview(owner))]
    InvalidOwner {
        /// The owner as given (shown shortened in the message).
        owner: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A duration option is out of range.
    #[error("invalid {what} {duration:?}: {reason}")]
    InvalidDuration {
        /// Which option: `expires`, `timeout`, `min_hold`, ...
        what: &'static str,
        /// The value given.
        duration: Duration,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A semaphore's number of permits is out of range.
    #[error("invalid number of permits {permits} for semaphore {name:?}: must be 1 to mongolock::MAX_PERMITS (1000)")]
    InvalidPermits {
        /// The semaphore.
        name: String,
        /// The number given.
        permits: u32,
    },

    /// A job's schedule could not be parsed.
    #[error("invalid schedule {schedule:?}: {reason}")]
    InvalidSchedule {
        /// The schedule as given.
        schedule: String,
        /// Why it was refused.
        reason: String,
    },

    /// The connection string could not be parsed. The message never contains
    /// the credentials of the URI.
    #[error("invalid MongoDB connection string: {0}")]
    InvalidUri(String),

    /// A lock document in the collection does not have the shape this crate
    /// writes. Something else writes to the lock collection.
    #[error("unexpected lock document for key {key:?}: {reason}")]
    Corrupt {
        /// The key of the document.
        key: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The MongoDB user lacks a privilege the locks need on the lock
    /// collection (reported by [`MongoLock::check`](crate::MongoLock::check)).
    #[error("the MongoDB user lacks the {privilege:?} privilege on {namespace}: grant it (the readWrite role on the lock database has every privilege the locks need, changeStream included)")]
    MissingPrivilege {
        /// The privilege action, as MongoDB names it: `find`, `insert`,
        /// `update`, `remove`, `listIndexes`, `changeStream`.
        privilege: &'static str,
        /// The lock collection, as `db.collection`.
        namespace: String,
        /// The server's refusal.
        #[source]
        cause: mongodb::error::Error,
    },

    /// The MongoDB driver or server reported an error.
    #[error("MongoDB error: {0}")]
    Mongo(#[from] mongodb::error::Error),
}

impl Error {
    /// Whether the error may pass by itself (a lost connection, an
    /// election, a write concern not met in time), so that a waiter with
    /// time left tries again rather than giving up.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::TimedOut { .. } => true,
            Error::Mongo(e) => transient(e),
            _ => false,
        }
    }
}

/// Whether a driver error may pass by itself; see [`Error::is_transient`].
pub(crate) fn transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    /// Network, "not primary", "shutting down", interrupted, and
    /// time-limit codes: what an election or a slow majority looks like;
    /// also 133 (FailedToSatisfyReadPreference) and 134
    /// (ReadConcernMajorityNotAvailableYet), which servers return while a
    /// new primary is being chosen or catches up.
    const TRANSIENT_CODES: [i32; 17] = [
        6, 7, 50, 64, 89, 91, 133, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436,
    ];
    e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || match e.kind.as_ref() {
            ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. } => true,
            ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
            ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
            ErrorKind::Write(WriteFailure::WriteError(w)) => TRANSIENT_CODES.contains(&w.code),
            _ => false,
        }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn display_opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "-".to_owned(),
    }
}

/// Shows at most 64 characters of a user string, so a huge key does not make
/// a huge error message.
fn preview(s: &str) -> String {
    const SHOWN: usize = 64;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_some() {
        format!("{head:?}... ({} bytes)", s.len())
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_key_is_shortened_in_message() {
        let err = Error::InvalidKey {
            key: "x".repeat(10_000),
            reason: "too long",
        };
        let msg = err.to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("10000 bytes"), "{msg}");
    }

    #[test]
    fn locked_message_names_the_holder() {
        let err = Error::Locked {
            key: "job".into(),
            owner: Some("worker-1".into()),
            since: Some(DateTime::from_millis(0)),
            expires: None,
        };
        let msg = err.to_string();
        assert!(msg.contains("\"job\""), "{msg}");
        assert!(msg.contains("worker-1"), "{msg}");
        assert!(msg.contains("1970-01-01"), "{msg}");
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: std::error::Error + Send + Sync + 'static>() {}
        check::<Error>();
    }
}
