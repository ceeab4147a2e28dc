//! The original request behind a `/verify` call, from the headers each proxy sends:
//! nginx `X-Original-URL` (+ `X-Original-Method`), Traefik and Caddy
//! `X-Forwarded-Proto`, `-Host`, `-Uri` and `-Method`.
//!
//! Fail closed: a header sent twice, a value that is not visible ASCII, a URL that is not
//! exactly `http(s)://host[:port]/path`, a host that is not a DNS name or an IP address
//! literal, a missing host, or `X-Original-URL` disagreeing with `X-Forwarded-*` is an
//! error, and `/verify` never answers 2xx for it.
//!
//! This is a strict hand-written parser rather than a general URL parser because it runs
//! on every proxied request, and because anything a lenient parser would "repair"
//! (`http:///host`, backslashes, `%2e` in hosts, `0x7f.1`, userinfo) is refused instead.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

// The headers read here, in the order of `Fields`.
const NAMES: [&str; 6] = [
    "x-original-url",
    "x-original-method",
    "x-forwarded-method",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-uri",
];
const ORIGINAL_URL: usize = 0;
const ORIGINAL_METHOD: usize = 1;
const FORWARDED_METHOD: usize = 2;
const FORWARDED_HOST: usize = 3;
const FORWARDED_PROTO: usize = 4;
const FORWARDED_URI: usize = 5;

/// The value of each header in `NAMES`, if sent.
type Fields<'a> = [Option<&'a HeaderValue>; 6];

/// The request being checked. Borrowed from the headers where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original<'a> {
    pub https: bool,
    /// Lowercase, without a trailing dot; IPv6 literals keep their brackets.
    pub host: Cow<'a, str>,
    /// `None` for the scheme's default port.
    pub port: Option<u16>,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// As the proxy sent it; `GET` when it did not say.
    pub method: &'a str,
}

