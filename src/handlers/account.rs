//! `GET /me` (who is signed in) and `POST /sign_out`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::error::AppError;
use crate::pages::{self, Message};
use crate::store::{now, SessionUser};
use crate::web::{self, Ctx, Resp};

/// Activity is written at most once a minute (or a quarter of a short idle timeout), so
/// reads stay reads while the idle timeout stays accurate.
fn touch_every(idle: i64) -> i64 {
    (idle / 4).min(60)
}

/// The confirmed, live session of this request, if any; records activity for the idle
/// timeout. Pending sessions (link not yet confirmed) never count.
pub async fn signed_in(ctx: &Ctx, req: &Request<Incoming>) -> web::Result<Option<SessionUser>> {
    let Some(hash) = web::session_hash(req.headers(), &ctx.app.cfg.cookie.name) else {
        return Ok(None);
    };
    let t = now();
    let idle = ctx.app.cfg.session.idle_timeout.secs();
    let Some(s) = ctx.app.store.session(hash, t, idle).await? else {
        return Ok(None);
    };
    if !s.confirmed {
        return Ok(None);
    }
    if idle > 0 && t - s.last_seen_at >= touch_every(idle) {
        ctx.app.store.touch(s.session_id, t).await?;
    }
    Ok(Some(s))
}

pub async fn me(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    match signed_in(ctx, &req).await? {
        Some(s) => Ok(web::json(
            StatusCode::OK,
            json!({ "id": s.user_id, "email_address": s.email }),
        )),
        None => Err(AppError::Unauthorized),
    }
}

pub async fn sign_out(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    web::check_origin(req.headers(), &ctx.app)?;
    let mut ended = false;
    if let Some(hash) = web::session_hash(req.headers(), &ctx.app.cfg.cookie.name) {
        ended = ctx.app.store.delete_session(hash).await?;
    }
    if ended {
        tracing::info!("signed out");
    }
    let mut r = if ctx.wants_json {
        web::json(StatusCode::OK, json!({ "status": "signed_out" }))
    } else {
        pages::render(
            StatusCode::OK,
            &Message::new(ctx.app.name(), "Signed out", "You are signed out.")
                .link("/", "Sign in again"),
        )?
    };
    web::set_cookie(&mut r, web::session_cookie(&ctx.app, "", 0));
    Ok(r)
}
