//! Which keys this process has seen contended lately: a hint, never a
//! decision. A fair attempt on a key not seen contended sends the light
//! pipeline (see [`crate::query::Queueing::expect_none`]), which the server
//! still refuses if a queue has formed since.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The most keys remembered; past it, those not seen lately are forgotten.
const MAX_KEYS: usize = 10_000;

/// Keys and when each was last found taken.
#[derive(Debug)]
pub(crate) struct Contention {
    seen: Mutex<HashMap<String, Instant>>,
    /// How long a key counts as contended after it was last found taken.
    lately: Duration,
}

impl Contention {
    pub(crate) fn new(lately: Duration) -> Self {
        Self {
            seen: Mutex::default(),
            lately,
        }
    }

    /// An attempt on `key` found it taken (or queued).
    pub(crate) fn saw(&self, key: &str) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_KEYS && !seen.contains_key(key) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < self.lately);
            if seen.len() >= MAX_KEYS {
                return;
            }
        }
        seen.insert(key.to_owned(), now);
    }

    /// Whether `key` was found taken within the last while.
    pub(crate) fn lately(&self, key: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(key).is_some_and(|at| at.elapsed() < self.lately)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_counts_as_contended_for_a_while_after_it_was_seen_taken() {
        let contention = Contention::new(Duration::from_secs(15));
        assert!(!contention.lately("k"));
        contention.saw("k");
        assert!(contention.lately("k"));
        assert!(!contention.lately("other"));
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(!contention.lately("k"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_forgets_old_keys_first() {
        let contention = Contention::new(Duration::from_secs(1));
        for i in 0..MAX_KEYS {
            contention.saw(&format!("old{i}"));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        contention.saw("new");
        assert!(contention.lately("new"));
        assert!(!contention.lately("old0"));
    }
}
