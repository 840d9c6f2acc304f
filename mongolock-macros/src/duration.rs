//! Durations written in the attribute: integer seconds or a string with a
//! unit, turned into milliseconds at compile time.

use syn::{Expr, ExprLit, Lit};

/// The longest duration accepted (366 days), as in the runtime crate.
pub(crate) const MAX_MILLIS: u64 = 366 * 24 * 60 * 60 * 1000;

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `60` (seconds) or `"1500ms"`, `"10s"`, `"2m"`, `"1h"`, `"1d"`.
pub(crate) fn parse_millis(expr: &Expr) -> syn::Result<u64> {
    let millis = match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            let secs: u64 = int.base10_parse()?;
            secs.checked_mul(1000)
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(parse_text(&s.value()).map_err(|msg| syn::Error::new_spanned(s, msg))?),
        _ => {
            return Err(syn::Error::new_spanned(
                expr,
                "expected whole seconds (`60`) or a duration string (`\"1500ms\"`, `\"10s\"`, `\"2m\"`, `\"1h\"`, `\"1d\"`)",
            ))
        }
    };
    match millis {
        Some(m) if m <= MAX_MILLIS => Ok(m),
        _ => Err(syn::Error::new_spanned(
            expr,
            "duration is longer than mongolock::MAX_DURATION (366 days)",
        )),
    }
}

fn parse_text(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!("invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h, d), like \"1500ms\" or \"2m\"")
    };
    if number.is_empty() {
        return Err(bad());
    }
    let factor = UNITS
        .iter()
        .find(|(name, _)| *name == unit.trim())
        .map(|(_, f)| *f)
        .ok_or_else(bad)?;
    let value: u64 = number.parse().map_err(|_| bad())?;
    value
        .checked_mul(factor)
        .ok_or_else(|| "duration is longer than mongolock::MAX_DURATION (366 days)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(src: &str) -> Result<u64, String> {
        let expr: Expr = syn::parse_str(src).map_err(|e| e.to_string())?;
        parse_millis(&expr).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_are_seconds() {
        assert_eq!(millis("60"), Ok(60_000));
        assert_eq!(millis("0"), Ok(0));
    }

    #[test]
    fn strings_take_units() {
        assert_eq!(millis("\"1500ms\""), Ok(1500));
        assert_eq!(millis("\"10s\""), Ok(10_000));
        assert_eq!(millis("\"2m\""), Ok(120_000));
        assert_eq!(millis("\"1h\""), Ok(3_600_000));
        assert_eq!(millis("\"1d\""), Ok(86_400_000));
        assert_eq!(millis("\" 5 s \""), Ok(5000));
    }

    #[test]
    fn bad_durations_are_errors() {
        for src in [
            "\"\"",
            "\"ms\"",
            "\"5\"",
            "\"5 years\"",
            "\"-5s\"",
            "\"1.5s\"",
            "-5",
            "x",
            "1.5",
        ] {
            assert!(millis(src).is_err(), "{src}");
        }
    }

    #[test]
    fn absurd_durations_are_errors() {
        assert_eq!(millis("31622400"), Ok(MAX_MILLIS)); // 366 days
        assert!(millis("31622401").is_err());
        assert!(millis("\"367d\"").is_err());
        assert!(millis("18446744073709551615").is_err());
        assert!(millis("\"99999999999999999999ms\"").is_err());
    }
}
