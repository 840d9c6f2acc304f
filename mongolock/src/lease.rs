//! The local view of a held lease: when it ends at the latest, whether it
//! was lost, and the background renewal that keeps it alive.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mongodb::bson::DateTime;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a lease counts as lost when its deadline passes unrenewed.
pub(crate) const RAN_OUT: &str = "the lease ran out before a renewal was confirmed";
/// Why a lease counts as lost when the server shows another holder.
pub(crate) const TAKEN: &str = "a renewal found another owner or no lock";

/// A local instant known to come before a reading of the server's clock:
/// a request was sent at `sent`, and its reply showed the server's `$$NOW`
/// at the write, `server`. Whatever pause hit this process in between, the
/// server read its clock after `sent`.
///
/// It is the one way this crate turns a lease's end, which is server time,
/// into a local instant to stop believing at: see
/// [`believed_until`](Self::believed_until).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub(crate) sent: Instant,
    pub(crate) server: DateTime,
}

impl Anchor {
    /// The last local instant at which a lease ending at `expires` (server
    /// time) may still be believed held: `sent` plus the server time from
    /// the anchor's reading to `expires`, less `allowance` of that span
    /// (clock skew, rate drift, rounding). The server reaches `expires` no
    /// sooner than that, since it read `server` after `sent`. A lease that
    /// ended before the reading, or that the allowance eats, is believed
    /// until `sent` at most, which is past.
    pub(crate) fn believed_until(
        &self,
        expires: DateTime,
        allowance: impl FnOnce(Duration) -> Duration,
    ) -> Instant {
        let span = expires
            .timestamp_millis()
            .saturating_sub(self.server.timestamp_millis());
        let span = Duration::from_millis(u64::try_from(span).unwrap_or(0));
        self.sent + span.saturating_sub(allowance(span))
    }
}

/// Shared by a guard and its renewal task.
///
/// The deadline is counted from when the acquiring or renewing request was
/// *sent*, over the lease less the drift allowance
/// ([`MongoLock::local_lease`](crate::MongoLock::local_lease)): the server starts the lease later than
/// that, so this view ends before the server's.
#[derive(Debug)]
pub(crate) struct Lease {
    deadline: Mutex<Instant>,
    lost: watch::Sender<Option<&'static str>>,
}

impl Lease {
    /// A lease believed held until `until` (see [`Anchor::believed_until`]).
    pub(crate) fn new(until: Instant) -> Arc<Self> {
        Arc::new(Self {
            deadline: Mutex::new(until),
            lost: watch::Sender::new(None),
        })
    }

    /// The last instant the lease is believed held, unless extended.
    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A confirmed renewal sent at `sent`. A lost lease stays lost.
    pub(crate) fn extend(&self, sent: Instant, lease: Duration) {
        if self.lost.borrow().is_none() {
            *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = sent + lease;
        }
    }

    /// Records the first reason the lease was lost.
    pub(crate) fn mark_lost(&self, reason: &'static str) {
        self.lost.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the lease was lost, if it was. A passed deadline counts.
    pub(crate) fn lost_reason(&self) -> Option<&'static str> {
        if let Some(reason) = *self.lost.borrow() {
            return Some(reason);
        }
        if Instant::now() >= self.deadline() {
            self.mark_lost(RAN_OUT);
        }
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub(crate) async fn wait_lost(&self) -> &'static str {
        let mut changes = self.lost.subscribe();
        loop {
            if let Some(reason) = self.lost_reason() {
                return reason;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline()) => {}
                _ = changes.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_percent(span: Duration) -> Duration {
        span / 100
    }

    #[tokio::test(start_paused = true)]
    async fn an_anchor_counts_the_lease_from_the_request_less_the_allowance() {
        let sent = Instant::now();
        let anchor = Anchor {
            sent,
            server: DateTime::from_millis(1_000_000),
        };
        // A lease of 10 s from the server's reading.
        let until = anchor.believed_until(DateTime::from_millis(1_010_000), one_percent);
        assert_eq!(until, sent + Duration::from_millis(9_900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_granted_before_the_anchor_is_not_believed_past_it() {
        // The stale handover: a lease the server granted (and ended) before
        // a later attempt's reading. However late it is delivered, it is
        // believed no later than that attempt was sent.
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        let later = Anchor {
            sent: Instant::now(),
            server: DateTime::from_millis(5_000),
        };
        for expires in [0, 4_000, 5_000] {
            let until = later.believed_until(DateTime::from_millis(expires), one_percent);
            assert!(until <= Instant::now(), "{expires}");
        }
        // An older anchor never gives a later belief than the truth allows:
        // the server read 2_000 after `sent`, so a lease to 4_000 ends
        // no sooner than sent + 2 s (less 1%).
        let older = Anchor {
            sent,
            server: DateTime::from_millis(2_000),
        };
        let until = older.believed_until(DateTime::from_millis(4_000), one_percent);
        assert_eq!(until, sent + Duration::from_millis(1_980));
        assert!(until < Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn an_allowance_larger_than_the_span_ends_belief_at_the_anchor() {
        let anchor = Anchor {
            sent: Instant::now(),
            server: DateTime::from_millis(0),
        };
        let until = anchor.believed_until(DateTime::from_millis(10), |_| Duration::from_secs(1));
        assert_eq!(until, anchor.sent);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_is_lost_when_its_deadline_passes() {
        let lease = Lease::new(Instant::now() + Duration::from_secs(3));
        assert_eq!(lease.lost_reason(), None);
        assert_eq!(lease.wait_lost().await, RAN_OUT);
        assert_eq!(lease.lost_reason(), Some(RAN_OUT));
    }

    #[tokio::test(start_paused = true)]
    async fn extension_moves_the_deadline_until_lost() {
        let lease = Lease::new(Instant::now() + Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(2)).await;
        lease.extend(Instant::now(), Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(lease.lost_reason(), None);
        lease.mark_lost(TAKEN);
        lease.extend(Instant::now(), Duration::from_secs(3));
        assert_eq!(lease.lost_reason(), Some(TAKEN), "a lost lease stays lost");
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_wakes_when_marked_lost() {
        let lease = Lease::new(Instant::now() + Duration::from_secs(3600));
        let waiter = tokio::spawn({
            let lease = lease.clone();
            async move { lease.wait_lost().await }
        });
        tokio::task::yield_now().await;
        lease.mark_lost(TAKEN);
        assert_eq!(waiter.await.ok(), Some(TAKEN));
    }
}
