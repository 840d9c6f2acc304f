//! The attribute's arguments: `key = "...", expires = 60, ...`.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Path, Token};

use crate::duration;

/// Every argument name, in the order the docs list them.
pub(crate) const NAMES: &[&str] = &[
    "key", "expires", "timeout", "renew", "min_hold", "on_busy", "fair", "owner", "lock",
    "schedule", "permits", "crate",
];

/// Arguments that do not go with `permits`, and why.
const NOT_WITH_PERMITS: &[(&str, &str)] = &[
    ("min_hold", "a permit is returned when the body ends"),
    ("fair", "waiters for a permit always queue in order"),
    ("owner", "each permit has an owner of its own"),
    (
        "schedule",
        "a scheduled job runs once per tick, not N at a time",
    ),
];

/// Arguments that do not go with `schedule`, and why.
const NOT_WITH_SCHEDULE: &[(&str, &str)] = &[
    (
        "timeout",
        "a scheduled run claims its tick once, without waiting",
    ),
    (
        "min_hold",
        "a claimed tick is never run again, however short the run",
    ),
    (
        "on_busy",
        "a tick that is not this process's to run is always skipped",
    ),
    ("fair", "a scheduled run never queues"),
    (
        "owner",
        "each run has an owner of its own, recorded with the run",
    ),
    ("renew", "a run renews its lease unless `expires` is given"),
];

/// How the key is given.
#[cfg_attr(test, derive(Debug))]
pub(crate) enum Key {
    /// A string literal with `{placeholders}`.
    Template(LitStr),
    /// Any expression giving `impl Into<String>`.
    Expr(Expr),
}

/// A duration literal, in milliseconds, with the expression it came from.
#[cfg_attr(test, derive(Debug))]
pub(crate) struct Millis {
    pub(crate) millis: u64,
    pub(crate) source: Expr,
}

/// A duration argument: a literal checked at compile time, or an
/// expression (a `Duration`, or whole seconds) checked at run time.
#[cfg_attr(test, derive(Debug))]
pub(crate) enum Dur {
    Literal(Millis),
    Expr(Expr),
}

/// Background renewal.
#[cfg_attr(test, derive(Debug))]
pub(crate) enum Renew {
    /// `renew = true`: every `expires / 3`.
    On,
    /// `renew = false`.
    Off,
    /// `renew = "10s"`: at that interval.
    Every(Millis),
    /// `renew = cfg.renew`: a `bool` or a `Duration`, at run time.
    Expr(Expr),
}

/// The parsed and checked arguments.
#[derive(Default)]
#[cfg_attr(test, derive(Debug))]
pub(crate) struct Args {
    pub(crate) key: Option<Key>,
    pub(crate) expires: Option<Dur>,
    pub(crate) timeout: Option<Dur>,
    pub(crate) renew: Option<Renew>,
    pub(crate) min_hold: Option<Dur>,
    /// `on_busy = skip`: a busy lock returns `Ok(())` / `Ok(None)`.
    pub(crate) skip_when_busy: Option<bool>,
    /// `fair = false`: wait unqueued (any `bool` expression).
    pub(crate) fair: Option<Expr>,
    pub(crate) owner: Option<Expr>,
    pub(crate) lock: Option<Expr>,
    /// `schedule = "0 2 * * *"`: one run per tick across the fleet.
    pub(crate) schedule: Option<Expr>,
    /// `permits = 3`: a counting semaphore of that many permits.
    pub(crate) permits: Option<Expr>,
    pub(crate) krate: Option<Path>,
}

/// One `name = value` pair.
struct Pair {
    name: Ident,
    value: Expr,
}

impl Parse for Pair {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `crate` is a keyword: accept any identifier-like token.
        let name = input.call(<Ident as syn::ext::IdentExt>::parse_any)?;
        input
            .parse::<Token![=]>()
            .map_err(|e| syn::Error::new(e.span(), format!("expected `{name} = ...`")))?;
        let value = input.parse()?;
        Ok(Self { name, value })
    }
}

