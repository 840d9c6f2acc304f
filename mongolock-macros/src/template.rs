//! Key templates: `"report:{user_id}"`, `"{order.customer.id}"`, `"{{x}}"`.

/// A piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Literal text (braces already unescaped).
    Text(String),
    /// `{name}` or `{name.field.0}`: an argument and a chain of fields.
    Arg(Vec<String>),
}

/// Splits a template into text and placeholders.
pub(crate) fn parse(template: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '}' => {
                return Err("unmatched `}` in key template; write `}}` for a literal brace".into())
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => {
                            return Err(
                                "unclosed `{` in key template; write `{{` for a literal brace"
                                    .into(),
                            )
                        }
                    }
                }
                if !text.is_empty() {
                    segments.push(Segment::Text(std::mem::take(&mut text)));
                }
                segments.push(Segment::Arg(placeholder(inner.trim())?));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        segments.push(Segment::Text(text));
    }
    Ok(segments)
}

fn placeholder(inner: &str) -> Result<Vec<String>, String> {
    if inner.contains(':') {
        return Err(format!(
            "format specs are not supported in key templates (`{{{inner}}}`); use `key = format!(...)`"
        ));
    }
    // `{r#type}` and `{type}` both name a raw identifier argument.
    let parts: Vec<String> = inner
        .split('.')
        .map(|p| p.trim().trim_start_matches("r#").to_owned())
        .collect();
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_alphabetic())
            && s.chars().all(|c| c == '_' || c.is_alphanumeric())
    };
    let index = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let valid = parts.first().is_some_and(|root| ident(root))
        && parts.iter().skip(1).all(|p| ident(p) || index(p));
    if !valid {
        return Err(format!(
            "invalid placeholder `{{{inner}}}` in key template; expected an argument name, optionally with fields: `{{name}}`, `{{name.field}}`"
        ));
    }
    Ok(parts)
}

/// The `format!` string for the segments: text with braces escaped again,
/// and `{}` for each placeholder.
pub(crate) fn format_string(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Text(text) => out.push_str(&text.replace('{', "{{").replace('}', "}}")),
            Segment::Arg(_) => out.push_str("{}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(path: &[&str]) -> Segment {
        Segment::Arg(path.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn text_and_placeholders() {
        assert_eq!(
            parse("report:{user_id}"),
            Ok(vec![Segment::Text("report:".into()), arg(&["user_id"])])
        );
        assert_eq!(
            parse("{a}-{ b.c.0 }"),
            Ok(vec![
                arg(&["a"]),
                Segment::Text("-".into()),
                arg(&["b", "c", "0"])
            ])
        );
        assert_eq!(parse("{self.id}"), Ok(vec![arg(&["self", "id"])]));
    }

    #[test]
    fn fixed_key_and_escaped_braces() {
        assert_eq!(parse("nightly"), Ok(vec![Segment::Text("nightly".into())]));
        let segments = parse("{{literal}}:{x}").unwrap();
        assert_eq!(
            segments,
            vec![Segment::Text("{literal}:".into()), arg(&["x"])]
        );
        assert_eq!(format_string(&segments), "{{literal}}:{}");
    }

    #[test]
    fn malformed_templates_are_errors() {
        for t in [
            "{", "}", "a{b", "{}", "{1x}", "{a.}", "{a:?}", "{a b}", "{.a}", "x}y",
        ] {
            assert!(parse(t).is_err(), "{t}");
        }
    }
}
