//! Admin commands that work on the database directly, while servers run:
//! `authbase sessions list|revoke`. Revocations are logged in the database so running
//! servers evict their cached sessions (see `session::follow_revocations`).

use crate::config::Config;
use crate::email_addr;
use crate::pages::utc;
use crate::store::{now, Store};

/// An admin command that failed, with the message for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

fn open(cfg: &Config) -> Result<Store, AdminError> {
    Store::open(cfg.database.as_ref(), std::time::Duration::from_secs(5))
        .map_err(|e| AdminError(format!("database {}: {e}", cfg.database)))
}

fn address(user: Option<&str>) -> Result<Option<String>, AdminError> {
    user.map(|u| email_addr::normalise(u).map_err(|e| AdminError(format!("--user: {e}"))))
        .transpose()
}

/// `authbase sessions list [--user EMAIL] [--json]`.
pub async fn sessions_list(
    cfg: &Config,
    user: Option<&str>,
    json: bool,
) -> Result<String, AdminError> {
    let store = open(cfg)?;
    let rows = store
        .list_sessions(address(user)?, now())
        .await
        .map_err(|e| AdminError(e.to_string()))?;
    if json {
        return serde_json::to_string_pretty(&rows).map_err(|e| AdminError(e.to_string()));
    }
    let mut out = format!(
        "{:<8} {:<32} {:<22} {:<22} {:<22} {}\n",
        "ID", "EMAIL", "SIGNED IN", "LAST SEEN", "EXPIRES", "FROM"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<8} {:<32} {:<22} {:<22} {:<22} {}\n",
            r.id,
            r.email,
            utc(r.created_at),
            utc(r.last_seen_at),
            utc(r.expires_at),
            crate::pages::requester(&r.user_agent, &r.ip)
        ));
    }
    out.push_str(&format!("{} session(s)\n", rows.len()));
    Ok(out)
}

/// `authbase sessions revoke (--user EMAIL | --all)`.
pub async fn sessions_revoke(cfg: &Config, user: Option<&str>) -> Result<String, AdminError> {
    let store = open(cfg)?;
    let who = address(user)?;
    let n = store
        .revoke(who.clone(), now())
        .await
        .map_err(|e| AdminError(e.to_string()))?;
    match (n, who) {
        (None, Some(w)) => Err(AdminError(format!("no user {w}"))),
        (Some(n), Some(w)) => Ok(format!("revoked {n} session(s) of {w}\n")),
        (Some(n), None) => Ok(format!("revoked all {n} session(s)\n")),
        (None, None) => Ok("revoked all sessions\n".into()),
    }
}
