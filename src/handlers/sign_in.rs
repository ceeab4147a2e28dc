//! `GET /sign_in/{secret}` (the emailed link) and `POST /sign_in/{secret}` (the choices
//! offered to a browser that is not the one that asked).
//!
//! Opening the link in the browser that asked signs that browser in. Anywhere else — a
//! phone, or a mail scanner prefetching links — GET and HEAD change nothing: the page
//! offers "Sign in on this device", "Approve the waiting browser" (only with the number
//! that browser shows) and "This wasn't me", each a same-origin POST.

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use crate::error::AppError;
use crate::pages::{self, Confirm, Message};
use crate::secrets::{self, Hash};
use crate::store::{now, Refusal, RequestInfo};
use crate::web::{self, Ctx, Resp};

use super::auth::signed_in_response;
use super::{refusal, refused};
use std::time::Instant;

fn link_hash(secret: &str) -> Option<Hash> {
    secrets::well_formed(secret).then(|| secrets::hash(secret))
}

/// Unknown links per client IP: refused before any lookup once over the limit.
fn over_unknown_limit(ctx: &Ctx) -> Option<crate::limits::Limited> {
    ctx.app
        .limits
        .unknown_links_ip
        .check(&crate::limits::ip_key(ctx.client_ip), Instant::now())
        .err()
}

/// An unknown (or malformed) link: counted against the client IP, audited, refused.
fn unknown(ctx: &Ctx) -> web::Result<Resp> {
    let _ = ctx
        .app
        .limits
        .unknown_links_ip
        .hit(&crate::limits::ip_key(ctx.client_ip), Instant::now());
    refused(ctx, Refusal::Unknown, "", "link")
}

pub async fn show(ctx: &Ctx, req: Request<Incoming>, secret: &str) -> web::Result<Resp> {
    if let Some(l) = over_unknown_limit(ctx) {
        return super::rate_limited(ctx, l, "");
    }
    let Some(lh) = link_hash(secret) else {
        return unknown(ctx);
    };
    let cfg = &ctx.app.cfg;
    if req.method() == Method::GET {
        if let Some(sh) = web::session_hash(req.headers(), &cfg.cookie.name) {
            match ctx
                .app
                .store
                .confirm_same_browser(lh, sh, now(), cfg.session.lifetime.secs())
                .await?
            {
                Ok(s) => return Ok(signed_in_response(ctx, &s, "link")),
                Err(Refusal::Unknown) => {} // not the asking browser: offer the choices
                Err(r) => return refused(ctx, r, "", "link"),
            }
        }
    }
    match ctx.app.store.request_by_link(lh).await? {
        None => unknown(ctx),
        Some(r) if !r.live(now()) => refused(ctx, state_refusal(&r), &r.email, "link"),
        Some(r) => choices(ctx, &r, secret, StatusCode::OK, None),
    }
}

pub async fn act(ctx: &Ctx, req: Request<Incoming>, secret: &str) -> web::Result<Resp> {
    web::check_origin(req.headers(), &ctx.app)?;
    if let Some(l) = over_unknown_limit(ctx) {
        return super::rate_limited(ctx, l, "");
    }
    let Some(lh) = link_hash(secret) else {
        return unknown(ctx);
    };
    let ua = web::user_agent(req.headers());
    let (headers, body) = web::read_body(req, ctx.app.cfg.server.max_body_bytes).await?;
    let form = web::parse_form(&headers, body).await?;
    let cfg = &ctx.app.cfg;
    let store = &ctx.app.store;
    match form.get("action").map(String::as_str) {
        Some("this_device") => {
            match store
                .sign_in_here(
                    lh,
                    now(),
                    cfg.session.lifetime.secs(),
                    ctx.client_ip.to_string(),
                    ua,
                )
                .await?
            {
                Ok(s) => {
                    // This browser's previous session, if any, is replaced.
                    if let Some(old) = web::session_hash(&headers, &cfg.cookie.name) {
                        crate::session::end(&ctx.app, old).await?;
                    }
                    Ok(signed_in_response(ctx, &s, "link, on this device"))
                }
                Err(Refusal::Unknown) => unknown(ctx),
                Err(r) => refused(ctx, r, "", "sign in here"),
            }
        }
        Some("approve") => {
            let number: String = form
                .get("match")
                .map(|m| m.trim().to_string())
                .unwrap_or_default();
            if number.is_empty() || number.len() > 4 || !number.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(AppError::BadRequest(
                    "type the number shown in the waiting browser".into(),
                ));
            }
            match store
                .approve(lh, number, now(), cfg.session.match_attempts)
                .await?
            {
                Ok(r) => {
                    ctx.audit(
                        "sign_in_approved",
                        &r.email,
                        None,
                        format!("request {}", r.id),
                    );
                    if ctx.wants_json {
                        return Ok(web::json(StatusCode::OK, json!({ "status": "approved" })));
                    }
                    pages::render(
                        StatusCode::OK,
                        &Message::new(
                            ctx.app.frame(),
                            "Approved",
                            "The waiting browser is being signed in. You can close this page.",
                        ),
                    )
                }
                Err(Refusal::Wrong) => {
                    if ctx.wants_json {
                        return refused(ctx, Refusal::Wrong, "", "match number");
                    }
                    ctx.audit_once(
                        "confirm_refused",
                        &format!("match\0{}", ctx.client_ip),
                        "",
                        None,
                        "match number: wrong",
                    );
                    match store.request_by_link(lh).await? {
                        Some(r) if r.live(now()) => choices(
                            ctx,
                            &r,
                            secret,
                            StatusCode::BAD_REQUEST,
                            Some("That number does not match the waiting browser. Nobody was signed in."),
                        ),
                        Some(r) => refusal(ctx, state_refusal(&r)),
                        None => refusal(ctx, Refusal::Unknown),
                    }
                }
                Err(Refusal::Unknown) => unknown(ctx),
                Err(r) => refused(ctx, r, "", "match number"),
            }
        }
        Some("deny") => match store.cancel(lh, now()).await? {
            Ok(()) => {
                ctx.audit(
                    "sign_in_denied",
                    "",
                    None,
                    "\"this wasn't me\" on the link page",
                );
                if ctx.wants_json {
                    return Ok(web::json(StatusCode::OK, json!({ "status": "cancelled" })));
                }
                pages::render(
                    StatusCode::OK,
                    &Message::new(
                        ctx.app.frame(),
                        "Sign-in cancelled",
                        "Nobody was signed in. You can close this page.",
                    ),
                )
            }
            Err(Refusal::Unknown) => unknown(ctx),
            Err(r) => refused(ctx, r, "", "deny"),
        },
        _ => Err(AppError::BadRequest(
            "choose one of: this_device, approve, deny".into(),
        )),
    }
}

fn state_refusal(r: &RequestInfo) -> Refusal {
    match r.state.as_str() {
        "pending" => Refusal::Expired,
        "cancelled" => Refusal::Cancelled,
        _ => Refusal::Used,
    }
}

fn choices(
    ctx: &Ctx,
    r: &RequestInfo,
    secret: &str,
    status: StatusCode,
    error: Option<&str>,
) -> web::Result<Resp> {
    if ctx.wants_json {
        return Ok(web::json(
            status,
            json!({ "status": "confirm", "email": r.email, "requested_at": r.created_at }),
        ));
    }
    let action = format!("/sign_in/{secret}");
    pages::render(
        status,
        &Confirm {
            frame: ctx.app.frame(),
            email: &r.email,
            requested_at: pages::utc(r.created_at),
            requester: pages::requester(&r.user_agent, &r.ip),
            action: &action,
            error,
        },
    )
}
