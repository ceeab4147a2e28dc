//! The audit trail: security events written to the database (table `audit`, shown by
//! `authbase audit`) and to the log, one `info` line each with target `audit`.
//!
//! Sign-in requests are recorded in the transaction that creates them (see
//! `Store::start_sign_in`). Everything else goes through a bounded queue written once a
//! second in one transaction, so a flood of refused requests costs one commit a second;
//! a full queue drops records (counted in the log) rather than slowing requests down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{now, AuditEvent, Store};

/// Every event name the audit trail uses (server and admin CLI).
pub const EVENTS: &[&str] = &[
    "sign_in_requested",
    "sign_in_refused",
    "sign_in_confirmed",
    "sign_in_approved",
    "sign_in_denied",
    "confirm_refused",
    "signed_out",
    "rate_limited",
    "access_denied",
    "user_added",
    "user_removed",
    "user_blocked",
    "user_unblocked",
    "groups_changed",
    "sessions_revoked",
    "keys_rotated",
    "api_auth_failed",
    "api_user_created",
];

/// Records waiting to be written at most.
pub const QUEUE: usize = 65_536;
const FLUSH: Duration = Duration::from_secs(1);

pub struct Audit {
    queue: mpsc::Sender<AuditEvent>,
    dropped: AtomicU64,
}

impl Audit {
    pub fn new() -> (Audit, mpsc::Receiver<AuditEvent>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        (
            Audit {
                queue,
                dropped: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Log and queue one event.
    pub fn record(
        &self,
        event: &'static str,
        email: &str,
        user_id: Option<i64>,
        ip: &str,
        user_agent: &str,
        detail: impl Into<String>,
    ) {
        let e = AuditEvent {
            at: now(),
            event,
            email: email.to_string(),
            user_id,
            ip: ip.to_string(),
            user_agent: user_agent.to_string(),
            detail: detail.into(),
        };
        log(&e);
        if self.queue.try_send(e).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit queue full: events dropped");
            }
        }
    }
}

/// The log line for an event (also used for those written inside a store transaction).
pub fn log(e: &AuditEvent) {
    tracing::info!(
        target: "audit",
        event = e.event,
        email = %e.email,
        user_id = e.user_id,
        ip = %e.ip,
        user_agent = %e.user_agent,
        detail = %e.detail,
        "audit"
    );
}

/// Write queued events once a second until `stop`, then write what is left.
pub async fn run(
    store: Store,
    queue: mpsc::Receiver<AuditEvent>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    crate::batch::flush_every(queue, FLUSH, stop, |batch| {
        let store = store.clone();
        async move {
            let n = batch.len();
            if let Err(e) = store.record_audit(batch).await {
                tracing::warn!(error = %e, events = n, "could not write audit events");
            }
        }
    })
    .await
}