impl Original<'_> {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The absolute URL, e.g. for the return URL after sign-in.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.port {
            Some(p) => format!("{scheme}://{}:{p}{}", self.host, self.path),
            None => format!("{scheme}://{}{}", self.host, self.path),
        }
    }

    /// GET or HEAD: a request that may be answered with a redirect.
    pub fn is_read(&self) -> bool {
        self.method.eq_ignore_ascii_case("GET") || self.method.eq_ignore_ascii_case("HEAD")
    }

    fn same_place(&self, o: &Original) -> bool {
        self.https == o.https && self.host == o.host && self.port == o.port && self.path == o.path
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("header {0} is sent more than once")]
    Duplicate(&'static str),
    #[error("header {0} is not printable ASCII")]
    NotAscii(&'static str),
    #[error("header {0} has an invalid value")]
    Invalid(&'static str),
    #[error("header X-Original-URL must be an absolute http:// or https:// URL, as nginx sends with `$scheme://$http_host$request_uri`")]
    NotAbsolute,
    #[error("X-Original-URL and X-Forwarded-* disagree")]
    Conflict,
    #[error("no X-Original-URL or X-Forwarded-Host: the proxy must say which request to check")]
    Missing,
    #[error("a header spelled like {shown} with other separators (X_User_Email, X.User.Email) was sent: some apps read it as {shown}, so the request is refused", shown = title_case(.0.as_str()))]
    IdentityAlias(&'static HeaderName),
}

// The identity headers `/verify` answers with, which the proxy hands to the app. Built
// once: inserting by `&'static str` would parse and classify the name on every request.
pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub static X_USER_EMAIL: HeaderName = HeaderName::from_static("x-user-email");
pub static X_USER_GROUPS: HeaderName = HeaderName::from_static("x-user-groups");
pub static X_USER_ASSERTION: HeaderName = HeaderName::from_static("x-user-assertion");
static IDENTITY: [&HeaderName; 4] = [&X_USER_ID, &X_USER_EMAIL, &X_USER_GROUPS, &X_USER_ASSERTION];

/// `x-user-email` as people write it, `X-User-Email` (for messages).
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The identity header `n` (lowercase, as hyper keeps names) is an alias of: the same
/// letters with another separator than `-` in one place at least (`x_user_email`,
/// `x.user.email`, `x~user-email`). CGI-style servers (PHP, WSGI, Rack) turn every such
/// character into `_`, so an app may read it as the real header; the proxy configs
/// delete the underscore spellings, and nginx drops the others, but Traefik and Caddy
/// pass them through. The correct spelling is not an alias: the proxy replaces it.
fn identity_alias(n: &str) -> Option<&'static HeaderName> {
    IDENTITY.into_iter().find(|k| {
        let k = k.as_str();
        k.len() == n.len()
            && n != k
            && k.bytes().zip(n.bytes()).all(|(a, b)| {
                if a == b'-' {
                    !b.is_ascii_alphanumeric()
                } else {
                    a == b
                }
            })
    })
}

use ForwardedError::Invalid;

/// One pass over the request's headers (every `/verify` makes it; six map lookups
/// would hash six names): the forwarded ones, each at most once; and no alias of an
/// identity header (`identity_alias`).
fn fields(h: &HeaderMap) -> Result<Fields<'_>, ForwardedError> {
    let mut f: Fields = [None; 6];
    for (name, value) in h {
        let n = name.as_str();
        // All of them start with `x`: most headers stop here.
        if !n.starts_with('x') {
            continue;
        }
        if let Some(k) = identity_alias(n) {
            return Err(ForwardedError::IdentityAlias(k));
        }
        // Ours are 14 to 18 bytes long and start with `x-`.
        if !(14..=18).contains(&n.len()) || !n.starts_with("x-") {
            continue;
        }
        let Some(i) = NAMES.iter().position(|&k| k == n) else {
            continue;
        };
        if f[i].replace(value).is_some() {
            return Err(ForwardedError::Duplicate(NAMES[i]));
        }
    }
    Ok(f)
}

/// A field's value: visible ASCII, no spaces.
fn text<'a>(f: &Fields<'a>, i: usize) -> Result<Option<&'a str>, ForwardedError> {
    let Some(v) = f[i] else { return Ok(None) };
    // `to_str` admits visible ASCII, space and tab (and is quicker on short values than
    // `str::from_utf8`); spaces and tabs are refused here.
    match v.to_str() {
        Ok(s) if !s.bytes().any(|c| c == b' ' || c == b'\t') => Ok(Some(s)),
        _ => Err(ForwardedError::NotAscii(NAMES[i])),
    }
}

fn method<'a>(f: &Fields<'a>, i: usize) -> Result<Option<&'a str>, ForwardedError> {
    match text(f, i)? {
        None => Ok(None),
        Some(m) if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) => Ok(Some(m)),
        Some(_) => Err(Invalid(NAMES[i])),
    }
}

/// `host[:port]` as a proxy forwards it: a DNS name (letters, digits, `-`, `_`, dots) or
/// an IPv4 / bracketed IPv6 literal, and an optional decimal port.
fn authority<'a>(
    a: &'a str,
    https: bool,
    name: &'static str,
) -> Result<(Cow<'a, str>, Option<u16>), ForwardedError> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']').ok_or(Invalid(name))?;
        rest[..end].parse::<Ipv6Addr>().map_err(|_| Invalid(name))?;
        (&a[..end + 2], &rest[end + 1..])
    } else {
        match a.find(':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, ""),
        }
    };
    let port = match port {
        "" => None,
        p => {
            let digits = p.strip_prefix(':').ok_or(Invalid(name))?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(Invalid(name));
            }
            let n: u16 = digits.parse().map_err(|_| Invalid(name))?;
            (n != if https { 443 } else { 80 }).then_some(n)
        }
    };
    if host.starts_with('[') {
        return Ok((Cow::Owned(host.to_ascii_lowercase()), port));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let dns_ok = crate::config::is_dns_name(host, true);
    // A last label starting with a digit is only accepted as a canonical IPv4 address:
    // `0x7f.1`, `2130706433` and `127.1` are refused, not reinterpreted.
    let b = host.as_bytes();
    let last = b.iter().rposition(|&c| c == b'.').map_or(0, |i| i + 1);
    let numeric = b.get(last).is_some_and(u8::is_ascii_digit);
    if !dns_ok || (numeric && host.parse::<Ipv4Addr>().is_err()) {
        return Err(Invalid(name));
    }
    let host = if b.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    // Punycode labels must decode (found by tests/fuzz.rs: `xn--ap` is no name; checked
    // after lowercasing, so `XN--AP` is no name either). Rare, so the full IDNA check
    // costs the hot path nothing for other hosts; a byte scan, not a substring search,
    // finds it.
    if host.as_bytes().windows(4).any(|w| w == b"xn--") && url::Host::parse(&host).is_err() {
        return Err(Invalid(name));
    }
    Ok((host, port))
}