impl Args {
    /// Parses the attribute's tokens. Every problem found is reported, each
    /// on its own token.
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Self> {
        let pairs =
            syn::parse::Parser::parse2(Punctuated::<Pair, Token![,]>::parse_terminated, tokens)?;
        let mut args = Args::default();
        let mut errors = Errors::default();
        for Pair { name, value } in pairs {
            let text = name.to_string();
            let Some(duplicate) = args.given(&text) else {
                errors.push(syn::Error::new_spanned(
                    &name,
                    format!(
                        "unknown argument `{text}`; expected one of: {}",
                        NAMES.join(", ")
                    ),
                ));
                continue;
            };
            if duplicate {
                errors.push(syn::Error::new_spanned(
                    &name,
                    format!("duplicate argument `{text}`"),
                ));
                continue;
            }
            let parsed = match text.as_str() {
                "key" => key(value).map(|k| args.key = Some(k)),
                "expires" => duration(value).and_then(|d| match d {
                    Dur::Literal(m) if m.millis == 0 => Err(syn::Error::new_spanned(
                        &m.source,
                        "`expires` must be at least 1 millisecond",
                    )),
                    d => {
                        args.expires = Some(d);
                        Ok(())
                    }
                }),
                "timeout" => duration(value).map(|d| args.timeout = Some(d)),
                "renew" => renew(value).map(|r| args.renew = Some(r)),
                "min_hold" => duration(value).map(|d| args.min_hold = Some(d)),
                "on_busy" => on_busy(value).map(|skip| args.skip_when_busy = Some(skip)),
                "fair" => {
                    args.fair = Some(value);
                    Ok(())
                }
                "owner" => {
                    args.owner = Some(value);
                    Ok(())
                }
                "lock" => {
                    args.lock = Some(value);
                    Ok(())
                }
                "permits" => match &value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(n), ..
                    }) if n.base10_parse::<u32>().map_or(true, |n| n == 0) => {
                        Err(syn::Error::new_spanned(
                            n,
                            "`permits` must be a whole number from 1 to mongolock::MAX_PERMITS",
                        ))
                    }
                    _ => {
                        args.permits = Some(value);
                        Ok(())
                    }
                },
                "schedule" => match value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(lit), ..
                    }) if lit.value().trim().is_empty() => Err(syn::Error::new_spanned(
                        &lit,
                        "the schedule must not be empty: a period such as \"1m\" or a cron expression such as \"0 2 * * *\"",
                    )),
                    value => {
                        args.schedule = Some(value);
                        Ok(())
                    }
                },
                _ => match value {
                    Expr::Path(p) if p.qself.is_none() => {
                        args.krate = Some(p.path);
                        Ok(())
                    }
                    other => Err(syn::Error::new_spanned(
                        other,
                        "expected a path to the mongolock crate, like `crate = ::my_mongolock`",
                    )),
                },
            };
            if let Err(e) = parsed {
                errors.push(e);
            }
        }
        if let Some(permits) = &args.permits {
            args.refuse_beside(permits, "permits", NOT_WITH_PERMITS, &mut errors);
            if matches!(args.renew, Some(Renew::Every(_))) {
                errors.push(syn::Error::new_spanned(
                    permits,
                    "with `permits`, `renew` is `true` or `false`: permits renew every third of their lease",
                ));
            }
        }
        if let Some(schedule) = args.schedule.as_ref().filter(|_| args.permits.is_none()) {
            args.refuse_beside(schedule, "schedule", NOT_WITH_SCHEDULE, &mut errors);
        }
        errors.finish()?;
        Ok(args)
    }
}

impl Args {
    /// Whether argument `name` was given; `None` for a name that is not
    /// an argument.
    fn given(&self, name: &str) -> Option<bool> {
        Some(match name {
            "key" => self.key.is_some(),
            "expires" => self.expires.is_some(),
            "timeout" => self.timeout.is_some(),
            "renew" => self.renew.is_some(),
            "min_hold" => self.min_hold.is_some(),
            "on_busy" => self.skip_when_busy.is_some(),
            "fair" => self.fair.is_some(),
            "owner" => self.owner.is_some(),
            "lock" => self.lock.is_some(),
            "schedule" => self.schedule.is_some(),
            "permits" => self.permits.is_some(),
            "crate" => self.krate.is_some(),
            _ => return None,
        })
    }

