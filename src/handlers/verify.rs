//! `/verify` and `/verify/redirect`: the check a reverse proxy makes before every request
//! to a protected app.
//!
//! Two contracts, one per proxy style:
//! - `GET /verify` (nginx `auth_request`, ingress-nginx `auth-url`): 200 signed in,
//!   401 not signed in — with the full sign-in URL in `X-Auth-Redirect` for page
//!   requests, so the proxy can redirect without knowing the portal address.
//! - `GET /verify/redirect` (Traefik `forwardAuth`, Caddy `forward_auth`, which hand the
//!   answer to the client): 200 signed in, 302 to the sign-in page for page requests,
//!   401 for API requests.
//!
//! `[access]` rules are applied first (see `access`): a `bypass` rule answers 200 without
//! identity, a `deny` rule 403; a signed-in user that the global policy or the matching
//! `allow` rule does not admit gets 403 with a page saying so (audited once a minute per
//! user and host).
//!
//! A signed-in answer carries `X-User-Id` and `X-User-Email` (and `X-User-Groups` when
//! the user has groups, and `X-User-Assertion` unless `assertion.enabled` is false),
//! exactly once each, and an empty body. No other answer carries
//! identity headers. No body is read.

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, LOCATION};
use hyper::{Request, StatusCode};

use crate::access::{Rule, RulePolicy};
use crate::error::AppError;
use crate::forwarded::{self, Original, X_USER_ASSERTION, X_USER_EMAIL, X_USER_GROUPS, X_USER_ID};
use crate::pages;
use crate::session;
use crate::web::{self, Ctx, Resp};

static X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// 401 + `X-Auth-Redirect` (nginx).
    Status,
    /// 302 for pages, 401 for APIs (Traefik, Caddy).
    Redirect,
}

pub async fn verify(ctx: &Ctx, req: Request<Incoming>, style: Style) -> web::Result<Resp> {
    let h = req.headers();
    let (original, rule) = match before_session(ctx, h)? {
        Before::Answered(r) => return Ok(r),
        Before::Session(o, rule) => (o, rule),
    };
    let now = crate::store::now();
    let signed = session::current_at(&ctx.app, h, now, ctx.started).await?;
    answer(ctx, h, style, &original, rule, signed, now)
}

/// `verify` without waiting, for the hot path (see `server::Answer`): the same answer,
/// or `None` when it needs the database (a session not cached, due to be read again, or
/// idle by this server's count). Until it has an answer it has no side effects (no log
/// line, metric, audit record, eviction or activity write), so `verify` can then run in
/// full.
pub fn cached(ctx: &Ctx, req: &Request<Incoming>, style: Style) -> Option<web::Result<Resp>> {
    let h = req.headers();
    let (original, rule) = match before_session(ctx, h) {
        Ok(Before::Session(o, rule)) => (o, rule),
        Ok(Before::Answered(r)) => return Some(Ok(r)),
        Err(e) => return Some(Err(e)),
    };
    let now = crate::store::now();
    let signed = match session::cached_at(&ctx.app, h, now, ctx.started) {
        session::Lookup::Done(r) => r,
        session::Lookup::Read { .. } => return None,
    };
    Some(
        signed
            .map_err(AppError::from)
            .and_then(|s| answer(ctx, h, style, &original, rule, s, now)),
    )
}

/// What `/verify` decides before it looks at the session.
enum Before<'a> {
    /// A `bypass` or `deny` rule.
    Answered(Resp),
    /// The original request, and the `[access]` rule that matches it, if any.
    Session(Original<'a>, Option<&'a Rule>),
}

fn before_session<'a>(ctx: &'a Ctx, h: &'a HeaderMap) -> web::Result<Before<'a>> {
    let original = forwarded::original(h).map_err(|e| {
        // An imitated identity header is the client's doing (any client can send one
        // through a proxy that passes it on): not worth a warning per request. The rest
        // come from the proxy's configuration.
        if matches!(e, forwarded::ForwardedError::IdentityAlias(_)) {
            tracing::debug!(error = %e, "verify: refusing an imitated identity header");
        } else {
            tracing::warn!(error = %e, "verify: refusing malformed forwarded headers");
        }
        AppError::BadRequest(e.to_string())
    })?;
    let policy = &ctx.app.cfg.derived.access;
    let rule = if policy.has_rules() {
        policy.rule_for(original.host(), original.path)
    } else {
        None
    };
    match rule.map(|r| r.policy) {
        Some(RulePolicy::Bypass) => Ok(Before::Answered(web::empty(StatusCode::OK))),
        Some(RulePolicy::Deny) => forbidden(ctx, &original, None, h).map(Before::Answered),
        _ => Ok(Before::Session(original, rule)),
    }
}

