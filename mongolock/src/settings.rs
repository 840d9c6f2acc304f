//! What a `MongoLock` is set up with: the defaults, and the checks that
//! keep a combination of settings safe.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::validate;

/// The database [`MongoLock::new`](crate::MongoLock::new) uses, as in the Python package.
pub const DEFAULT_DATABASE: &str = "mongolock";

/// The collection [`MongoLock::new`](crate::MongoLock::new) uses, as in the Python package.
pub const DEFAULT_COLLECTION: &str = "lock";

/// The lease when none is given.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(60);

/// How long after its lease ended a lock document is deleted by the TTL
/// index, unless changed with [`MongoLock::with_cleanup_after`](crate::MongoLock::with_cleanup_after).
pub const DEFAULT_CLEANUP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest [`MongoLock::with_cleanup_after`](crate::MongoLock::with_cleanup_after) accepted. A deleted
/// document takes its fencing token with it; the next token is made from the
/// server's clock, which must not have fallen behind the clock that stamped
/// the old one by more than this (see [`MongoLock::with_max_clock_skew`](crate::MongoLock::with_max_clock_skew)).
pub const MIN_CLEANUP_AFTER: Duration = Duration::from_secs(60);

/// How far apart the clocks of the servers that stamp `$$NOW` (the primary
/// of each replica set over time, every `mongos`) may be, unless changed with
/// [`MongoLock::with_max_clock_skew`](crate::MongoLock::with_max_clock_skew). NTP keeps hosts of one network within
/// a few milliseconds; this leaves a margin of ten.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_millis(50);

/// How long one server round trip that has no deadline of its own may take,
/// unless changed with [`MongoLock::with_operation_timeout`](crate::MongoLock::with_operation_timeout): the driver's
/// default server selection timeout.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fair waiter's queue entry lasts after its last attempt (see
/// [`MongoLock::with_queue_expiry`](crate::MongoLock::with_queue_expiry)).
pub const DEFAULT_QUEUE_EXPIRY: Duration = Duration::from_secs(15);

/// How long a `MongoLock`'s change stream stays open with no waiter, unless
/// changed with [`MongoLock::with_stream_idle_close`](crate::MongoLock::with_stream_idle_close).
pub const DEFAULT_STREAM_IDLE_CLOSE: Duration = Duration::from_secs(60);

/// The default of [`MongoLock::with_run_history`](crate::MongoLock::with_run_history).
pub const DEFAULT_RUN_HISTORY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Settings kept when a `with_*` method makes a new `MongoLock`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) backoff: Backoff,
    pub(crate) cleanup_after: Duration,
    pub(crate) change_streams: bool,
    pub(crate) max_clock_skew: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) fair: bool,
    pub(crate) queue_expiry: Duration,
    pub(crate) stream_idle_close: Duration,
    pub(crate) run_history: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            cleanup_after: DEFAULT_CLEANUP_AFTER,
            change_streams: true,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            fair: true,
            queue_expiry: DEFAULT_QUEUE_EXPIRY,
            stream_idle_close: DEFAULT_STREAM_IDLE_CLOSE,
            run_history: DEFAULT_RUN_HISTORY,
        }
    }
}

/// Refuses a cleanup delay that a clock skew could outrun: tokens made from
/// a clock behind by more than the delay could repeat a deleted one.
pub(crate) fn validate_clocks(settings: &Settings) -> Result<()> {
    validate::bounded("cleanup_after", settings.cleanup_after)?;
    let reason = if settings.cleanup_after < MIN_CLEANUP_AFTER {
        "must be at least mongolock::MIN_CLEANUP_AFTER (60 s)"
    } else if settings.cleanup_after <= settings.max_clock_skew {
        "must be longer than the maximum clock skew, or fencing tokens could repeat"
    } else {
        return Ok(());
    };
    Err(Error::InvalidDuration {
        what: "cleanup_after",
        duration: settings.cleanup_after,
        reason,
    })
}
