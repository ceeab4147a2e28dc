//! "Who is signed in": the one place a request's session cookie is checked, used by
//! `/me` and by `/verify` on every proxied request.

use hyper::header::HeaderMap;

use crate::app::App;
use crate::store::{now, SessionUser, StoreError};
use crate::web;

/// Activity is written at most once a minute (or a quarter of a short idle timeout), so
/// reads stay reads while the idle timeout stays accurate.
fn touch_every(idle: i64) -> i64 {
    (idle / 4).min(60)
}

/// The confirmed, live session of these request headers, if any; records activity for
/// the idle timeout. Pending sessions (link not yet confirmed) never count.
pub async fn current(app: &App, headers: &HeaderMap) -> Result<Option<SessionUser>, StoreError> {
    let Some(hash) = web::session_hash(headers, &app.cfg.cookie.name) else {
        return Ok(None);
    };
    let t = now();
    let idle = app.cfg.session.idle_timeout.secs();
    let Some(s) = app.store.session(hash, t, idle).await? else {
        return Ok(None);
    };
    if !s.confirmed {
        return Ok(None);
    }
    if idle > 0 && t - s.last_seen_at >= touch_every(idle) {
        app.store.touch(s.session_id, t).await?;
    }
    Ok(Some(s))
}
