//! `/healthz` (the process answers), `/readyz` (the database file is there, reachable and
//! migrated, and the mail sender is working through its queue) and `/metrics`.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::json;

use crate::metrics::Gauges;
use crate::store::now;
use crate::web::{self, Ctx, Resp};

/// A due email waiting longer than this past its send time means the sender is stuck.
pub const MAIL_STUCK_SECS: i64 = 300;

pub async fn healthz(_ctx: &Ctx) -> web::Result<Resp> {
    Ok(web::json(StatusCode::OK, json!({ "status": "ok" })))
}

pub async fn readyz(ctx: &Ctx) -> web::Result<Resp> {
    let unavailable = |reason: &str, detail: String| {
        tracing::warn!(reason, %detail, "not ready");
        web::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "unavailable", "reason": reason }),
        )
    };
    // An open connection keeps working on a deleted or replaced file; the path is what
    // a restart (and a backup) would use.
    if let Err(e) = ctx.app.store.check_file().await {
        return Ok(unavailable("database", e.to_string()));
    }
    if let Err(e) = ctx.app.store.ready().await {
        return Ok(unavailable("database", e.to_string()));
    }
    match ctx.app.store.mail_overdue(now()).await {
        Ok(s) if s > MAIL_STUCK_SECS => Ok(unavailable(
            "mail_queue",
            format!("the oldest due email is {s} s overdue"),
        )),
        Ok(_) => Ok(web::json(StatusCode::OK, json!({ "status": "ready" }))),
        Err(e) => Ok(unavailable("database", e.to_string())),
    }
}

pub async fn metrics(ctx: &Ctx) -> web::Result<Resp> {
    let app = &ctx.app;
    let (mail_queued, mail_oldest_due_age, sessions_active, running_servers) =
        app.store.gauges(now()).await?;
    let text = app.metrics.render(&Gauges {
        mail_queued,
        mail_oldest_due_age,
        sessions_active,
        sessions_cached: app.sessions.len(),
        limiter_keys: app.limits.tracked(),
        running_servers,
        // Read from the runtime itself, not from the configuration.
        workers: tokio::runtime::Handle::current().metrics().num_workers(),
    });
    let mut r = web::with_type(StatusCode::OK, "text/plain; version=0.0.4", text.into());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}
