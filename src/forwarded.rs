//! The original request behind a `/verify` call, from the headers each proxy sends:
//! nginx `X-Original-URL` (+ `X-Original-Method`), Traefik and Caddy
//! `X-Forwarded-Proto`, `-Host`, `-Uri` and `-Method`.
//!
//! Fail closed: a header sent twice, a value that is not visible ASCII, an unparsable URL,
//! a missing host, or `X-Original-URL` disagreeing with `X-Forwarded-Host` is an error,
//! and `/verify` never answers 2xx for it.

use hyper::header::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// Absolute, normalised URL (lowercase host, default port dropped).
    pub url: url::Url,
    /// Upper-case method; `GET` when the proxy did not say.
    pub method: String,
}

impl Original {
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("")
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("header {0} is sent more than once")]
    Duplicate(&'static str),
    #[error("header {0} is not printable ASCII")]
    NotAscii(&'static str),
    #[error("header {0} is not a valid value")]
    Invalid(&'static str),
    #[error("X-Original-URL and X-Forwarded-Host disagree")]
    Conflict,
    #[error("no X-Original-URL or X-Forwarded-Host: the proxy must say which request to check")]
    Missing,
}

fn one<'a>(h: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ForwardedError> {
    let mut it = h.get_all(name).iter();
    let Some(v) = it.next() else { return Ok(None) };
    if it.next().is_some() {
        return Err(ForwardedError::Duplicate(name));
    }
    let s = v.to_str().map_err(|_| ForwardedError::NotAscii(name))?;
    if s.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(ForwardedError::NotAscii(name));
    }
    Ok(Some(s))
}

fn http_url(s: &str, name: &'static str) -> Result<url::Url, ForwardedError> {
    // Exactly `scheme://authority`: no `http:///host` or backslashes that a lenient
    // parser would "repair" into something other than what the proxy saw.
    let after = s.split_once("://").map(|x| x.1).unwrap_or("");
    if after.is_empty() || after.starts_with('/') || s.contains('\\') {
        return Err(ForwardedError::Invalid(name));
    }
    let mut u = url::Url::parse(s).map_err(|_| ForwardedError::Invalid(name))?;
    // `app.example.com.` is `app.example.com`: one host, one decision.
    if let Some(h) = u.host_str().filter(|h| h.len() > 1 && h.ends_with('.')) {
        let h = h.trim_end_matches('.').to_string();
        u.set_host(Some(&h))
            .map_err(|_| ForwardedError::Invalid(name))?;
    }
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none_or(str::is_empty)
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return Err(ForwardedError::Invalid(name));
    }
    Ok(u)
}

fn method(h: &HeaderMap, name: &'static str) -> Result<Option<String>, ForwardedError> {
    match one(h, name)? {
        None => Ok(None),
        Some(m) if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok(Some(m.to_ascii_uppercase()))
        }
        Some(_) => Err(ForwardedError::Invalid(name)),
    }
}

/// Host part of a `Host`-style value (`example.com:8080` → `example.com`), lowercased.
fn bare_host(v: &str) -> String {
    let v = v.trim_end_matches('.');
    let host = if v.starts_with('[') {
        v.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        v.split(':').next().unwrap_or("").to_string()
    };
    host.to_ascii_lowercase()
}

pub fn original(h: &HeaderMap) -> Result<Original, ForwardedError> {
    let from_xff = forwarded_url(h)?;
    let xm = method(h, "x-forwarded-method")?;
    let om = method(h, "x-original-method")?;
    let url = match (one(h, "x-original-url")?, from_xff) {
        (Some(orig), fwd) => {
            let url = http_url(orig, "X-Original-URL")?;
            // Both present (a proxy that sends both, or a client adding one the proxy
            // passed through): they must describe the same request.
            if let Some((f, full)) = fwd {
                let same = if full {
                    f == url
                } else {
                    f.host_str() == url.host_str()
                };
                if !same {
                    return Err(ForwardedError::Conflict);
                }
            }
            url
        }
        (None, Some((f, _))) => f,
        (None, None) => return Err(ForwardedError::Missing),
    };
    if let (Some(a), Some(b)) = (&om, &xm) {
        if a != b {
            return Err(ForwardedError::Conflict);
        }
    }
    Ok(Original {
        url,
        method: om.or(xm).unwrap_or_else(|| "GET".into()),
    })
}

