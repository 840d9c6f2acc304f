//! Counters and histograms through the `metrics` facade, behind the
//! `metrics` feature: the application installs the exporter. Every series
//! is labelled by the key's prefix (the text before its first `:`), never
//! by the whole key, which would make one series per user or order.
//!
//! | name | kind | when |
//! |---|---|---|
//! | `mongolock_acquisitions_total` | counter | a lock was taken |
//! | `mongolock_busy_total` | counter | an acquisition gave up on a busy lock (`Locked`) |
//! | `mongolock_wait_seconds` | histogram | how long a taken lock was waited for |
//! | `mongolock_hold_seconds` | histogram | from acquisition to release |
//! | `mongolock_renewals_total` | counter | a background renewal was confirmed |
//! | `mongolock_lost_total` | counter | a held lock was lost |
//! | `mongolock_release_failures_total` | counter | a release failed (the lease runs out) |

#[cfg(feature = "metrics")]
use std::time::Duration;

/// The label value of `key`: its prefix before the first `:`.
#[cfg(feature = "metrics")]
fn prefix(key: &str) -> String {
    key.split(':').next().unwrap_or(key).to_owned()
}

macro_rules! counter {
    ($(#[$doc:meta])* $fn:ident, $name:literal) => {
        $(#[$doc])*
        pub(crate) fn $fn(_key: &str) {
            #[cfg(feature = "metrics")]
            metrics::counter!($name, "prefix" => prefix(_key)).increment(1);
        }
    };
}

counter!(
    /// A lock was taken.
    acquired,
    "mongolock_acquisitions_total"
);
counter!(
    /// An acquisition gave up on a busy lock.
    busy,
    "mongolock_busy_total"
);
counter!(
    /// A background renewal was confirmed.
    renewed,
    "mongolock_renewals_total"
);
counter!(
    /// A held lock was lost.
    lost,
    "mongolock_lost_total"
);
counter!(
    /// A release failed.
    release_failed,
    "mongolock_release_failures_total"
);

/// How long a taken lock was waited for.
pub(crate) fn waited(_key: &str, _wait: std::time::Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("mongolock_wait_seconds", "prefix" => prefix(_key))
        .record(Duration::as_secs_f64(&_wait));
}

/// How long a lock was held, at its release.
pub(crate) fn held(_key: &str, _hold: std::time::Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("mongolock_hold_seconds", "prefix" => prefix(_key))
        .record(Duration::as_secs_f64(&_hold));
}
