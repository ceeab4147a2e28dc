//! Request handlers: plain `async fn`s called by the router, returning `Result<Resp>`.

pub mod account;
pub mod auth;
pub mod health;
pub mod sign_in;
pub mod verify;

use hyper::StatusCode;

use crate::pages::{self, Message};
use crate::store::Refusal;
use crate::web::{self, Ctx, Resp};

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
        &Message::new(ctx.app.name(), title, text).link("/", "Request a new sign-in link"),
    )
}
