//! Keeps credentials out of messages and logs.

/// Replaces the `user:password@` part of every `scheme://` URI in `text`
/// with `***@`.
pub(crate) fn redact_uri(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_uri;

    #[test]
    fn password_is_removed() {
        assert_eq!(
            redact_uri("bad uri mongodb://alice:s3cret@db:27017/x?tls=true"),
            "bad uri mongodb://***@db:27017/x?tls=true"
        );
    }

    #[test]
    fn uri_without_credentials_is_kept() {
        let text = "mongodb://db1,db2/?replicaSet=rs";
        assert_eq!(redact_uri(text), text);
    }

    #[test]
    fn password_with_at_sign_is_removed_whole() {
        assert_eq!(redact_uri("mongodb://a:b@c@host"), "mongodb://***@host");
    }
}
