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
//! | `mongolock_leader_changes_total` | counter | a process began a term as leader |
//! | `mongolock_permits_in_use` | gauge | semaphore permits this process holds |
//! | `mongolock_waiters` | gauge | this process's semaphore and election waiters |
//! | `mongolock_runs_total` | counter | a scheduled job's claimed tick ended, labelled `outcome` |
//! | `mongolock_run_seconds` | histogram | how long a scheduled run took |
//! | `mongolock_missed_ticks_total` | counter | ticks nobody claimed, counted at the next claim |

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
    /// A new leader began its term.
    leader_changed,
    "mongolock_leader_changes_total"
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

/// Ticks of a scheduled job that nobody claimed.
pub(crate) fn missed_ticks(_key: &str, _missed: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!("mongolock_missed_ticks_total", "prefix" => prefix(_key)).increment(_missed);
}

/// A scheduled job's claimed tick ended with the outcome named `_outcome`
/// (as its run record names it), after `took` if it ran.
pub(crate) fn run_finished(_key: &str, _outcome: &'static str, _took: Option<std::time::Duration>) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("mongolock_runs_total", "prefix" => prefix(_key), "outcome" => _outcome)
            .increment(1);
        if let Some(took) = _took {
            metrics::histogram!("mongolock_run_seconds", "prefix" => prefix(_key))
                .record(took.as_secs_f64());
        }
    }
}

/// A gauge counted up while this value lives: a held permit, a waiter.
#[derive(Debug)]
pub(crate) struct Gauged {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl Gauged {
    fn new(_name: &'static str, _key: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let gauge = metrics::gauge!(_name, "prefix" => prefix(_key));
            gauge.increment(1.0);
            Self { gauge }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// A semaphore permit held by this process.
    pub(crate) fn permit(key: &str) -> Self {
        Self::new("mongolock_permits_in_use", key)
    }

    /// A semaphore or election waiter of this process.
    pub(crate) fn waiter(key: &str) -> Self {
        Self::new("mongolock_waiters", key)
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}
