//! When a scheduled job fires: a fixed period or a cron expression, in UTC,
//! as instants in milliseconds since the epoch.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Error;

/// How many fire times [`Schedule::between`] counts at most.
const MAX_COUNTED: u64 = 100_000;

/// When a job fires, parsed from text: a period (`"30s"`, `"1m"`, `"500ms"`,
/// `"2h"`, `"1d"`), whose ticks are the multiples of the period since the
/// Unix epoch, or a cron expression in UTC (`"0 2 * * *"`; six fields with
/// seconds first, `"*/5 * * * * *"`; nicknames such as `"@hourly"`),
/// parsed by [`croner`].
#[derive(Clone)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Every(i64),
    Cron(Box<croner::Cron>),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Schedule {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Schedule::parse(text)
    }
}

fn invalid(text: &str, reason: impl Into<String>) -> Error {
    Error::InvalidSchedule {
        schedule: text.to_owned(),
        reason: reason.into(),
    }
}

impl Schedule {
    /// Parses a period or a cron expression; see [`Schedule`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid(text, "empty"));
        }
        let kind = if trimmed.contains(char::is_whitespace) || trimmed.starts_with('@') {
            let cron = trimmed
                .parse::<croner::Cron>()
                .map_err(|e| invalid(text, e.to_string()))?;
            Kind::Cron(Box::new(cron))
        } else {
            Kind::Every(period_millis(trimmed).ok_or_else(|| {
                invalid(
                    text,
                    "expected a period such as \"30s\", \"1m\", \"500ms\", or a cron expression",
                )
            })?)
        };
        Ok(Self {
            text: trimmed.to_owned(),
            kind,
        })
    }

    /// A fixed period: ticks at the multiples of `period` since the epoch.
    pub fn every(period: Duration) -> Result<Self, Error> {
        let millis = i64::try_from(period.as_millis()).unwrap_or(i64::MAX);
        if millis <= 0 || millis > crate::validate::MAX_DURATION_MILLIS {
            return Err(invalid(
                &format!("{period:?}"),
                "a period must be at least 1 ms and at most MAX_DURATION",
            ));
        }
        Ok(Self {
            text: format!("{period:?}"),
            kind: Kind::Every(millis),
        })
    }

    /// The latest fire time at or before `at`.
    pub(crate) fn at_or_before(&self, at: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every(period) => Some(at.div_euclid(*period) * period),
            Kind::Cron(cron) => cron
                .find_previous_occurrence(&utc(at)?, true)
                .ok()
                .map(|t| t.timestamp_millis()),
        }
    }

    /// The earliest fire time strictly after `at`.
    pub(crate) fn after(&self, at: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every(period) => (at.div_euclid(*period) + 1).checked_mul(*period),
            Kind::Cron(cron) => cron
                .find_next_occurrence(&utc(at)?, false)
                .ok()
                .map(|t| t.timestamp_millis()),
        }
    }

    /// The fire times around `at` the server chooses the tick from (the
    /// one nearest its clock): the two before or at it and the one after.
    pub(crate) fn candidates(&self, at: i64) -> Vec<i64> {
        let mut out = Vec::with_capacity(3);
        if let Some(prev) = self.at_or_before(at) {
            if let Some(before) = self.at_or_before(prev - 1) {
                out.push(before);
            }
            out.push(prev);
        }
        if let Some(next) = self.after(at) {
            out.push(next);
        }
        out
    }

    /// The shortest gap between consecutive candidates of `at`.
    pub(crate) fn shortest_gap(candidates: &[i64]) -> Option<i64> {
        candidates.windows(2).map(|w| w[1] - w[0]).min()
    }

    /// How many fire times lie strictly between `from` and `to` (at most
    /// 100,000 are counted).
    pub(crate) fn between(&self, from: i64, to: i64) -> u64 {
        let mut count = 0;
        let mut at = from;
        while let Some(next) = self.after(at) {
            if next >= to || count >= MAX_COUNTED {
                break;
            }
            count += 1;
            at = next;
        }
        count
    }
}

/// `millis` as a UTC time, cut to the whole second (cron's resolution).
fn utc(millis: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(millis.div_euclid(1000) * 1000)
}

/// `"500ms"`, `"30s"`, `"1m"`, `"2h"`, `"1d"` in milliseconds.
fn period_millis(text: &str) -> Option<i64> {
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: i64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let millis = number.checked_mul(scale)?;
    (millis > 0 && millis <= crate::validate::MAX_DURATION_MILLIS).then_some(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_tick_at_multiples_since_the_epoch() {
        let s = Schedule::parse("1m").unwrap();
        assert_eq!(s.at_or_before(125_000), Some(120_000));
        assert_eq!(s.at_or_before(120_000), Some(120_000));
        assert_eq!(s.after(120_000), Some(180_000));
        assert_eq!(s.candidates(125_000), vec![60_000, 120_000, 180_000]);
        assert_eq!(s.between(0, 240_000), 3);
        assert_eq!(Schedule::parse("500ms").unwrap().after(0), Some(500));
    }

    #[test]
    fn cron_expressions_tick_in_utc() {
        // 02:00 every day.
        let s = Schedule::parse("0 2 * * *").unwrap();
        let day = 86_400_000;
        let two = 2 * 3_600_000;
        assert_eq!(s.after(day), Some(day + two));
        assert_eq!(s.at_or_before(day + two + 5), Some(day + two));
        // Seconds first, six fields.
        let s = Schedule::parse("*/5 * * * * *").unwrap();
        assert_eq!(s.after(1_000), Some(5_000));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        for bad in ["", "soon", "10x", "0s", "-1s", "61 * * * *", "1 2 3"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidSchedule { .. }), "{bad}: {e}");
        }
    }
}
