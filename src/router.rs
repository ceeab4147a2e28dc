//! The one routing table: `(method, path)` to a handler.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Method, Request, StatusCode};

use crate::error::AppError;
use crate::handlers::verify::{self, Style};
use crate::handlers::{account, auth, health, sign_in};
use crate::pages;
use crate::web::{self, Ctx, Resp};

pub async fn route(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    let path = req.uri().path().to_string();
    let m = req.method().clone();
    let read = m == Method::GET || m == Method::HEAD;
    if m == Method::OPTIONS && web::cors_path(&path) {
        return web::preflight(req.headers(), &path, &ctx.app);
    }
    match path.as_str() {
        "/verify" if read => verify::verify(ctx, req, Style::Status).await,
        "/verify/redirect" if read => verify::verify(ctx, req, Style::Redirect).await,
        "/" if read => auth::index(ctx, req).await,
        "/auth" if m == Method::POST => auth::start(ctx, req).await,
        "/auth" if m == Method::GET => auth::wait(ctx, req).await,
        "/auth/code" if m == Method::POST => auth::code(ctx, req).await,
        "/me" if read => account::me(ctx, req).await,
        "/sign_out" if m == Method::POST => account::sign_out(ctx, req).await,
        "/healthz" if read => health::healthz(ctx).await,
        "/readyz" if read => health::readyz(ctx).await,
        "/static/style.css" if read => Ok(asset("text/css; charset=utf-8", pages::STYLE_CSS)),
        "/static/wait.js" if read => Ok(asset("text/javascript; charset=utf-8", pages::WAIT_JS)),
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
        "/" | "/me" | "/healthz" | "/readyz" | "/verify" | "/verify/redirect" => {
            Err(AppError::MethodNotAllowed("GET, HEAD"))
        }
        "/auth" => Err(AppError::MethodNotAllowed("GET, POST")),
        "/auth/code" | "/sign_out" => Err(AppError::MethodNotAllowed("POST")),
        _ => Err(AppError::NotFound),
    }
}

fn asset(ctype: &'static str, body: &'static str) -> Resp {
    let mut r = web::with_type(
        StatusCode::OK,
        ctype,
        bytes::Bytes::from_static(body.as_bytes()),
    );
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// The path as it may be logged: link secrets are redacted.
pub fn loggable_path(path: &str) -> &str {
    if path.starts_with("/sign_in/") {
        "/sign_in/{secret}"
    } else if path.len() > 200 {
        "{long path}"
    } else {
        path
    }
}
