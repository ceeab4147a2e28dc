//! The sign-in page (`GET /`), starting a sign-in (`POST /auth`), the waiting browser's
//! page and status (`GET /auth`), and the one-time code (`POST /auth/code`).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::email_addr;
use crate::pages::{self, CheckEmail, Index, Message, SignedIn as SignedInPage};
use crate::secrets;
use crate::session;
use crate::store::{now, NewSignIn, SignedIn, WaitState};
use crate::web::{self, Ctx, Resp};
use crate::{error::AppError, redirect};

pub async fn index(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    let q = web::query(&req);
    let rd = q
        .get("rd")
        .and_then(|r| redirect::validate(r, &ctx.app.cfg));
    // A browser that is signed in already is told so (with a way on, out, or to another
    // address), unless it asked for the form: "Use another address", or the 403 page's
    // "Sign in with another address".
    if !q.contains_key("switch") {
        if let Some(s) = session::current(&ctx.app, req.headers()).await? {
            if s.allowed {
                return signed_in_page(ctx, &s.user.email, s.user.user_id, rd.as_deref());
            }
        }
    }
    pages::render(
        StatusCode::OK,
        &Index {
            frame: ctx.app.frame(),
            email: "",
            rd: rd.as_deref(),
            error: None,
        },
    )
}

fn signed_in_page(ctx: &Ctx, email: &str, user_id: i64, rd: Option<&str>) -> web::Result<Resp> {
    let to = ctx.app.landing(rd);
    // "app.example.com" (with a port when it has one): where the button goes, by name.
    let host = url::Url::parse(to)
        .map(|u| u[url::Position::BeforeHost..url::Position::AfterPort].to_string())
        .unwrap_or_default();
    let switch = match rd {
        Some(rd) => format!(
            "/?rd={}&switch=1",
            url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        ),
        None => "/?switch=1".to_string(),
    };
    let mut r = pages::render(
        StatusCode::OK,
        &SignedInPage {
            frame: ctx.app.frame(),
            email,
            continue_to: to,
            continue_host: &host,
            switch_href: &switch,
        },
    )?;
    r.extensions_mut().insert(web::UserId(user_id));
    Ok(r)
}

pub async fn start(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    web::check_origin(req.headers(), &ctx.app)?;
    let ua = web::user_agent(req.headers());
    let (headers, body) = web::read_body(req, ctx.app.cfg.server.max_body_bytes).await?;
    let form = web::parse_form(&headers, body).await?;
    let raw_email = form.get("email").map(String::as_str).unwrap_or("");
    let rd = form
        .get("rd")
        .and_then(|r| redirect::validate(r, &ctx.app.cfg));

    let email = match email_addr::normalise(raw_email) {
        Ok(e) => e,
        Err(e) => {
            if ctx.wants_json {
                return Ok(web::json(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "invalid_email", "message": e.to_string() }),
                ));
            }
            let shown: String = raw_email
                .chars()
                .filter(|c| !c.is_control())
                .take(254)
                .collect();
            return pages::render(
                StatusCode::BAD_REQUEST,
                &Index {
                    frame: ctx.app.frame(),
                    email: &shown,
                    rd: rd.as_deref(),
                    error: Some(&e.to_string()),
                },
            );
        }
    };

    let cfg = &ctx.app.cfg;
    // Limits before any database work; the same answer whatever the address.
    if let Err(l) = ctx
        .app
        .limits
        .sign_in_checked(&ctx.app.store, &ctx.app.key, ctx.client_ip, &email)
        .await?
    {
        return super::rate_limited(ctx, l, &email);
    }
    // A fresh session id, always: one the client brought is only ever deleted.
    let replaces = web::session_hash(&headers, &cfg.cookie.name);
    let (token, session_hash) = secrets::new_token();
    let salt = secrets::random::<16>();
    let link_hash = secrets::hash(&ctx.app.key.link_secret(&salt));
    let match_number = {
        let r = u16::from_be_bytes(secrets::random::<2>()) % 90 + 10;
        r.to_string()
    };
    let started = ctx
        .app
        .store
        .start_sign_in(NewSignIn {
            email: email.clone(),
            replaces,
            session_hash,
            salt,
            link_hash,
            match_number: match_number.clone(),
            return_to: rd,
            ip: ctx.client_ip.to_string(),
            user_agent: ua,
            now: now(),
            link_ttl: cfg.session.link_ttl.secs(),
            allowed: cfg.derived.access.may_sign_in(&email),
        })
        .await?;
    // After the delete, so a concurrent lookup cannot re-cache the old session.
    if let Some(old) = &replaces {
        ctx.app.sessions.evict(old);
    }
    // The audit record was written with the request; this is its log line.
    let (event, detail) = match &started {
        Ok(s) => {
            ctx.app.mail_wake.notify_one();
            ctx.app.metrics.sign_in(crate::metrics::SignIn::Requested);
            ctx.app.metrics.mail(crate::metrics::Mail::Queued, 1);
            ("sign_in_requested", format!("request {}", s.request_id))
        }
        // Stored as a silent request: no mail, never confirmable, otherwise the same.
        Err(why) => {
            ctx.app.metrics.sign_in(crate::metrics::SignIn::Refused);
            ("sign_in_refused", why.as_str().to_string())
        }
    };
    tracing::info!(target: "audit", event, email = %email, ip = %ctx.client_ip, detail = %detail, "audit");

    // Same answer whether the address was known, new, not allowed or blocked.
    let mut r = if ctx.wants_json {
        web::json(
            StatusCode::OK,
            json!({ "status": "check_email", "match_number": match_number }),
        )
    } else {
        pages::render(
            StatusCode::OK,
            &CheckEmail {
                frame: ctx.app.frame(),
                email: &email,
                match_number: &match_number,
                error: None,
            },
        )?
    };
    web::set_cookie(
        &mut r,
        web::session_cookie(&ctx.app, &token, cfg.session.link_ttl.secs()),
    );
    Ok(r)
}

