//! How long a waiter or a retry waits before trying again.

use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};
use crate::validate;

/// Exponential backoff with jitter between a floor and a cap.
///
/// The n-th wait is drawn uniformly from the upper half of
/// `[floor, min(cap, floor * 2^n)]`, so waiters spread out but a waiter at
/// the cap polls at most once per `cap / 2`.
/// Waiters never sleep past their deadline, and make a last attempt at it.
///
/// ```
/// use std::time::Duration;
/// use mongolock::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(250))?;
/// assert_eq!(backoff.cap(), Duration::from_millis(250));
/// # Ok::<(), mongolock::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    floor: Duration,
    cap: Duration,
}

impl Default for Backoff {
    /// 10 ms to 2 s: a waiter that has polled a while costs the server
    /// at most one command a second.
    fn default() -> Self {
        Self {
            floor: Duration::from_millis(10),
            cap: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// A backoff between `floor` and `cap`. Both must be at least 1 ms, and
    /// `floor` must not exceed `cap`.
    pub fn new(floor: Duration, cap: Duration) -> Result<Self> {
        validate::positive_millis("backoff floor", floor)?;
        validate::positive_millis("backoff cap", cap)?;
        if floor > cap {
            return Err(Error::InvalidDuration {
                what: "backoff floor",
                duration: floor,
                reason: "must not exceed the backoff cap",
            });
        }
        Ok(Self { floor, cap })
    }

    /// The shortest wait.
    pub fn floor(&self) -> Duration {
        self.floor
    }

    /// The longest wait.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The wait before retry number `retry` (0-based).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .floor
            .checked_mul(1_u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .map_or(self.cap, |d| d.min(self.cap));
        let low = (ceiling / 2).max(self.floor);
        if ceiling <= low {
            return ceiling;
        }
        rand::rng().random_range(low..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_floor_and_cap() {
        let b = Backoff::new(Duration::from_millis(3), Duration::from_millis(40)).expect("valid");
        for retry in 0..100 {
            let d = b.delay(retry);
            assert!(d >= b.floor() && d <= b.cap(), "{retry}: {d:?}");
        }
        // At the cap, never more often than once per cap / 2.
        assert!((0..100).all(|_| b.delay(40) >= b.cap() / 2));
        assert_eq!(b.delay(0), b.floor());
    }

    #[test]
    fn floor_above_cap_is_refused() {
        let err = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(matches!(err, Err(Error::InvalidDuration { .. })));
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
    }
}
