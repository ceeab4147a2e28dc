//! The request wrapper and the small HTTP vocabulary handlers share: the per-request
//! context (client IP, cookies, content negotiation), body and form reading under a size
//! limit, the same-origin check for state-changing POSTs, response builders, and the
//! security headers every response carries.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::app::App;
use crate::config::{host_within, Config};
use crate::error::AppError;
use crate::secrets::{self, Hash};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

pub type Body = Full<Bytes>;
pub type Resp = Response<Body>;
pub type Result<T> = std::result::Result<T, AppError>;

/// The signed-in user a response was about, for the request log line (a response
/// extension: set by handlers that know it, read by the request wrapper).
#[derive(Clone, Copy, Debug)]
pub struct UserId(pub i64);

/// The app, as a request holds it: through its connection's own reference (see
/// `server::Connection`), so taking one per request touches a counter that only that
/// connection uses, not the app's, which every request on every core would bounce
/// between caches.
pub struct AppRef(pub(crate) Arc<crate::server::Connection>);

impl std::ops::Deref for AppRef {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0.app
    }
}

/// What every handler gets besides the request.
pub struct Ctx {
    pub app: AppRef,
    pub client_ip: IpAddr,
    pub wants_json: bool,
    /// For the audit trail (a cheap reference-counted copy).
    pub user_agent: Option<HeaderValue>,
    /// When the request arrived (one clock read serves the log, the metrics and the
    /// session cache).
    pub started: std::time::Instant,
}

impl Ctx {
    pub fn new(app: AppRef, peer: SocketAddr, req: &Request<Incoming>) -> Ctx {
        let trusted = &app.cfg.derived.trusted_proxies;
        let client_ip = if trusted.is_empty() {
            peer.ip()
        } else {
            let xff = req
                .headers()
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok());
            crate::net::client_ip(peer.ip(), xff, trusted)
        };
        // The API answers in JSON whatever the client accepts.
        let wants_json = wants_json(req.headers()) || req.uri().path().starts_with("/api/");
        Ctx {
            app,
            client_ip,
            wants_json,
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            started: std::time::Instant::now(),
        }
    }

    /// Record a security event with this request's client IP and user agent.
    pub fn audit(
        &self,
        event: &'static str,
        email: &str,
        user_id: Option<i64>,
        detail: impl Into<String>,
    ) {
        let ua = self
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ua: String = ua.chars().take(256).collect();
        self.app.audit.record(
            event,
            email,
            user_id,
            &self.client_ip.to_string(),
            &ua,
            detail,
        );
    }

    /// Like `audit`, at most once a minute per `(event, key)`: for events an attacker can
    /// repeat at will (refusals, rate limits, denied access).
    pub fn audit_once(
        &self,
        event: &'static str,
        key: &str,
        email: &str,
        user_id: Option<i64>,
        detail: impl Into<String>,
    ) {
        let k = format!("{event}\0{key}");
        let limits = &self.app.limits;
        let now = std::time::Instant::now();
        if limits.audit_echo.hit(k.as_bytes(), now).is_err() {
            return;
        }
        // A budget per kind of event, so a flood of one kind cannot hide the others.
        if limits.audit_budget.hit(event.as_bytes(), now).is_err() {
            let n = limits
                .audit_suppressed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    suppressed = n,
                    "more than {} repeated security events a minute: not all are recorded",
                    crate::limits::AUDIT_BUDGET
                );
            }
            return;
        }
        self.audit(event, email, user_id, detail);
    }
}

/// JSON when the client asks for it (`Accept: application/json`, or it sent JSON).
pub fn wants_json(h: &HeaderMap) -> bool {
    header_has(h, &header::ACCEPT, b"application/json")
        || header_has(h, &header::CONTENT_TYPE, b"application/json")
}

/// Whether header `name` contains `needle` (lowercase ASCII), ignoring case, without
/// allocating: this runs on every request.
pub fn header_has(h: &HeaderMap, name: &HeaderName, needle: &[u8]) -> bool {
    h.get(name).is_some_and(|v| {
        v.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    })
}

pub fn user_agent(h: &HeaderMap) -> String {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
        .unwrap_or_default()
}

/// A cookie value without surrounding blanks and double quotes. (Header values are
/// visible ASCII, space and tab, so ASCII trimming is all the trimming there is; byte
/// work, on every `/verify`.)
fn cookie_value(v: &str) -> &str {
    let v = v.trim_ascii();
    let b = v.as_bytes();
    let start = b.iter().position(|&c| c != b'"').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b'"').map_or(start, |i| i + 1);
    &v[start..end]
}

/// The session token from the cookie, if exactly one well-formed value is present.
/// Duplicated cookies of our name are treated as no session: we cannot tell which one a
/// browser meant, and an attacker-planted one must not win.
pub fn session_token<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found: Option<&str> = None;
    for v in h.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((k, val)) = pair.split_once('=') else {
                continue;
            };
            if k.trim_ascii() == name {
                if found.is_some() {
                    return None;
                }
                found = Some(cookie_value(val));
            }
        }
    }
    found.filter(|t| secrets::well_formed(t))
}