/// The answer for the session found (`None`: not signed in).
fn answer(
    ctx: &Ctx,
    h: &HeaderMap,
    style: Style,
    original: &Original,
    rule: Option<&Rule>,
    signed: Option<std::sync::Arc<session::Signed>>,
    now: i64,
) -> web::Result<Resp> {
    if let Some(signed) = signed {
        let admitted =
            signed.allowed && rule.is_none_or(|r| r.admits(&signed.user.email, &signed.groups));
        if !admitted {
            let why = match rule {
                Some(r) if signed.allowed => format!("rule {}", r.index),
                _ => "not allowed to sign in".to_string(),
            };
            ctx.audit_once(
                "access_denied",
                &format!("{}\0{}", signed.user.user_id, original.host()),
                &signed.user.email,
                Some(signed.user.user_id),
                // The path only: a query string may hold the app's own secrets.
                format!(
                    "{}{} ({why})",
                    original.host(),
                    crate::access::canonical(original.path)
                        .0
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            );
            return forbidden(ctx, original, Some(&signed.user.email), h);
        }
        let (id, email) = signed
            .headers
            .clone()
            .ok_or_else(|| AppError::Internal("stored address is not a header value".into()))?;
        let mut r = web::empty(StatusCode::OK);
        // Sized once for the identity headers and the assertion (a /verify 200 gets no
        // browser-facing headers on the way out): allocated once, never grown.
        *r.headers_mut() = HeaderMap::with_capacity(4);
        let hs = r.headers_mut();
        hs.insert(&X_USER_ID, id);
        hs.insert(&X_USER_EMAIL, email);
        if let Some(g) = &signed.groups_header {
            hs.insert(&X_USER_GROUPS, g.clone());
        }
        if ctx.app.cfg.assertion.enabled {
            let a = crate::assertion::header(&ctx.app, &signed, original, now)?;
            hs.insert(&X_USER_ASSERTION, a);
        }
        // Only the access log line reads it, and for /verify that line is `debug`: an
        // extension costs two allocations, so it is added only when the line is written.
        if tracing::enabled!(target: "authbase::request", tracing::Level::DEBUG) {
            r.extensions_mut().insert(web::UserId(signed.user.user_id));
        }
        return Ok(r);
    }
    let signin = sign_in_url(ctx, original);
    let page = original.is_read() && is_page_request(h);
    let mut r = match style {
        Style::Redirect if page => {
            let mut r = web::empty(StatusCode::FOUND);
            r.headers_mut().insert(LOCATION, header_value(&signin)?);
            r
        }
        Style::Redirect => web::json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "unauthorized", "message": "Not signed in", "sign_in": signin }),
        ),
        Style::Status => {
            let mut r = web::empty(StatusCode::UNAUTHORIZED);
            if page {
                r.headers_mut()
                    .insert("x-auth-redirect", header_value(&signin)?);
            }
            r
        }
    };
    r.headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("authbase"));
    Ok(r)
}

fn sign_in_url(ctx: &Ctx, original: &Original) -> String {
    format!(
        "{}/?rd={}",
        ctx.app.cfg.public_base(),
        url::form_urlencoded::byte_serialize(original.url().as_bytes()).collect::<String>()
    )
}

/// 403: a page for browsers (shown on the app's host, so it links to authbase by its
/// public URL), JSON for scripts. Never identity headers.
fn forbidden(
    ctx: &Ctx,
    original: &Original,
    email: Option<&str>,
    h: &HeaderMap,
) -> web::Result<Resp> {
    ctx.app.metrics.access_denied();
    if !is_page_request(h) || ctx.wants_json {
        return Ok(web::json(
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": "forbidden", "message": format!("no access to {}", original.host()) }),
        ));
    }
    // "Sign in with another address": the form, even though this browser is signed in.
    let signin = format!("{}&switch=1", sign_in_url(ctx, original));
    let mut r = pages::render(
        StatusCode::FORBIDDEN,
        &pages::Forbidden {
            frame: pages::Frame::elsewhere(&ctx.app.cfg),
            host: original.host(),
            email,
            sign_in: &signin,
        },
    )?;
    // Shown on the app's host, where 'self' would be the app: authbase's origin by name.
    r.headers_mut().insert(
        "content-security-policy",
        ctx.app.cfg.derived.branding.csp_elsewhere.clone(),
    );
    Ok(r)
}

fn header_value(s: &str) -> web::Result<HeaderValue> {
    HeaderValue::from_str(s)
        .map_err(|_| AppError::Internal("sign-in URL is not a header value".into()))
}

/// A browser navigating to a page (redirect it) rather than a script calling an API
/// (tell it 401): one that does not ask for JSON and is not an XHR (the caller checks
/// the method is GET or HEAD).
fn is_page_request(h: &HeaderMap) -> bool {
    if web::header_has(h, &ACCEPT, b"application/json")
        && !web::header_has(h, &ACCEPT, b"text/html")
    {
        return false;
    }
    !h.contains_key(&X_REQUESTED_WITH)
}