    /// Reports each argument of `table` given beside `arg` (named `what`),
    /// with the table's reason, on `arg`.
    fn refuse_beside(&self, arg: &Expr, what: &str, table: &[(&str, &str)], errors: &mut Errors) {
        for (name, why) in table {
            if self.given(name) == Some(true) {
                errors.push(syn::Error::new_spanned(
                    arg,
                    format!("`{name}` does not go with `{what}`: {why}"),
                ));
            }
        }
    }
}

fn key(value: Expr) -> syn::Result<Key> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            if lit.value().is_empty() {
                Err(syn::Error::new_spanned(
                    &lit,
                    "the lock key must not be empty",
                ))
            } else {
                Ok(Key::Template(lit))
            }
        }
        expr => Ok(Key::Expr(expr)),
    }
}

fn renew(value: Expr) -> syn::Result<Renew> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(if b.value { Renew::On } else { Renew::Off }),
        other => match duration(other)? {
            Dur::Literal(interval) if interval.millis == 0 => Err(syn::Error::new_spanned(
                &interval.source,
                "the renew interval must be at least 1 millisecond",
            )),
            Dur::Literal(interval) => Ok(Renew::Every(interval)),
            Dur::Expr(expr) => Ok(Renew::Expr(expr)),
        },
    }
}

/// A literal (`60`, `"1500ms"`, `-1`) is checked now; any other expression
/// when the function runs.
fn duration(value: Expr) -> syn::Result<Dur> {
    let literal = match &value {
        Expr::Lit(_) => true,
        Expr::Unary(unary) => matches!(*unary.expr, Expr::Lit(_)),
        _ => false,
    };
    if !literal {
        return Ok(Dur::Expr(value));
    }
    let millis = duration::parse_millis(&value)?;
    Ok(Dur::Literal(Millis {
        millis,
        source: value,
    }))
}

fn on_busy(value: Expr) -> syn::Result<bool> {
    match &value {
        Expr::Path(p) if p.path.is_ident("skip") => Ok(true),
        Expr::Path(p) if p.path.is_ident("error") => Ok(false),
        _ => Err(syn::Error::new_spanned(
            value,
            "expected `on_busy = skip` (return `Ok(())` or `Ok(None)` without running the body) or `on_busy = error` (the default: `Err(Locked)`)",
        )),
    }
}

