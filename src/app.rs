//! The shared state of a running server: configuration, store, server key, and the
//! handle that wakes the mail sender.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::secrets::ServerKey;
use crate::session::SessionCache;
use crate::store::Store;

pub struct App {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub key: ServerKey,
    pub mail_wake: Arc<Notify>,
    /// Wakes the sender's API lane (`POST /api/email`).
    pub api_mail_wake: Arc<Notify>,
    /// This server's id in the `servers` table (revocation acks, mail claims).
    pub server_id: String,
    /// Confirmed sessions, for `/verify` without a database round trip.
    pub sessions: SessionCache,
    /// Session activity `(session_id, seen_at)` for the idle timeout, written in batches.
    pub activity: tokio::sync::mpsc::Sender<(i64, i64)>,
    /// Rate limits (in memory).
    pub limits: crate::limits::Limits,
    /// The audit trail.
    pub audit: crate::audit::Audit,
    /// The keys that sign `X-User-Assertion` and are published as the JWKS.
    pub signing: crate::signing::Keys,
    /// Prometheus counters.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl App {
    pub fn name(&self) -> &str {
        &self.cfg.webapp_name
    }

    /// Name and branding around every page on authbase's host.
    pub fn frame(&self) -> crate::pages::Frame<'_> {
        crate::pages::Frame::new(&self.cfg)
    }

    /// Where to go after sign-in: the validated return URL, else `redirect_url`.
    pub fn landing<'a>(&'a self, return_to: Option<&'a str>) -> &'a str {
        return_to.unwrap_or(&self.cfg.redirect_url)
    }
}
