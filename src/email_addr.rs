//! Email address validation and normalisation.
//!
//! Deliberately stricter than RFC 5321: one bare `local@domain`, a dot-atom local part (no
//! quoted strings, comments, display names or lists), an ASCII DNS domain with at least one
//! dot. Anything that could smuggle a second recipient or a header (CR, LF, `,`, `<`, `"`,
//! spaces, a second `@`) is refused. The domain is lowercased; the local part keeps its
//! case but users are matched case-insensitively by the store.

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("enter an email address")]
    Empty,
    #[error("that email address is too long")]
    TooLong,
    #[error("that is not a valid email address")]
    Invalid,
}

const LOCAL_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

pub fn normalise(input: &str) -> Result<String, AddrError> {
    // Only surrounding spaces are forgiven; control characters anywhere are not.
    let s = input.trim_matches(' ');
    if s.is_empty() {
        return Err(AddrError::Empty);
    }
    if s.len() > 254 {
        return Err(AddrError::TooLong);
    }
    let (local, domain) = s.split_once('@').ok_or(AddrError::Invalid)?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(if local.len() > 64 {
            AddrError::TooLong
        } else {
            AddrError::Invalid
        });
    }
    let local_ok = local.split('.').all(|atom| {
        !atom.is_empty()
            && atom
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(&b))
    });
    if !local_ok {
        return Err(AddrError::Invalid);
    }
    let domain = domain.to_ascii_lowercase();
    if !domain.contains('.') || !crate::config::is_hostname(&domain) {
        return Err(AddrError::Invalid);
    }
    // A numeric top-level label is an IP literal in disguise.
    if domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(AddrError::Invalid);
    }
    Ok(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(
            normalise(" Alice@Example.COM ").unwrap(),
            "Alice@example.com"
        );
        assert_eq!(
            normalise("first.last+tag@sub.example.co.uk").unwrap(),
            "first.last+tag@sub.example.co.uk"
        );
        assert!(normalise("o'brien@example.ie").is_ok());
    }

    #[test]
    fn refuses_smuggling_and_junk() {
        for bad in [
            "",
            "   ",
            "plain",
            "a@b",
            "a@evil@company.com",
            "a@example.com\r\nBcc: x@evil.com",
            "a@example.com\nRCPT TO:<x@evil.com>",
            "\"a@evil.com\"@example.com",
            "\"a\r\nb\"@example.com",
            "a@example.com, b@example.com",
            "Alice <a@example.com>",
            "<a@example.com>",
            "a b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@example..com",
            "a@127.0.0.1",
            "a@[127.0.0.1]",
            "a\0@example.com",
            "a\t@example.com",
            "ä@example.com",
            "a@exämple.com",
        ] {
            assert!(normalise(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            normalise(&format!("{}@example.com", "a".repeat(65))),
            Err(AddrError::TooLong)
        );
        assert_eq!(
            normalise(&format!("a@{}.com", "b".repeat(260))),
            Err(AddrError::TooLong)
        );
    }
}