/// Collects errors so that all of them are shown at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: proc_macro2::TokenStream) -> Result<Args, String> {
        Args::parse(tokens).map_err(|e| e.to_string())
    }

    fn literal(d: Option<Dur>) -> Option<u64> {
        match d {
            Some(Dur::Literal(m)) => Some(m.millis),
            _ => None,
        }
    }

    #[test]
    fn all_arguments() {
        let args = parse(quote!(
            key = "k:{id}",
            expires = 60,
            timeout = "1500ms",
            owner = me(),
            lock = &L,
            crate = ::ml
        ))
        .unwrap();
        assert!(matches!(args.key, Some(Key::Template(_))));
        assert_eq!(literal(args.expires), Some(60_000));
        assert_eq!(literal(args.timeout), Some(1500));
        assert!(args.owner.is_some() && args.lock.is_some());
        assert_eq!(
            args.krate.map(|p| quote!(#p).to_string()),
            Some(":: ml".to_owned())
        );
    }

    #[test]
    fn key_expression() {
        let args = parse(quote!(key = format!("k{}", 1))).unwrap();
        assert!(matches!(args.key, Some(Key::Expr(_))));
    }

    #[test]
    fn each_duplicate_is_reported() {
        // Each argument is checked against its own slot.
        for name in NAMES {
            let value = match *name {
                "key" => quote!("k"),
                "expires" | "timeout" | "min_hold" => quote!(5),
                "on_busy" => quote!(skip),
                "renew" => quote!(true),
                "crate" => quote!(::m),
                _ => quote!(x),
            };
            let ident = proc_macro2::Ident::new(name, proc_macro2::Span::call_site());
            let err = parse(quote!(#ident = #value, #ident = #value)).unwrap_err();
            assert_eq!(err, format!("duplicate argument `{name}`"));
        }
    }

    #[test]
    fn options_that_do_not_go_with_a_schedule_are_each_reported() {
        let args = parse(quote!(key = "k", schedule = "1m", expires = 60)).unwrap();
        assert!(args.schedule.is_some());
        let err = parse(quote!(
            key = "k",
            schedule = "1m",
            timeout = 5,
            on_busy = skip
        ))
        .unwrap_err();
        assert!(
            err.contains("`timeout` does not go with `schedule`"),
            "{err}"
        );
        let err = parse(quote!(key = "k", schedule = "")).unwrap_err();
        assert!(err.contains("must not be empty"), "{err}");
    }

    #[test]
    fn unknown_argument_lists_valid_ones() {
        let err = parse(quote!(key = "k", expire = 5)).unwrap_err();
        assert_eq!(
            err,
            "unknown argument `expire`; expected one of: key, expires, timeout, renew, min_hold, on_busy, fair, owner, lock, schedule, permits, crate"
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(
            parse(quote!(key = "k", expires = 0)).unwrap_err(),
            "`expires` must be at least 1 millisecond"
        );
        assert!(parse(quote!(key = "")).is_err());
        assert!(parse(quote!(key = "k", timeout = "soon")).is_err());
        assert!(parse(quote!(key = "k", crate = "mongolock")).is_err());
        assert!(parse(quote!(key)).is_err());
        assert!(parse(quote!(key = "k" expires = 1)).is_err());
    }

    #[test]
    fn renew_takes_a_bool_or_an_interval() {
        let on = parse(quote!(key = "k", renew = true)).unwrap();
        assert!(matches!(on.renew, Some(Renew::On)));
        let off = parse(quote!(key = "k", renew = false)).unwrap();
        assert!(matches!(off.renew, Some(Renew::Off)));
        let every = parse(quote!(key = "k", renew = "5s", min_hold = "2m")).unwrap();
        assert!(matches!(
            every.renew,
            Some(Renew::Every(Millis { millis: 5000, .. }))
        ));
        assert_eq!(literal(every.min_hold), Some(120_000));
        assert!(parse(quote!(key = "k", renew = 0)).is_err());
        assert!(parse(quote!(key = "k", renew = "often")).is_err());
        let configured = parse(quote!(key = "k", renew = cfg.renew)).unwrap();
        assert!(matches!(configured.renew, Some(Renew::Expr(_))));
    }

    #[test]
    fn durations_from_expressions_are_checked_at_run_time() {
        let args = parse(quote!(
            key = "k",
            expires = LEASE,
            timeout = cfg.timeout,
            min_hold = hold()
        ))
        .unwrap();
        assert!(matches!(args.expires, Some(Dur::Expr(_))));
        assert!(matches!(args.timeout, Some(Dur::Expr(_))));
        assert!(matches!(args.min_hold, Some(Dur::Expr(_))));
        // Literals are still checked now.
        assert!(parse(quote!(key = "k", expires = -1)).is_err());
        assert!(parse(quote!(key = "k", expires = "5 parsecs")).is_err());
    }

    #[test]
    fn on_busy_takes_skip_or_error() {
        assert_eq!(
            parse(quote!(key = "k", on_busy = skip))
                .unwrap()
                .skip_when_busy,
            Some(true)
        );
        assert_eq!(
            parse(quote!(key = "k", on_busy = error))
                .unwrap()
                .skip_when_busy,
            Some(false)
        );
        assert!(parse(quote!(key = "k", on_busy = "skip")).is_err());
        assert!(parse(quote!(key = "k", on_busy = wait)).is_err());
    }

    #[test]
    fn zero_timeout_is_a_single_attempt() {
        assert_eq!(
            literal(parse(quote!(key = "k", timeout = 0)).unwrap().timeout),
            Some(0)
        );
    }
}