/// A path and query as forwarded: starts with one `/`, no fragment.
fn path<'a>(p: &'a str, name: &'static str) -> Result<&'a str, ForwardedError> {
    if !p.starts_with('/') || p.starts_with("//") || p.contains(['#', '\\']) {
        return Err(Invalid(name));
    }
    Ok(p)
}

/// `X-Original-URL`: exactly `http(s)://host[:port][/path][?query]`.
fn original_url<'a>(s: &'a str, method: &'a str) -> Result<Original<'a>, ForwardedError> {
    const NAME: &str = "X-Original-URL";
    let (https, rest) = if s.len() > 8 && s[..8].eq_ignore_ascii_case("https://") {
        (true, &s[8..])
    } else if s.len() > 7 && s[..7].eq_ignore_ascii_case("http://") {
        (false, &s[7..])
    } else {
        return Err(ForwardedError::NotAbsolute);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, p) = rest.split_at(end);
    if auth.contains('@') {
        return Err(Invalid(NAME));
    }
    let (host, port) = authority(auth, https, NAME)?;
    let p = match p {
        "" => "/",
        p if p.starts_with('?') => return Err(Invalid(NAME)), // needs a path; proxies send one
        p => path(p, NAME)?,
    };
    Ok(Original {
        https,
        host,
        port,
        path: p,
        method,
    })
}

pub fn original(h: &HeaderMap) -> Result<Original<'_>, ForwardedError> {
    let f = fields(h)?;
    let xm = method(&f, FORWARDED_METHOD)?;
    let om = method(&f, ORIGINAL_METHOD)?;
    if let (Some(a), Some(b)) = (om, xm) {
        if a != b {
            return Err(ForwardedError::Conflict);
        }
    }
    let method = om.or(xm).unwrap_or("GET");
    let fwd = forwarded(&f, method)?;
    match (text(&f, ORIGINAL_URL)?, fwd) {
        (Some(url), fwd) => {
            let o = original_url(url, method)?;
            // Both present (a proxy that sends both, or a client adding one the proxy
            // passed through): they must describe the same request.
            if let Some((f, complete)) = fwd {
                let same = if complete {
                    f.same_place(&o)
                } else {
                    f.host == o.host
                };
                if !same {
                    return Err(ForwardedError::Conflict);
                }
            }
            Ok(o)
        }
        (None, Some((f, _))) => Ok(f),
        (None, None) => Err(ForwardedError::Missing),
    }
}