/// The URL from `X-Forwarded-Host/-Proto/-Uri`, and whether it was complete (all three).
fn forwarded_url(h: &HeaderMap) -> Result<Option<(url::Url, bool)>, ForwardedError> {
    let Some(host) = one(h, "x-forwarded-host")? else {
        return Ok(None);
    };
    let proto_h = one(h, "x-forwarded-proto")?;
    let uri_h = one(h, "x-forwarded-uri")?;
    let proto = match proto_h {
        None => "http",
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        Some(_) => return Err(ForwardedError::Invalid("X-Forwarded-Proto")),
    };
    let uri = uri_h.unwrap_or("/");
    if !uri.starts_with('/') || uri.starts_with("//") {
        return Err(ForwardedError::Invalid("X-Forwarded-Uri"));
    }
    if host.contains(['/', '?', '#', '@', '\\']) || host.is_empty() {
        return Err(ForwardedError::Invalid("X-Forwarded-Host"));
    }
    let url = http_url(&format!("{proto}://{host}{uri}"), "X-Forwarded-Uri")?;
    // The rebuilt URL must still name the host the proxy sent.
    if url.host_str().unwrap_or("").to_ascii_lowercase() != bare_host(host) {
        return Err(ForwardedError::Invalid("X-Forwarded-Host"));
    }
    Ok(Some((url, proto_h.is_some() && uri_h.is_some())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn hm(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            // Values hyper would refuse to parse (control bytes) never reach us.
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(*k, v);
            }
        }
        h
    }

    #[test]
    fn nginx_style() {
        let o = original(&hm(&[
            ("x-original-url", b"https://App.Example.com/a/b?c=d"),
            ("x-original-method", b"post"),
        ]))
        .unwrap();
        assert_eq!(o.url.as_str(), "https://app.example.com/a/b?c=d");
        assert_eq!(o.method, "POST");
        assert_eq!(o.host(), "app.example.com");
    }

    #[test]
    fn traefik_caddy_style() {
        let o = original(&hm(&[
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"app.example.com:8443"),
            ("x-forwarded-uri", b"/x?y=1&z=2"),
            ("x-forwarded-method", b"GET"),
        ]))
        .unwrap();
        assert_eq!(o.url.as_str(), "https://app.example.com:8443/x?y=1&z=2");
    }

    #[test]
    fn malformed_and_conflicting_fail_closed() {
        let cases: Vec<Vec<(&'static str, &[u8])>> = vec![
            vec![],
            vec![("x-original-url", b"not a url")],
            vec![("x-original-url", b"/relative")],
            vec![("x-original-url", b"ftp://app.example.com/")],
            vec![("x-original-url", b"http:///nohost")],
            vec![("x-original-url", b"https://user:pw@app.example.com/")],
            vec![
                ("x-original-url", b"https://a.example.com/"),
                ("x-original-url", b"https://b.example.com/"),
            ],
            vec![
                ("x-original-url", b"https://a.example.com/"),
                ("x-forwarded-host", b"b.example.com"),
            ],
            vec![
                ("x-original-url", b"https://a.example.com/public"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-uri", b"/admin"),
            ],
            vec![
                ("x-original-url", b"https://a.example.com/"),
                ("x-original-method", b"GET"),
                ("x-forwarded-method", b"POST"),
            ],
            vec![("x-original-url", b"https://a.example.com/\x01")],
            vec![("x-original-url", b"https://a.example.com/\xff")],
            vec![("x-forwarded-host", b"")],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-host", b"b.example.com"),
            ],
            vec![("x-forwarded-host", b"evil.com/@a.example.com")],
            vec![("x-forwarded-host", b"a.example.com@evil.com")],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-uri", b"//evil.com/x"),
            ],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-uri", b"x"),
            ],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-proto", b"gopher"),
            ],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-method", b"GE T"),
            ],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-uri", b"/a b"),
            ],
            vec![("x-forwarded-host", b"a.exam ple.com")],
        ];
        for c in cases {
            assert!(original(&hm(&c)).is_err(), "accepted {c:?}");
        }
    }

    #[test]
    fn both_styles_agreeing_is_fine() {
        let o = original(&hm(&[
            ("x-original-url", b"http://app.example.com:8080/a?b=c"),
            ("x-forwarded-proto", b"http"),
            ("x-forwarded-host", b"app.example.com:8080"),
            ("x-forwarded-uri", b"/a?b=c"),
        ]))
        .unwrap();
        assert_eq!(o.url.as_str(), "http://app.example.com:8080/a?b=c");
    }

    #[test]
    fn mixed_case_hosts_normalise() {
        let a = original(&hm(&[("x-forwarded-host", b"APP.Example.COM")])).unwrap();
        let b = original(&hm(&[("x-forwarded-host", b"app.example.com")])).unwrap();
        let c = original(&hm(&[("x-original-url", b"http://app.example.com./")])).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}
