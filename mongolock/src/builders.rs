//! The settings a `MongoLock` is built with: each `with_*` returns a new
//! `MongoLock` on the same collection.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::mongo_lock::MongoLock;
use crate::settings::{validate_clocks, Settings};
use crate::validate;

impl MongoLock {
    /// The same locks, polling with `backoff` when no change stream tells
    /// waiters of releases.
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        let settings = Settings {
            backoff,
            ..*self.settings()
        };
        self.with_settings(settings)
    }

    /// The same locks, with waiters woken by a change stream (`true`, the
    /// default) or polling only (`false`). Without change stream support
    /// (a standalone server, missing permissions) waiters poll anyway.
    pub fn with_change_streams(self, enabled: bool) -> Self {
        let settings = Settings {
            change_streams: enabled,
            ..*self.settings()
        };
        self.with_settings(settings)
    }

    /// The same locks, with the change stream closed once it has had no
    /// waiter for `after` (default [`DEFAULT_STREAM_IDLE_CLOSE`](crate::DEFAULT_STREAM_IDLE_CLOSE)); the next
    /// waiter that finds a lock taken opens it again. The stream is checked
    /// each time the server answers one of its `getMore`s, which it does at
    /// least every 10 s, so it closes between `after` and `after` + 10 s.
    ///
    /// An open stream costs the server a cursor (on MongoDB, one that reads
    /// the oplog) and a `getMore` per 10 s while nothing happens; a
    /// reopened one costs an `aggregate`, and every waiter then looks at its
    /// lock once more. `Duration::ZERO` closes it at the first check without
    /// a waiter. `after` over [`MAX_DURATION`](crate::MAX_DURATION) is an
    /// [`Error::InvalidDuration`].
    pub fn with_stream_idle_close(self, after: Duration) -> Result<Self> {
        validate::bounded("stream_idle_close", after)?;
        let settings = Settings {
            stream_idle_close: after,
            ..*self.settings()
        };
        Ok(self.with_settings(settings))
    }

    /// The same locks, with lock documents deleted `after` their lease ended
    /// (default [`DEFAULT_CLEANUP_AFTER`](crate::DEFAULT_CLEANUP_AFTER), at least [`MIN_CLEANUP_AFTER`](crate::MIN_CLEANUP_AFTER), and
    /// longer than the [maximum clock skew](Self::with_max_clock_skew)).
    ///
    /// A deleted document takes its fencing token with it, and the next
    /// acquisition starts from the server's clock (in microseconds of
    /// millisecond resolution). Tokens therefore keep growing across a
    /// deletion as long as no server clock is behind by more than `after`.
    pub fn with_cleanup_after(self, after: Duration) -> Result<Self> {
        let settings = Settings {
            cleanup_after: after,
            ..*self.settings()
        };
        validate_clocks(&settings)?;
        Ok(self.with_settings(settings))
    }

    /// The same locks, assuming the clocks of the servers that stamp
    /// `$$NOW` are at most `skew` apart (default
    /// [`DEFAULT_MAX_CLOCK_SKEW`](crate::DEFAULT_MAX_CLOCK_SKEW)). Those are the primary of a replica set
    /// (a failover hands the decision to another host's clock) and, on a
    /// sharded cluster, every `mongos`.
    ///
    /// A holder treats its lease as ended [`drift_allowance`] early, so it
    /// knows it lost the lock before any server can let another worker in.
    /// `skew` must be shorter than the cleanup delay.
    ///
    /// [`drift_allowance`]: Self::drift_allowance
    pub fn with_max_clock_skew(self, skew: Duration) -> Result<Self> {
        validate::bounded("max_clock_skew", skew)?;
        let settings = Settings {
            max_clock_skew: skew,
            ..*self.settings()
        };
        validate_clocks(&settings)?;
        Ok(self.with_settings(settings))
    }

    /// The same locks, with each server round trip that has no deadline of
    /// its own (a single attempt, a touch, a renewal, a release, a read)
    /// bounded by `timeout` (default [`DEFAULT_OPERATION_TIMEOUT`](crate::DEFAULT_OPERATION_TIMEOUT)); one that
    /// takes longer fails with [`Error::TimedOut`]. Waits with a timeout are
    /// bounded by their deadline instead.
    pub fn with_operation_timeout(self, timeout: Duration) -> Result<Self> {
        validate::positive_millis("operation_timeout", timeout)?;
        let settings = Settings {
            operation_timeout: timeout,
            ..*self.settings()
        };
        Ok(self.with_settings(settings))
    }

    /// The same locks, with [`acquire()`](Self::acquire) fair (`true`, the
    /// default) or not unless the acquisition says otherwise with
    /// [`Acquire::fair`](crate::Acquire::fair).
    pub fn with_fairness(self, fair: bool) -> Self {
        let settings = Settings {
            fair,
            ..*self.settings()
        };
        self.with_settings(settings)
    }

    /// The same locks, with a fair waiter's queue entry lasting `expiry`
    /// after each of its attempts (default [`DEFAULT_QUEUE_EXPIRY`](crate::DEFAULT_QUEUE_EXPIRY), at least
    /// 30 ms). A waiting waiter re-asks every `expiry / 3`, which is all a
    /// waiter costs the server while the lock stays taken; a waiter that
    /// died holds up the queue for at most `expiry`, also when a release
    /// hands it the lock (its lease is cut at its entry's expiry).
    pub fn with_queue_expiry(self, expiry: Duration) -> Result<Self> {
        validate::bounded("queue_expiry", expiry)?;
        if expiry < Duration::from_millis(30) {
            return Err(Error::InvalidDuration {
                what: "queue_expiry",
                duration: expiry,
                reason: "must be at least 30 ms",
            });
        }
        let settings = Settings {
            queue_expiry: expiry,
            ..*self.settings()
        };
        Ok(self.with_settings(settings))
    }

    /// How long the run records of [scheduled jobs](crate::Job) are kept
    /// (default [`DEFAULT_RUN_HISTORY`](crate::DEFAULT_RUN_HISTORY), 30
    /// days): a TTL index on their start deletes older ones.
    pub fn with_run_history(self, keep: Duration) -> Result<Self> {
        validate::positive_millis("run_history", keep)?;
        let settings = Settings {
            run_history: keep,
            ..*self.settings()
        };
        Ok(self.with_settings(settings))
    }
}
