//! What this process has seen of each key lately: whether it was found
//! taken, and that its document exists. Hints, never decisions. A fair
//! attempt on a key not seen contended sends the light pipeline (see
//! [`crate::query::Queueing::expect_none`]), which the server still refuses
//! if a queue has formed since; on a key whose document is known to exist
//! it first tries the quick take (see [`crate::query::quick_take`]), which
//! the server refuses unless the lock is free, released and unqueued.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The most keys remembered; past it, those not seen lately are forgotten.
const MAX_KEYS: usize = 10_000;

/// Keys, when each was last seen and last found taken.
#[derive(Debug)]
pub(crate) struct Contention {
    seen: Mutex<HashMap<String, Seen>>,
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
        self.note(key, true);
    }

    /// A reply showed `key`'s document (it exists, or did then).
    pub(crate) fn exists(&self, key: &str) {
        self.note(key, false);
    }

    fn note(&self, key: &str, taken: bool) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_KEYS && !seen.contains_key(key) {
            seen.retain(|_, s| now.saturating_duration_since(s.at) < self.lately);
            if seen.len() >= MAX_KEYS {
                return;
            }
        }
        let entry = seen.entry(key.to_owned()).or_insert(Seen {
            at: now,
            taken: None,
        });
        entry.at = now;
        if taken {
            entry.taken = Some(now);
        }
    }

    /// What this process saw of `key` lately, in one look at the table.
    pub(crate) fn of(&self, key: &str) -> Hint {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.get(key);
        Hint {
            known: entry.is_some(),
            contended: entry
                .and_then(|s| s.taken)
                .is_some_and(|at| at.elapsed() < self.lately),
        }
    }

    #[cfg(test)]
    fn lately(&self, key: &str) -> bool {
        self.of(key).contended
    }

    #[cfg(test)]
    fn known(&self, key: &str) -> bool {
        self.of(key).known
    }
}

/// What this process saw of a key lately ([`Contention::of`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hint {
    /// A reply showed its document since this process last forgot it (a
    /// full table forgets the keys not seen lately first).
    pub(crate) known: bool,
    /// It was found taken within the last while.
    pub(crate) contended: bool,
}

/// What was seen of one key.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When a reply last showed its document.
    at: Instant,
    /// When it was last found taken.
    taken: Option<Instant>,
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
        assert!(contention.known("k"), "its document was seen");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_seen_free_is_known_but_not_contended() {
        let contention = Contention::new(Duration::from_secs(15));
        assert!(!contention.known("k"));
        contention.exists("k");
        assert!(contention.known("k"));
        assert!(!contention.lately("k"));
        contention.saw("k");
        contention.exists("k");
        assert!(
            contention.lately("k"),
            "seeing it again keeps its contention"
        );
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
