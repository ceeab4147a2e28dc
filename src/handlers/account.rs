//! `GET /me` (who is signed in) and `POST /sign_out`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::error::AppError;
use crate::pages::{self, Message};
use crate::session;
use crate::web::{self, Ctx, Resp};

pub async fn me(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    match session::current(&ctx.app, req.headers()).await? {
        Some(s) if !s.allowed => Err(AppError::Forbidden(
            "this address is no longer allowed to sign in here.".into(),
        )),
        Some(s) => {
            let mut r = web::json(
                StatusCode::OK,
                json!({ "id": s.user.user_id, "email_address": s.user.email }),
            );
            r.extensions_mut().insert(web::UserId(s.user.user_id));
            Ok(r)
        }
        None => Err(AppError::Unauthorized),
    }
}

pub async fn sign_out(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    web::check_origin(req.headers(), &ctx.app)?;
    let who = session::current(&ctx.app, req.headers()).await?;
    // Every value presented, so a duplicated cookie cannot keep a session alive.
    let mut ended = false;
    for hash in web::all_session_hashes(req.headers(), &ctx.app.cfg.cookie.name) {
        ended |= session::end(&ctx.app, hash).await?;
    }
    if ended {
        match &who {
            Some(s) => ctx.audit("signed_out", &s.user.email, Some(s.user.user_id), ""),
            None => ctx.audit("signed_out", "", None, ""),
        }
    }
    let mut r = if ctx.wants_json {
        web::json(StatusCode::OK, json!({ "status": "signed_out" }))
    } else {
        pages::render(
            StatusCode::OK,
            &Message::new(
                ctx.app.frame(),
                "Signed out",
                "You are signed out on this browser, on every site that uses this sign-in.",
            )
            .link("/", "Sign in again"),
        )?
    };
    web::set_cookie(&mut r, web::session_cookie(&ctx.app, "", 0));
    Ok(r)
}
