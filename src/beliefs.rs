//! Histories of what worker processes *believed*, on the machine's one
//! clock, and the checks the nemesis tests make of them: no two beliefs at
//! once (or no more than N, for a semaphore), and fencing tokens growing in
//! the order of acquisition.

use std::collections::HashMap;

/// One belief: held from `start` to `end` (microseconds, the machine's
/// clock) with `token`, by worker `worker`.
#[derive(Debug, Clone)]
pub struct Belief {
    /// Which worker.
    pub worker: String,
    /// The fencing token it held with (0: none known).
    pub token: i64,
    /// From (microseconds).
    pub start: i64,
    /// To (microseconds).
    pub end: i64,
}

/// What the workers printed, and when the nemesis froze or killed them.
#[derive(Default)]
pub struct History {
    /// The beliefs ended so far.
    pub beliefs: Vec<Belief>,
    /// A belief whose end was not printed yet, per worker instance: its
    /// token, start and latest instant.
    pub open: HashMap<String, (i64, i64, i64)>,
}

impl History {
    /// Reads one line a worker printed: `S token start` (a belief began),
    /// `H token at` (still believed at `at`), `B token start end` (ended).
    pub fn line(&mut self, worker: &str, line: &str) {
        // The test harness may print "test child ... " before a line.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields
            .iter()
            .position(|f| *f == "S" || *f == "H" || *f == "B")
            .unwrap_or(fields.len());
        let numbers: Vec<i64> = fields[at..]
            .iter()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        match (fields.get(at), numbers.as_slice()) {
            (Some(&"S"), [token, start]) => {
                self.open
                    .insert(worker.to_owned(), (*token, *start, *start));
            }
            (Some(&"H"), [_, at]) => {
                if let Some((_, _, last)) = self.open.get_mut(worker) {
                    *last = *at;
                }
            }
            (Some(&"B"), [token, start, end]) => {
                self.open.remove(worker);
                self.beliefs.push(Belief {
                    worker: worker.to_owned(),
                    token: *token,
                    start: *start,
                    end: *end,
                });
            }
            _ => {}
        }
    }

    /// A worker was killed: a belief it had begun ended at the last
    /// instant it logged.
    pub fn killed(&mut self, worker: &str) {
        if let Some((token, start, last)) = self.open.remove(worker) {
            self.beliefs.push(Belief {
                worker: worker.to_owned(),
                token,
                start,
                end: last,
            });
        }
    }
}

/// The beliefs, checked: no two overlap, and Rust tokens grow in the order
/// of acquisition. Returns a description of each violation.
pub fn violations(beliefs: &mut [Belief]) -> Vec<String> {
    beliefs.sort_by_key(|b| b.start);
    let mut found = Vec::new();
    let mut latest: Option<&Belief> = None;
    let mut last_token: Option<&Belief> = None;
    for belief in beliefs.iter() {
        if let Some(before) = latest {
            if belief.start <= before.end {
                found.push(format!("overlap: {before:?} and {belief:?}"));
            }
        }
        if latest.is_none_or(|l| belief.end > l.end) {
            latest = Some(belief);
        }
        if belief.token != 0 {
            if let Some(before) = last_token {
                if belief.token <= before.token {
                    found.push(format!("token inversion: {before:?} then {belief:?}"));
                }
            }
            last_token = Some(belief);
        }
    }
    found
}

/// The most beliefs held at one instant, and that instant.
pub fn most_at_once(beliefs: &[Belief]) -> (usize, i64) {
    let mut edges: Vec<(i64, i32)> = beliefs
        .iter()
        .flat_map(|b| [(b.start, 1), (b.end, -1)])
        .collect();
    // At one instant, a start counts before an end: touching beliefs
    // overlap.
    edges.sort_by_key(|(at, step)| (*at, -*step));
    let (mut now, mut most, mut when) = (0_i32, 0_i32, 0);
    for (at, step) in edges {
        now += step;
        if now > most {
            most = now;
            when = at;
        }
    }
    (usize::try_from(most).unwrap_or(0), when)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belief_histories_are_checked_for_overlaps_and_inversions() {
        let belief = |worker: &str, token, start, end| Belief {
            worker: worker.to_owned(),
            token,
            start,
            end,
        };
        let mut clean = vec![
            belief("a", 1, 0, 10),
            belief("py", 0, 11, 20),
            belief("b", 2, 21, 30),
        ];
        assert!(violations(&mut clean).is_empty());
        let mut overlapping = vec![belief("a", 1, 0, 10), belief("b", 2, 10, 12)];
        assert_eq!(violations(&mut overlapping).len(), 1);
        // A long belief overlaps one that starts after a short one in between.
        let mut nested = vec![
            belief("a", 1, 0, 100),
            belief("b", 2, 5, 6),
            belief("c", 3, 50, 60),
        ];
        assert_eq!(violations(&mut nested).len(), 2);
        let mut inverted = vec![belief("a", 5, 0, 10), belief("b", 4, 11, 12)];
        assert_eq!(violations(&mut inverted).len(), 1);
    }

    #[test]
    fn the_most_beliefs_at_once_are_counted() {
        let b = |start, end| Belief {
            worker: "w".into(),
            token: 1,
            start,
            end,
        };
        assert_eq!(
            most_at_once(&[b(0, 10), b(5, 20), b(10, 30), b(31, 40)]).0,
            3
        );
        assert_eq!(most_at_once(&[b(0, 1), b(2, 3)]).0, 1);
    }
}