pub fn session_hash(h: &HeaderMap, name: &str) -> Option<Hash> {
    session_token(h, name).map(secrets::hash)
}

/// Every well-formed value of our cookie, duplicates included: what sign-out ends.
pub fn all_session_hashes(h: &HeaderMap, name: &str) -> Vec<Hash> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| k.trim_ascii() == name)
        .map(|(_, v)| cookie_value(v))
        .filter(|t| secrets::well_formed(t))
        .map(secrets::hash)
        .collect()
}

/// Refuse state-changing requests from other sites (login CSRF, forced sign-out).
/// An `Origin` must be ours or an allowed one; without `Origin`, a browser's
/// `Sec-Fetch-Site: cross-site` is refused. Non-browser clients send neither.
pub fn check_origin(h: &HeaderMap, app: &App) -> Result<()> {
    let fetch_site = h.get(&SEC_FETCH_SITE).and_then(|v| v.to_str().ok());
    if let Some(origin) = h.get(header::ORIGIN) {
        let o = origin.to_str().map_err(|_| AppError::CrossSite)?;
        // `same-origin` is the browser's word that the form came from the very origin
        // it posts to (e.g. http://127.0.0.1:9091 when public_url says localhost).
        return if origin_allowed(o, &app.cfg) || fetch_site == Some("same-origin") {
            Ok(())
        } else {
            Err(AppError::CrossSite)
        };
    }
    match fetch_site {
        Some("cross-site") => Err(AppError::CrossSite),
        _ => Ok(()),
    }
}

/// Our own origin, an origin on the cookie domain, or one listed in `cors.allowed_origins`.
pub fn origin_allowed(origin: &str, cfg: &Config) -> bool {
    if origin == cfg.derived.public_origin
        || cfg
            .cors
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin)
    {
        return true;
    }
    let Some(domain) = &cfg.derived.cookie_domain else {
        return false;
    };
    let Ok(u) = url::Url::parse(origin) else {
        return false;
    };
    let scheme_ok = match u.scheme() {
        "https" => true,
        // With Secure cookies, a plain-http sibling must not read /me or post here.
        "http" => !cfg.cookie.secure,
        _ => false,
    };
    scheme_ok
        && u.origin().ascii_serialization() == origin
        && u.host_str().is_some_and(|h| host_within(h, domain))
}

/// Paths a page on another allowed origin may call with `credentials: "include"`.
pub fn cors_path(path: &str) -> bool {
    matches!(path, "/auth" | "/auth/code" | "/me" | "/sign_out")
}

/// The `Origin` to echo in CORS headers: present, allowed, and on a CORS path. Never `*`.
pub fn cors_origin(h: &HeaderMap, path: &str, app: &App) -> Option<HeaderValue> {
    // The path first: it is a few compares, the header a hash lookup (every /verify).
    if !cors_path(path) {
        return None;
    }
    let o = h.get(header::ORIGIN)?;
    o.to_str()
        .is_ok_and(|s| origin_allowed(s, &app.cfg))
        .then(|| o.clone())
}

pub fn add_cors(r: &mut Resp, origin: HeaderValue) {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// Answer a CORS preflight: allowed origins get the methods and headers they may use.
pub fn preflight(h: &HeaderMap, path: &str, app: &App) -> Result<Resp> {
    if cors_origin(h, path, app).is_none() {
        return Err(AppError::CrossSite);
    }
    let mut r = empty(StatusCode::NO_CONTENT);
    let hs = r.headers_mut();
    hs.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    hs.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Accept, X-Requested-With"),
    );
    hs.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Ok(r)
}

/// Read the whole body, refusing more than `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<(HeaderMap, Bytes)> {
    let (parts, body) = req.into_parts();
    if parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(AppError::PayloadTooLarge);
    }
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                AppError::PayloadTooLarge
            } else {
                AppError::BadRequest("the request body could not be read".into())
            }
        })?
        .to_bytes();
    Ok((parts.headers, bytes))
}

/// Form fields from a urlencoded, multipart or JSON body (first value of each name).
pub async fn parse_form(h: &HeaderMap, body: Bytes) -> Result<HashMap<String, String>> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut out = HashMap::new();
    match mime.as_str() {
        "application/x-www-form-urlencoded" | "" => {
            for (k, v) in url::form_urlencoded::parse(&body) {
                out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        "application/json" => {
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| AppError::BadRequest("the JSON body is not valid".into()))?;
            let obj = v
                .as_object()
                .ok_or_else(|| AppError::BadRequest("the JSON body must be an object".into()))?;
            for (k, v) in obj {
                if let Some(s) = v.as_str() {
                    out.insert(k.clone(), s.to_string());
                }
            }
        }
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(ct)
                .map_err(|_| AppError::BadRequest("multipart body without a boundary".into()))?;
            let stream =
                futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
            let mut mp = multer::Multipart::new(stream, boundary);
            let bad = |_| AppError::BadRequest("the multipart body is malformed".into());
            while let Some(field) = mp.next_field().await.map_err(bad)? {
                let Some(name) = field.name().map(str::to_string) else {
                    continue;
                };
                let text = field.text().await.map_err(bad)?;
                out.entry(name).or_insert(text);
            }
        }
        _ => return Err(AppError::UnsupportedMediaType),
    }
    Ok(out)
}

