//! Checks on user input, done before anything is sent to the server.

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest owner token accepted, in bytes of UTF-8.
pub const MAX_OWNER_BYTES: usize = 1024;

/// The longest duration accepted for any option (one year). Longer values are
/// almost always a unit mistake, and far larger ones overflow BSON dates.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// [`MAX_DURATION`] in milliseconds.
pub(crate) const MAX_DURATION_MILLIS: i64 = 366 * 24 * 60 * 60 * 1000;

pub(crate) fn key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "the key is empty"
    } else if key.len() > MAX_KEY_BYTES {
        "the key is longer than MAX_KEY_BYTES (1024 bytes)"
    } else if key.contains('\0') {
        "the key contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}

pub(crate) fn owner(owner: &str) -> Result<()> {
    let reason = if owner.is_empty() {
        "the owner is empty"
    } else if owner.len() > MAX_OWNER_BYTES {
        "the owner is longer than MAX_OWNER_BYTES (1024 bytes)"
    } else if owner.contains('\0') {
        "the owner contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidOwner {
        owner: owner.to_owned(),
        reason,
    })
}

/// A key and the owner that claims it.
pub(crate) fn holder(key: &str, owner: &str) -> Result<()> {
    self::key(key)?;
    self::owner(owner)
}

/// A duration that must be at least one millisecond (a lease, an interval),
/// returned in whole milliseconds.
pub(crate) fn positive_millis(what: &'static str, duration: Duration) -> Result<i64> {
    let millis = bounded(what, duration)?;
    if millis == 0 {
        return Err(Error::InvalidDuration {
            what,
            duration,
            reason: "must be at least 1 millisecond",
        });
    }
    Ok(millis)
}

/// A duration that may be zero (a timeout, a minimum hold), in whole
/// milliseconds.
pub(crate) fn bounded(what: &'static str, duration: Duration) -> Result<i64> {
    if duration > MAX_DURATION {
        return Err(Error::InvalidDuration {
            what,
            duration,
            reason: "must not exceed mongolock::MAX_DURATION (366 days)",
        });
    }
    // Cannot fail below MAX_DURATION; the fallback keeps this panic-free.
    i64::try_from(duration.as_millis()).map_err(|_| Error::InvalidDuration {
        what,
        duration,
        reason: "does not fit in BSON milliseconds",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_refused() {
        assert!(matches!(key(""), Err(Error::InvalidKey { .. })));
    }

    #[test]
    fn key_at_limit_is_accepted_and_one_more_byte_refused() {
        assert!(key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(matches!(
            key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn operator_like_and_unicode_keys_are_plain_strings() {
        for k in ["$where", "a.b", "{$gt: 1}", "ключ", "🔒"] {
            assert!(key(k).is_ok(), "{k}");
        }
    }

    #[test]
    fn nul_in_key_or_owner_is_refused() {
        assert!(matches!(key("a\0b"), Err(Error::InvalidKey { .. })));
        assert!(matches!(owner("a\0b"), Err(Error::InvalidOwner { .. })));
    }

    #[test]
    fn zero_and_submillisecond_leases_are_refused() {
        for d in [Duration::ZERO, Duration::from_micros(999)] {
            assert!(matches!(
                positive_millis("expires", d),
                Err(Error::InvalidDuration {
                    what: "expires",
                    ..
                })
            ));
        }
        assert_eq!(
            positive_millis("expires", Duration::from_millis(1)).ok(),
            Some(1)
        );
    }

    #[test]
    fn huge_durations_are_refused() {
        for d in [MAX_DURATION + Duration::from_millis(1), Duration::MAX] {
            assert!(matches!(
                bounded("timeout", d),
                Err(Error::InvalidDuration { .. })
            ));
        }
        assert!(bounded("timeout", MAX_DURATION).is_ok());
        assert_eq!(bounded("timeout", Duration::ZERO).ok(), Some(0));
    }
}
