//! `/healthz` (the process answers) and `/readyz` (the database is reachable and migrated).

use hyper::StatusCode;
use serde_json::json;

use crate::web::{self, Ctx, Resp};

pub async fn healthz(_ctx: &Ctx) -> web::Result<Resp> {
    Ok(web::json(StatusCode::OK, json!({ "status": "ok" })))
}

pub async fn readyz(ctx: &Ctx) -> web::Result<Resp> {
    Ok(match ctx.app.store.ready().await {
        Ok(()) => web::json(StatusCode::OK, json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            web::json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "status": "unavailable", "reason": "database" }),
            )
        }
    })
}
