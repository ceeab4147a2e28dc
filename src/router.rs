//! The one routing table: `(method, path)` to a handler.

use std::borrow::Cow;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Method, Request, StatusCode};

use crate::error::AppError;
use crate::handlers::verify::{self, Style};
use crate::handlers::{account, api, auth, health, jwks, sign_in};
use crate::pages;
use crate::web::{self, Ctx, Resp};

pub async fn route(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    // (A cached `/verify` never gets here: `server::answer` answers it on the spot.)
    match verify_style(&req) {
        Some(style) => verify::verify(ctx, req, style).await,
        None => route_pages(ctx, req).await,
    }
}

/// `GET` or `HEAD` `/verify` (nginx's style of answer) or `/verify/redirect`.
pub fn verify_style(req: &Request<Incoming>) -> Option<Style> {
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/verify" if read => Some(Style::Status),
        "/verify/redirect" if read => Some(Style::Redirect),
        _ => None,
    }
}

async fn route_pages(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    let path = req.uri().path().to_string();
    let m = req.method().clone();
    let read = m == Method::GET || m == Method::HEAD;
    if m == Method::OPTIONS && web::cors_path(&path) {
        return web::preflight(req.headers(), &path, &ctx.app);
    }
    match path.as_str() {
        "/" if read => auth::index(ctx, req).await,
        "/auth" if m == Method::POST => auth::start(ctx, req).await,
        "/auth" if m == Method::GET => auth::wait(ctx, req).await,
        "/auth/code" if m == Method::POST => auth::code(ctx, req).await,
        "/me" if read => account::me(ctx, req).await,
        "/sign_out" if m == Method::POST => account::sign_out(ctx, req).await,
        "/healthz" if read => health::healthz(ctx).await,
        "/readyz" if read => health::readyz(ctx).await,
        "/.well-known/jwks.json" if read => Ok(jwks::jwks(ctx)),
        // On the main listener unless `metrics.listen` gives it one of its own.
        "/metrics"
            if read
                && ctx.app.cfg.metrics.enabled
                && ctx.app.cfg.derived.metrics_listen.is_none() =>
        {
            health::metrics(ctx).await
        }
        // On the main listener unless `api.listen` gives the API one of its own.
        p if p.starts_with("/api/") => {
            if ctx.app.cfg.derived.api_listen.is_some() {
                Err(AppError::NotFound)
            } else {
                Box::pin(route_api_paths(ctx, req, &m)).await
            }
        }
        "/static/style.css" if read => Ok(asset(
            "text/css; charset=utf-8",
            ctx.app.cfg.derived.branding.css.clone(),
        )),
        "/static/wait.js" if read => Ok(asset(
            "text/javascript; charset=utf-8",
            bytes::Bytes::from_static(pages::WAIT_JS.as_bytes()),
        )),
        p if p.starts_with("/sign_in/") => {
            let secret = p["/sign_in/".len()..].to_string();
            if read {
                sign_in::show(ctx, req, &secret).await
            } else if m == Method::POST {
                sign_in::act(ctx, req, &secret).await
            } else {
                Err(AppError::MethodNotAllowed("GET, HEAD, POST"))
            }
        }
        "/"
        | "/me"
        | "/healthz"
        | "/readyz"
        | "/verify"
        | "/verify/redirect"
        | "/.well-known/jwks.json" => Err(AppError::MethodNotAllowed("GET, HEAD")),
        "/auth" => Err(AppError::MethodNotAllowed("GET, POST")),
        "/auth/code" | "/sign_out" => Err(AppError::MethodNotAllowed("POST")),
        _ => Err(AppError::NotFound),
    }
}

/// Pages link these with `?v=` (the stylesheet) or not at all across versions (the
/// script is tiny and checked for on every waiting page), so an hour of caching is safe.
fn asset(ctype: &'static str, body: bytes::Bytes) -> Resp {
    let mut r = web::with_type(StatusCode::OK, ctype, body);
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// The separate metrics listener (`metrics.listen`): `/metrics`, and the health checks
/// for probes that use the same port; nothing else.
pub async fn route_metrics(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/metrics" if read => health::metrics(ctx).await,
        "/healthz" if read => health::healthz(ctx).await,
        "/readyz" if read => health::readyz(ctx).await,
        "/metrics" | "/healthz" | "/readyz" => Err(AppError::MethodNotAllowed("GET, HEAD")),
        _ => Err(AppError::NotFound),
    }
}

/// The separate API listener (`api.listen`): `/api/`, and the health checks.
pub async fn route_api(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    let m = req.method().clone();
    let read = m == Method::GET || m == Method::HEAD;
    match req.uri().path() {
        "/healthz" if read => health::healthz(ctx).await,
        "/readyz" if read => health::readyz(ctx).await,
        "/healthz" | "/readyz" => Err(AppError::MethodNotAllowed("GET, HEAD")),
        p if p.starts_with("/api/") => route_api_paths(ctx, req, &m).await,
        _ => Err(AppError::NotFound),
    }
}

async fn route_api_paths(ctx: &Ctx, req: Request<Incoming>, m: &Method) -> web::Result<Resp> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/api/email" if m == Method::POST => api::send(ctx, req).await,
        "/api/email" => Err(AppError::MethodNotAllowed("POST")),
        p if p.starts_with("/api/email/") && !p["/api/email/".len()..].contains('/') => {
            if m == Method::GET || m == Method::HEAD {
                api::status(ctx, req, &p["/api/email/".len()..]).await
            } else {
                Err(AppError::MethodNotAllowed("GET, HEAD"))
            }
        }
        _ => Err(AppError::NotFound),
    }
}

/// The path as it may be logged: link secrets are redacted; known routes cost no
/// allocation.
pub fn loggable_path(path: &str) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "/verify",
        "/verify/redirect",
        "/",
        "/auth",
        "/auth/code",
        "/me",
        "/sign_out",
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/jwks.json",
        "/static/style.css",
        "/static/wait.js",
    ];
    if let Some(k) = KNOWN.iter().find(|k| **k == path) {
        Cow::Borrowed(k)
    } else if path.starts_with("/sign_in/") {
        Cow::Borrowed("/sign_in/{secret}")
    } else if path == "/api/email" {
        Cow::Borrowed("/api/email")
    } else if path.len() > 200 {
        Cow::Borrowed("{long path}")
    } else {
        Cow::Owned(path.to_string())
    }
}
