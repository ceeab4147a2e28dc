//! Return-URL (`rd`) validation: only absolute http(s) URLs whose host is the cookie
//! domain (or a subdomain), the `public_url` or `redirect_url` host, or a host listed in
//! `allowed_redirect_hosts` (`*.example.com` for subdomains). Anything else is refused
//! and the caller falls back to `redirect_url`.

use crate::config::{host_within, Config};

/// The normalised URL to redirect to, or `None` when `raw` is not acceptable.
pub fn validate(raw: &str, cfg: &Config) -> Option<String> {
    // Refuse before parsing anything a parser might "repair": backslashes, whitespace and
    // control characters, which browsers strip or reinterpret in different ways.
    if raw.is_empty()
        || raw.len() > 2048
        || raw
            .chars()
            .any(|c| c == '\\' || c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return None;
    }
    // Only an explicit scheme followed by exactly `//` and an authority.
    let lower = raw.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))?;
    if rest.starts_with('/') {
        return None;
    }
    let url = url::Url::parse(raw).ok()?;
    // With Secure cookies, never send a signed-in user to plain http.
    if cfg.cookie.secure && url.scheme() != "https" {
        return None;
    }
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || raw[..raw.find("//")? + 2 + authority_len(&raw[raw.find("//")? + 2..])].contains('@')
    {
        return None;
    }
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        // IP literals only when listed exactly.
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => format!("[{ip}]"),
    };
    // `app.example.com.` names the same host in DNS but not for cookies: a browser
    // sent there arrives without its session (found by tests/fuzz.rs).
    if host.ends_with('.') {
        return None;
    }
    host_allowed(&host, cfg).then(|| url.to_string())
}

fn authority_len(s: &str) -> usize {
    s.find(['/', '?', '#']).unwrap_or(s.len())
}

pub fn host_allowed(host: &str, cfg: &Config) -> bool {
    let host = host.trim_end_matches('.');
    if let Some(d) = &cfg.derived.cookie_domain {
        if host_within(host, d) {
            return true;
        }
    }
    let own = |u: &str| {
        url::Url::parse(u)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
            .is_some_and(|h| h == host)
    };
    if own(&cfg.public_url) || own(&cfg.redirect_url) {
        return true;
    }
    cfg.allowed_redirect_hosts.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() && host_within(host, suffix),
            None => h == host,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(domain: &str, extra: &[&str]) -> Config {
        let mut t = format!(
            "public_url = \"https://auth.{domain}\"\nredirect_url = \"https://{domain}/\"\nallowed_redirect_hosts = [{}]\n",
            extra.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(",")
        );
        t.push_str(&format!("[cookie]\ndomain = \"{domain}\"\nsecure = true\n"));
        Config::from_toml(&t, &crate::config::tests::NoEnv).unwrap()
    }

    #[test]
    fn accepts_the_cookie_domain_and_listed_hosts() {
        let c = cfg("example.com", &["partner.org", "*.tools.net"]);
        for ok in [
            "https://app.example.com/page?x=1&y=2#frag",
            "https://APP.Example.com/x",
            "https://a.b.example.com:8443/x",
            "https://example.com/",
            "https://partner.org/",
            "https://x.tools.net/",
        ] {
            assert!(validate(ok, &c).is_some(), "refused {ok}");
        }
        assert_eq!(
            validate("https://APP.example.com/a", &c).unwrap(),
            "https://app.example.com/a"
        );
    }

    #[test]
    fn refuses_open_redirect_tricks() {
        let c = cfg("example.com", &["partner.org", "*.tools.net"]);
        for bad in [
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https:/evil.com",
            "https:evil.com",
            "https:///evil.com",
            "https://evil.com",
            "https://evil.com/https://app.example.com",
            "https://app.example.com.evil.com/",
            "https://evilexample.com/",
            "https://example.com@evil.com/",
            "https://app.example.com:443@evil.com/",
            "https://evil.com#@app.example.com",
            "https://evil.com?@app.example.com",
            "https://evil.com\\@app.example.com",
            "https://app.example.com\\@evil.com",
            "https://evil.com%2f@app.example.com",
            "https://evil%2ecom/",
            " https://app.example.com/",
            "https://app.example.com/\n",
            "https://app.exa\tmple.com/",
            "java\nscript:alert(1)",
            "javascript://app.example.com/%0aalert(1)",
            "data:text/html,<script>",
            "ftp://app.example.com/",
            "https://еxample.com/",
            "https://xn--xample-2of.com/",
            "https://tools.net/",
            "http://app.example.com/",
            "https://1.2.3.4/",
            "/relative/path",
            "",
        ] {
            assert!(validate(bad, &c).is_none(), "accepted {bad:?}");
        }
    }

    /// oauth2-proxy's open-redirect corpus: every line, URL-unescaped, must be refused
    /// with the cookie domain `whitelisteddomain.tld`: no line may yield a redirect that
    /// leaves that domain (tests/data/README.md).
    #[test]
    fn trailing_dot_hosts_are_refused() {
        let c = cfg("example.com", &[]);
        for u in [
            "https://app.example.com./x",
            "https://app.example.com%2e/path",
            "https://example.com./",
        ] {
            assert_eq!(validate(u, &c), None, "{u}");
        }
    }

    #[test]
    fn openredirects_corpus() {
        let text = include_str!("../tests/data/openredirects.txt");
        let c = cfg("whitelisteddomain.tld", &[]);
        let mut n = 0;
        for line in text.lines() {
            n += 1;
            // A line that fails to unescape is checked as it stands.
            let decoded = percent_decode(line).unwrap_or_else(|| line.to_string());
            if let Some(out) = validate(&decoded, &c) {
                let u = url::Url::parse(&out).unwrap();
                let host = u.host_str().unwrap();
                assert!(
                    host_within(host, "whitelisteddomain.tld"),
                    "line {line:?} redirects to {out}"
                );
                // And a browser must see the same host: the raw value has no tricks.
                assert!(
                    !decoded.contains('@') && !decoded.contains('\\'),
                    "{decoded:?}"
                );
            }
        }
        assert!(n >= 559, "corpus has {n} lines");
    }

    fn percent_decode(s: &str) -> Option<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).ok()
    }
}
