//! Request handlers: plain `async fn`s called by the router, returning `Result<Resp>`.

pub mod account;
pub mod api;
pub mod auth;
pub mod health;
pub mod jwks;
pub mod sign_in;
pub mod verify;

use hyper::StatusCode;

use crate::pages::{self, Message};
use crate::store::Refusal;
use crate::web::{self, Ctx, Resp};

/// A request over one of the `[limits]`: 429 with `Retry-After`, the same for every
/// address, audited at most once a minute per limit and key.
pub fn rate_limited(ctx: &Ctx, l: crate::limits::Limited, email: &str) -> web::Result<Resp> {
    let secs = l.retry_secs();
    ctx.app.metrics.rate_limited(l.limit);
    // Once a minute per limit and client (its audit line is the log line): a client
    // hammering with distinct addresses cannot flood the log or the audit table.
    ctx.audit_once(
        "rate_limited",
        &format!("{}\0{}", l.limit, ctx.client_ip),
        email,
        None,
        l.limit,
    );
    let wait = if secs == 1 {
        "1 second".to_string()
    } else if secs < 90 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    };
    let text = format!("Too many requests. Try again in {wait}.");
    let mut r = if ctx.wants_json {
        web::json(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({ "error": "rate_limited", "message": text, "retry_after": secs }),
        )
    } else {
        pages::render(
            StatusCode::TOO_MANY_REQUESTS,
            &Message::new(ctx.app.frame(), "Please wait a moment", &text).link("/", "Back"),
        )?
    };
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(secs),
    );
    Ok(r)
}

/// `refusal`, recorded in the audit trail (once a minute per client and kind).
pub fn refused(ctx: &Ctx, r: Refusal, email: &str, what: &str) -> web::Result<Resp> {
    let kind = refusal_code(r);
    ctx.audit_once(
        "confirm_refused",
        &format!("{kind}\0{}\0{email}", ctx.client_ip),
        email,
        None,
        format!("{what}: {kind}"),
    );
    refusal(ctx, r)
}

fn refusal_code(r: Refusal) -> &'static str {
    match r {
        Refusal::Unknown => "unknown",
        Refusal::Expired => "expired",
        Refusal::Used => "used",
        Refusal::Cancelled => "cancelled",
        Refusal::Locked => "locked",
        Refusal::Wrong => "wrong",
        Refusal::Throttled => "throttled",
    }
}

/// The page or JSON for a link, code or approval that did not work.
pub fn refusal(ctx: &Ctx, r: Refusal) -> web::Result<Resp> {
    let (status, code, title, text) = match r {
        Refusal::Unknown => (
            StatusCode::NOT_FOUND,
            "unknown",
            "This link is not valid",
            "The sign-in link is incomplete or unknown. Request a new one.",
        ),
        Refusal::Expired => (
            StatusCode::GONE,
            "expired",
            "This link has expired",
            "Sign-in links work for a short time only. Request a new one.",
        ),
        Refusal::Used => (
            StatusCode::GONE,
            "used",
            "This link was already used",
            "Each sign-in link works once. If that wasn't you, request a new link and sign out elsewhere.",
        ),
        Refusal::Cancelled => (
            StatusCode::GONE,
            "cancelled",
            "This sign-in was cancelled",
            "Nobody was signed in with it. Request a new link to try again.",
        ),
        Refusal::Locked => (
            StatusCode::GONE,
            "locked",
            "Too many wrong tries",
            "This sign-in was cancelled after too many wrong codes or numbers. Request a new link.",
        ),
        Refusal::Wrong => (
            StatusCode::BAD_REQUEST,
            "wrong",
            "That was not right",
            "Check the number or code and try again.",
        ),
        Refusal::Throttled => (
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "Too many wrong codes",
            "Too many wrong codes were entered for this address. Use the link in the email, or try again later.",
        ),
    };
    if ctx.wants_json {
        return Ok(web::json(
            status,
            serde_json::json!({ "error": code, "message": text }),
        ));
    }
    pages::render(
        status,
        &Message::new(ctx.app.frame(), title, text).link("/", "Request a new sign-in link"),
    )
}
