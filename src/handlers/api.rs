//! The email API for upstream apps: `POST /api/email` queues a message for a user,
//! `GET /api/email/{id}` reports on it. Bearer-token authentication (`api.token_file` /
//! `AUTHBASE_API_TOKEN`), JSON in and out.

use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use hyper::{HeaderMap, Request, StatusCode};
use serde::Deserialize;

use crate::error::AppError;
use crate::mail::compose::{Attachment, Draft};
use crate::mail::queue::{self, QueueError, To};
use crate::pages::rfc3339;
use crate::secrets;
use crate::store::MailRow;
use crate::web::{self, Ctx, Resp};

/// The request body of `POST /api/email`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailRequest {
    user_id: Option<i64>,
    email: Option<String>,
    #[serde(default)]
    create_user: bool,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    reply_to: Option<String>,
    #[serde(default)]
    attachments: Vec<AttachmentRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentRequest {
    filename: String,
    content_type: String,
    /// Base64 (standard alphabet, padding optional).
    content: String,
}

/// The bearer token, checked in constant time (hashes of equal length compared).
fn authorize(ctx: &Ctx, h: &HeaderMap) -> web::Result<()> {
    let Some(want) = &ctx.app.cfg.derived.api_token_hash else {
        return Err(AppError::ApiOff);
    };
    let given = h
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(given) = given else {
        return Err(AppError::ApiUnauthorized(
            "send the API token as `Authorization: Bearer <token>`",
        ));
    };
    if secrets::ct_eq(&secrets::hash(given), want) {
        return Ok(());
    }
    ctx.audit_once(
        "api_auth_failed",
        &ctx.client_ip.to_string(),
        "",
        None,
        "wrong API token",
    );
    Err(AppError::ApiUnauthorized("the API token is not valid"))
}

/// `Idempotency-Key`: 1 to 200 visible ASCII characters.
fn idempotency_key(h: &HeaderMap) -> web::Result<Option<String>> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 200 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::BadRequest(
            "Idempotency-Key must be 1 to 200 visible ASCII characters".into(),
        ));
    }
    Ok(Some(s.to_string()))
}

fn queued_response(id: i64, message_id: &str, user_id: Option<i64>, replayed: bool) -> Resp {
    let mut r = web::json(
        StatusCode::ACCEPTED,
        serde_json::json!({
            "id": id,
            "status": "queued",
            "message_id": message_id,
            "user_id": user_id,
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/api/email/{id}")) {
        r.headers_mut().insert(LOCATION, v);
    }
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// `POST /api/email`
pub async fn send(ctx: &Ctx, req: Request<Incoming>) -> web::Result<Resp> {
    authorize(ctx, req.headers())?;
    let cfg = &ctx.app.cfg;
    if !web::header_has(req.headers(), &CONTENT_TYPE, b"application/json") {
        return Err(AppError::JsonOnly);
    }
    let key = idempotency_key(req.headers())?;
    // Base64 grows attachments by a third, JSON's \u escapes non-ASCII text up to
    // threefold; the decoded message is held to `max_message_bytes` after parsing.
    let limit = cfg.api.max_message_bytes.saturating_mul(3) + 64 * 1024;
    let (_, body) = web::read_body(req, limit).await?;
    let idempotency = key.map(|k| (k, secrets::hash_bytes(&body).to_vec()));
    if let Some((k, h)) = &idempotency {
        match ctx
            .app
            .store
            .mail_by_idempotency_key(k.clone(), h.clone())
            .await?
        {
            Some(Ok(q)) => return Ok(queued_response(q.id, &q.message_id, q.user_id, true)),
            Some(Err(_)) => return Err(AppError::Unprocessable(QueueError::KeyReused.to_string())),
            None => {}
        }
    }
    let r: EmailRequest = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("the body is not a valid email request: {e}")))?;

    let to = match (r.user_id, r.email) {
        (Some(id), None) if !r.create_user => To::UserId(id),
        (Some(_), None) => {
            return Err(AppError::BadRequest(
                "create_user needs email, not user_id".into(),
            ))
        }
        (None, Some(email)) => To::Email {
            email,
            create: r.create_user,
        },
        _ => {
            return Err(AppError::BadRequest(
                "give exactly one of user_id and email".into(),
            ))
        }
    };
    let mut attachments = Vec::with_capacity(r.attachments.len());
    for (i, a) in r.attachments.into_iter().enumerate() {
        let content = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(a.content.trim().trim_end_matches('='))
            .map_err(|e| {
                AppError::BadRequest(format!("attachments[{i}].content is not base64: {e}"))
            })?;
        attachments.push(Attachment {
            filename: a.filename,
            content_type: a.content_type,
            content,
        });
    }
    let draft = Draft {
        to: String::new(),
        subject: r.subject,
        text: r.text,
        html: r.html,
        reply_to: r.reply_to,
        attachments,
    };
    match queue::queue(cfg, &ctx.app.store, to, draft, idempotency).await {
        Ok((q, created_user)) => {
            if let Some(email) = created_user {
                ctx.audit("api_user_created", &email, q.user_id, "create_user");
            }
            if !q.replayed {
                ctx.app.metrics.mail(crate::metrics::Mail::Queued, 1);
                ctx.app.api_mail_wake.notify_one();
                tracing::info!(outbox_id = q.id, user_id = q.user_id, "API email queued");
            }
            Ok(queued_response(q.id, &q.message_id, q.user_id, q.replayed))
        }
        Err(e @ QueueError::Invalid(_)) => Err(AppError::BadRequest(e.to_string())),
        Err(e @ (QueueError::NoUser(_) | QueueError::KeyReused)) => {
            Err(AppError::Unprocessable(e.to_string()))
        }
        Err(e @ QueueError::Blocked) => Err(AppError::Conflict(e.to_string())),
        Err(e @ QueueError::RateLimited { limit, retry_after }) => {
            ctx.app.metrics.rate_limited(limit);
            Err(AppError::RateLimited {
                message: e.to_string(),
                retry_after: retry_after as u64,
            })
        }
        Err(QueueError::Store(e)) => Err(e.into()),
    }
}

/// `GET /api/email/{id}`
pub async fn status(ctx: &Ctx, req: Request<Incoming>, id: &str) -> web::Result<Resp> {
    authorize(ctx, req.headers())?;
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| AppError::BadRequest(format!("{id:?} is not a message id")))?;
    match ctx.app.store.mail(id, Some("api")).await? {
        Some(m) => Ok(web::json(StatusCode::OK, status_json(&m))),
        None => Err(AppError::NotFound),
    }
}

/// A message's status, with RFC 3339 times.
pub fn status_json(m: &MailRow) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "status": m.status,
        "recipient": m.recipient,
        "user_id": m.user_id,
        "subject": m.subject,
        "attempts": m.attempts,
        "last_error": m.last_error,
        "created_at": rfc3339(m.created_at),
        "next_attempt_at": m.next_attempt_at.map(rfc3339),
        "sent_at": m.sent_at.map(rfc3339),
        "message_id": m.message_id,
    })
}