/// Query parameters (first value of each name).
pub fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(q) = req.uri().query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    out
}

// ---- responses ----

pub fn html(status: StatusCode, body: String) -> Resp {
    with_type(status, "text/html; charset=utf-8", body.into())
}

pub fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    with_type(status, "application/json", v.to_string().into())
}

pub fn with_type(status: StatusCode, ctype: &'static str, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// A response with no body at all (`Content-Length: 0`), as proxies expect from `/verify`.
pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

pub fn redirect(location: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The session cookie as configured: HttpOnly, SameSite, Secure per config, Path=/,
/// Domain per config.
pub fn session_cookie(app: &App, value: &str, max_age_secs: i64) -> HeaderValue {
    let c = &app.cfg.cookie;
    let mut b = cookie::Cookie::build((c.name.clone(), value.to_string()))
        .path("/")
        .http_only(true)
        .secure(c.secure)
        .same_site(if c.same_site == "strict" {
            cookie::SameSite::Strict
        } else {
            cookie::SameSite::Lax
        })
        .max_age(cookie::time::Duration::seconds(max_age_secs));
    if let Some(d) = &app.cfg.derived.cookie_domain {
        b = b.domain(d.clone());
    }
    HeaderValue::from_str(&b.build().to_string()).expect("cookie is ASCII")
}

pub fn set_cookie(r: &mut Resp, v: HeaderValue) {
    r.headers_mut().append(header::SET_COOKIE, v);
}

/// Headers every response carries. Pages here carry or follow secrets, so nothing is
/// cached and no referrer leaks a link: `strict-origin` sends our origin and never a
/// path. (Not `no-referrer`: under it browsers send `Origin: null` with form posts, and
/// without `Sec-Fetch-Site` — plain http on a real host name — `check_origin` could not
/// tell our own forms from another site's, nor the 403 page's sign-out on the app host.)
/// HTML gets `csp` (built from `[branding]`, see `branding`) unless the handler set a
/// policy of its own.
pub fn security_headers(r: &mut Resp, csp: &HeaderValue) {
    let h = r.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("strict-origin"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    let is_html = h
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_html && !h.contains_key("content-security-policy") {
        h.insert("content-security-policy", csp.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::NoEnv;

    fn cfg(secure: bool) -> Config {
        let scheme = if secure { "https" } else { "http" };
        Config::from_toml(
            &format!(
                "public_url = \"{scheme}://auth.example.com\"\ncors.allowed_origins = [\"https://partner.org\"]\n[cookie]\ndomain = \"example.com\"\nsecure = {secure}\n"
            ),
            &NoEnv,
        )
        .unwrap()
    }

    /// `cookie_value` trims as `trim().trim_matches('"')` did, on everything a header
    /// value can hold (visible ASCII, space and tab).
    #[test]
    fn cookie_values_trim_as_before() {
        let alphabet = b" \t\"=;abAB09-_";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 12) as usize;
            let v: String = (0..len)
                .map(|i| alphabet[((state >> (i * 4)) % alphabet.len() as u64) as usize] as char)
                .collect();
            assert_eq!(cookie_value(&v), v.trim().trim_matches('"'), "{v:?}");
        }
        assert_eq!(cookie_value(" \"abc\" "), "abc");
        assert_eq!(cookie_value("\"\""), "");
    }

    #[test]
    fn origins() {
        let c = cfg(true);
        assert!(origin_allowed("https://auth.example.com", &c));
        assert!(origin_allowed("https://app.example.com", &c));
        assert!(origin_allowed("https://partner.org", &c));
        assert!(
            !origin_allowed("http://app.example.com", &c),
            "no plain http with Secure cookies"
        );
        assert!(!origin_allowed("https://app.example.com.evil.org", &c));
        assert!(!origin_allowed("https://evilexample.com", &c));
        assert!(!origin_allowed("null", &c));
        assert!(
            !origin_allowed("https://app.example.com/", &c),
            "an origin has no path"
        );
        assert!(origin_allowed("http://app.example.com", &cfg(false)));
    }

    #[test]
    fn content_negotiation_ignores_case() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, Application/JSON;q=0.9"),
        );
        assert!(wants_json(&h));
        assert!(header_has(&h, &header::ACCEPT, b"text/html"));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        assert!(!wants_json(&h));
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        let t = "A".repeat(43);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; session_id={t}")).unwrap(),
        );
        assert_eq!(session_token(&h, "session_id"), Some(t.as_str()));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("session_id={t}; session_id={}", "B".repeat(43)))
                .unwrap(),
        );
        assert_eq!(
            session_token(&h, "session_id"),
            None,
            "duplicates are no session"
        );
        assert_eq!(
            all_session_hashes(&h, "session_id").len(),
            2,
            "but sign-out ends both"
        );
        h.insert(header::COOKIE, HeaderValue::from_static("session_id=short"));
        assert_eq!(session_token(&h, "session_id"), None);
    }
}