/// The request from `X-Forwarded-Host/-Proto/-Uri`, and whether all three were sent.
fn forwarded<'a>(
    f: &Fields<'a>,
    method: &'a str,
) -> Result<Option<(Original<'a>, bool)>, ForwardedError> {
    let Some(host) = text(f, FORWARDED_HOST)? else {
        return Ok(None);
    };
    let proto = text(f, FORWARDED_PROTO)?;
    let uri = text(f, FORWARDED_URI)?;
    let https = match proto {
        None => false,
        Some(p) if p.eq_ignore_ascii_case("https") => true,
        Some(p) if p.eq_ignore_ascii_case("http") => false,
        Some(_) => return Err(Invalid("X-Forwarded-Proto")),
    };
    let (host, port) = authority(host, https, "X-Forwarded-Host")?;
    let path = path(uri.unwrap_or("/"), "X-Forwarded-Uri")?;
    Ok(Some((
        Original {
            https,
            host,
            port,
            path,
            method,
        },
        proto.is_some() && uri.is_some(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Parse and return an owned summary: (url, method, host, port).
    fn parse(
        pairs: &[(&'static str, &[u8])],
    ) -> Result<(String, String, String, Option<u16>), ForwardedError> {
        let h = hm(pairs);
        original(&h).map(|o| (o.url(), o.method.to_string(), o.host().to_string(), o.port))
    }

    /// A relative or non-http X-Original-URL says what it must be.
    #[test]
    fn a_relative_original_url_is_told_to_be_absolute() {
        for v in [
            &b"/anything"[..],
            b"ftp://a.example.com/",
            b"a.example.com/",
        ] {
            let e = parse(&[("x-original-url", v)]).unwrap_err();
            assert_eq!(e, ForwardedError::NotAbsolute);
            assert!(e.to_string().contains("absolute http:// or https:// URL"));
        }
    }

    /// Punycode that does not decode is no host name, in any case (`XN--` included: the
    /// host is lowercased before it is used).
    #[test]
    fn undecodable_punycode_is_refused_in_any_case() {
        for host in ["xn--ap.example", "XN--AP.example", "a.Xn--ap", "xn--ap"] {
            assert!(authority(host, true, "X-Forwarded-Host").is_err(), "{host}");
        }
        let (h, _) = authority("XN--BCHER-KVA.example", true, "X-Forwarded-Host").unwrap();
        assert_eq!(h, "xn--bcher-kva.example");
    }

    #[test]
    fn nginx_style() {
        let h = hm(&[
            ("x-original-url", b"https://App.Example.com/a/b?c=d"),
            ("x-original-method", b"post"),
        ]);
        let o = original(&h).unwrap();
        assert_eq!(o.url(), "https://app.example.com/a/b?c=d");
        assert_eq!(o.method, "post");
        assert!(!o.is_read());
        assert_eq!(o.host(), "app.example.com");
    }

    #[test]
    fn traefik_caddy_style() {
        let o = parse(&[
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"app.example.com:8443"),
            ("x-forwarded-uri", b"/x?y=1&z=2"),
            ("x-forwarded-method", b"GET"),
        ])
        .unwrap();
        assert_eq!(o.0, "https://app.example.com:8443/x?y=1&z=2");
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
            vec![("x-forwarded-host", b"a%2eexample.com")],
            vec![("x-forwarded-host", b"0x7f.1")],
            vec![("x-forwarded-host", b"2130706433")],
            vec![("x-forwarded-host", b"127.1")],
            vec![("x-forwarded-host", b"a.example.com:")],
            vec![("x-forwarded-host", b"a.example.com:99999")],
            vec![("x-forwarded-host", b"a.example.com:+80")],
            vec![("x-forwarded-host", b"[::1")],
            vec![("x-forwarded-host", b"[zz::1]")],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-uri", b"/a#frag"),
            ],
            vec![
                ("x-forwarded-host", b"a.example.com"),
                ("x-forwarded-uri", b"/a\\b"),
            ],
            vec![("x-original-url", b"https://a.example.com\\@evil.com/")],
            vec![("x-original-url", b"https://a.example.com?x")],
            vec![("x-original-url", b"https://")],
        ];
        for c in cases {
            assert!(parse(&c).is_err(), "accepted {c:?}");
        }
    }

    /// Every spelling of an identity header with another separator than `-` is refused
    /// (an app may read it as the real one); the real spelling, look-alikes of another
    /// length and other letters are not.
    #[test]
    fn aliases_of_the_identity_headers_are_refused() {
        // The forwarded request with one more header named `name`.
        let with = |name: &str| {
            let mut h = hm(&[("x-original-url", b"https://app.example.com/")]);
            h.insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
            original(&h).map(|_| ())
        };
        for alias in [
            "x_user_email",
            "x.user.email",
            "x~user~email",
            "x!user-email",
            "x-user|email",
            "x_user-id",
            "x.user.groups",
            "x'user'assertion",
            "x^user^assertion",
        ] {
            let e = with(alias).unwrap_err();
            assert!(
                matches!(e, ForwardedError::IdentityAlias(_)),
                "{alias}: {e:?}"
            );
        }
        for fine in [
            "x-user-email",
            "x-user-id",
            "x-user--id",
            "x-useremail",
            "x-users-email",
            "xuser-email0",
            "x-forwarded-for",
        ] {
            assert!(with(fine).is_ok(), "{fine}");
        }
        assert_eq!(identity_alias("x.user.email"), Some(&X_USER_EMAIL));
        assert!(ForwardedError::IdentityAlias(&X_USER_EMAIL)
            .to_string()
            .contains("spelled like X-User-Email"));
    }

    /// Other headers, repeated or not, and look-alike names do not count.
    #[test]
    fn only_the_forwarded_headers_count() {
        let o = parse(&[
            ("x-forwarded-for", b"192.0.2.1"),
            ("x-forwarded-for", b"192.0.2.2"),
            ("x-forwarded-hosts", b"evil.example"),
            ("x-forwarded-hos", b"evil.example"),
            ("forwarded-host", b"evil.example"),
            ("x-forwarded-host", b"a.example.com"),
            ("cookie", b"a=1"),
            ("cookie", b"b=2"),
        ])
        .unwrap();
        assert_eq!(o.2, "a.example.com");
        for name in NAMES {
            let dup = parse(&[
                (name, b"x"),
                (name, b"y"),
                ("x-forwarded-host", b"a.example.com"),
            ]);
            assert_eq!(dup, Err(ForwardedError::Duplicate(name)), "{name}");
        }
    }

    #[test]
    fn both_styles_agreeing_is_fine() {
        let o = parse(&[
            ("x-original-url", b"http://app.example.com:8080/a?b=c"),
            ("x-forwarded-proto", b"http"),
            ("x-forwarded-host", b"app.example.com:8080"),
            ("x-forwarded-uri", b"/a?b=c"),
        ])
        .unwrap();
        assert_eq!(o.0, "http://app.example.com:8080/a?b=c");
    }

    #[test]
    fn ports_and_literals() {
        let o = parse(&[("x-original-url", b"https://a.example.com:443/")]).unwrap();
        assert_eq!(o.0, "https://a.example.com/");
        let o = parse(&[("x-forwarded-host", b"127.0.0.1:8080")]).unwrap();
        assert_eq!(o.0, "http://127.0.0.1:8080/");
        let o = parse(&[
            ("x-forwarded-host", b"[::1]:8443"),
            ("x-forwarded-proto", b"https"),
        ])
        .unwrap();
        assert_eq!(o.0, "https://[::1]:8443/");
    }

    /// Whatever this parser accepts, a general URL parser reads as the same place.
    #[test]
    fn agrees_with_the_url_crate_on_what_it_accepts() {
        for raw in [
            "https://App.Example.com/a/b?c=d",
            "http://a.example.com:8080/x%20y?q=%41",
            "http://a_b.internal/",
            "https://[::1]:8443/p",
            "http://10.0.0.1/",
            "https://a.example.com./x",
        ] {
            let h = hm(&[("x-original-url", raw.as_bytes())]);
            let o = original(&h).unwrap();
            let u = url::Url::parse(raw).unwrap();
            assert_eq!(
                o.host(),
                u.host_str().unwrap().trim_end_matches('.'),
                "{raw}"
            );
            assert_eq!(o.port, u.port(), "{raw}");
            assert_eq!(o.https, u.scheme() == "https", "{raw}");
        }
    }

    #[test]
    fn mixed_case_hosts_normalise() {
        let a = parse(&[("x-forwarded-host", b"APP.Example.COM")]).unwrap();
        let b = parse(&[("x-forwarded-host", b"app.example.com")]).unwrap();
        let c = parse(&[("x-original-url", b"http://app.example.com./")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}