/// A signed-in answer: the rotated cookie, then the landing page (or JSON naming it).
pub fn signed_in_response(ctx: &Ctx, s: &SignedIn, how: &str) -> Resp {
    let to = ctx.app.landing(s.return_to.as_deref()).to_string();
    ctx.audit("sign_in_confirmed", &s.email, Some(s.user_id), how);
    ctx.app.metrics.sign_in(crate::metrics::SignIn::Confirmed);
    let mut r = if ctx.wants_json {
        web::json(
            StatusCode::OK,
            json!({ "status": "signed_in", "redirect": to }),
        )
    } else {
        web::redirect(&to)
    };
    web::set_cookie(
        &mut r,
        web::session_cookie(&ctx.app, &s.token, ctx.app.cfg.session.lifetime.secs()),
    );
    r.extensions_mut().insert(web::UserId(s.user_id));
    r
}

/// The waiting browser: its page, or (JSON) its status; signs it in once approved.
pub async fn wait(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    let cfg = &ctx.app.cfg;
    let state = match web::session_hash(req.headers(), &cfg.cookie.name) {
        Some(h) => {
            ctx.app
                .store
                .wait_state(h, now(), cfg.session.lifetime.secs())
                .await?
        }
        None => WaitState::Gone(crate::store::Refusal::Unknown),
    };
    match state {
        WaitState::SignedIn(s) => Ok(signed_in_response(ctx, &s, "approved on another device")),
        WaitState::Waiting {
            email,
            match_number,
            ..
        } => {
            if ctx.wants_json {
                return Ok(web::json(StatusCode::OK, json!({ "status": "waiting" })));
            }
            pages::render(
                StatusCode::OK,
                &CheckEmail {
                    frame: ctx.app.frame(),
                    email: &email,
                    match_number: &match_number,
                    error: None,
                },
            )
        }
        WaitState::Gone(r) => {
            if ctx.wants_json {
                let status = match r {
                    crate::store::Refusal::Unknown => "none",
                    crate::store::Refusal::Expired => "expired",
                    crate::store::Refusal::Used => "used",
                    _ => "cancelled",
                };
                return Ok(web::json(StatusCode::OK, json!({ "status": status })));
            }
            if r == crate::store::Refusal::Unknown {
                return pages::render(
                    StatusCode::OK,
                    &Message::new(
                        ctx.app.frame(),
                        "No sign-in in progress",
                        "This browser is not waiting for a sign-in link.",
                    )
                    .link("/", "Sign in"),
                );
            }
            super::refusal(ctx, r)
        }
    }
}

pub async fn code(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    web::check_origin(req.headers(), &ctx.app)?;
    let ip = crate::limits::ip_key(ctx.client_ip);
    if let Err(l) = ctx.app.limits.codes_ip.hit(&ip, std::time::Instant::now()) {
        return super::rate_limited(ctx, l, "");
    }
    let (headers, body) = web::read_body(req, ctx.app.cfg.server.max_body_bytes).await?;
    let form = web::parse_form(&headers, body).await?;
    let code: String = form
        .get("code")
        .map(|c| c.chars().filter(|c| *c != ' ' && *c != '-').collect())
        .unwrap_or_default();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::BadRequest(
            "enter the 6-digit code from the email".into(),
        ));
    }
    let cfg = &ctx.app.cfg;
    let Some(hash) = web::session_hash(&headers, &cfg.cookie.name) else {
        return super::refused(ctx, crate::store::Refusal::Unknown, "", "code");
    };
    let out = ctx
        .app
        .store
        .submit_code(
            hash,
            code,
            ctx.app.key.clone(),
            now(),
            cfg.session.lifetime.secs(),
            crate::store::CodeLimits {
                per_request: cfg.session.code_attempts,
                per_address: cfg.session.code_attempts_per_address,
                window: cfg.session.link_ttl.secs(),
            },
        )
        .await?;
    match out {
        Ok(s) => Ok(signed_in_response(ctx, &s, "code")),
        Err(crate::store::Refusal::Wrong) => {
            tracing::warn!(ip = %ctx.client_ip, "wrong sign-in code");
            if ctx.wants_json {
                return super::refused(ctx, crate::store::Refusal::Wrong, "", "code");
            }
            ctx.audit_once(
                "confirm_refused",
                &format!("code\0{}", ctx.client_ip),
                "",
                None,
                "code: wrong",
            );
            // Show the waiting page again, with the error.
            match ctx
                .app
                .store
                .wait_state(hash, now(), cfg.session.lifetime.secs())
                .await?
            {
                WaitState::Waiting {
                    email,
                    match_number,
                    ..
                } => pages::render(
                    StatusCode::BAD_REQUEST,
                    &CheckEmail {
                        frame: ctx.app.frame(),
                        email: &email,
                        match_number: &match_number,
                        error: Some("That code is not right. Check the email and try again."),
                    },
                ),
                WaitState::SignedIn(s) => {
                    Ok(signed_in_response(ctx, &s, "approved on another device"))
                }
                WaitState::Gone(r) => super::refusal(ctx, r),
            }
        }
        Err(r) => {
            match r {
                crate::store::Refusal::Locked => {
                    tracing::warn!(ip = %ctx.client_ip, "sign-in cancelled after too many wrong codes")
                }
                crate::store::Refusal::Throttled => {
                    tracing::warn!(ip = %ctx.client_ip, "code refused: too many wrong codes for this address")
                }
                _ => {}
            }
            super::refused(ctx, r, "", "code")
        }
    }
}
