//! authbase: passwordless, email-only sign-in as a forward-auth sidecar.
//!
//! `main.rs` parses the command line and calls [`serve`]; everything else lives here so
//! it can be tested without a process.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod assertion;
pub mod audit;
pub mod batch;
pub mod branding;
pub mod config;
pub mod email_addr;
pub mod error;
pub mod forwarded;
pub mod handlers;
pub mod healthcheck;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod pages;
pub mod redirect;
pub mod router;
pub mod secrets;
pub mod server;
pub mod session;
pub mod signing;
pub mod store;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::app::App;
use crate::config::Config;

/// The git revision this binary was built from (see build.rs).
pub const GIT_REVISION: &str = env!("AUTHBASE_GIT_REV");

/// How often expired sessions, requests and old mail are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Start-up failures that are not configuration errors (database, key file, transport).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Everything `serve` needs that can fail, prepared before the listener is bound.
pub fn prepare(cfg: Config) -> Result<(Arc<App>, Background), StartError> {
    let cfg = Arc::new(cfg);
    let store = store::Store::open(cfg.database_target(), Duration::from_secs(5))
        .map_err(|e| StartError(format!("database {}: {e}", store::db::shown(&cfg.database))))?;
    let key = secrets::ServerKey::load_or_create(&cfg.secret_key_path()).map_err(StartError)?;
    let ring = signing::load_or_create(&store, &key).map_err(StartError)?;
    let transport = mail::Transport::from_config(&cfg).map_err(StartError)?;
    let wake = Arc::new(Notify::new());
    let wake_api = Arc::new(Notify::new());
    let server_id = secrets::hex(&secrets::random::<16>());
    let (activity, activity_queue) = tokio::sync::mpsc::channel(session::ACTIVITY_QUEUE);
    let (audit, audit_queue) = audit::Audit::new();
    let metrics = Arc::new(metrics::Metrics::new());
    let app = Arc::new(App {
        cfg: cfg.clone(),
        store: store.clone(),
        key: key.clone(),
        mail_wake: wake.clone(),
        api_mail_wake: wake_api.clone(),
        server_id: server_id.clone(),
        sessions: session::SessionCache::new(cfg.session.cache_entries),
        activity,
        limits: limits::Limits::new(&cfg.limits),
        audit,
        signing: signing::Keys::new(ring),
        metrics: metrics.clone(),
    });
    let mailer = mail::Mailer {
        cfg,
        store,
        key,
        transport,
        wake,
        wake_api,
        metrics,
        server_id,
    };
    Ok((
        app,
        Background {
            mailer,
            activity_queue,
            audit_queue,
        },
    ))
}

/// The work `serve` runs beside the HTTP server.
pub struct Background {
    mailer: mail::Mailer,
    activity_queue: tokio::sync::mpsc::Receiver<(i64, i64)>,
    audit_queue: tokio::sync::mpsc::Receiver<store::AuditEvent>,
}

/// Serve on `listener` until `shutdown` resolves, with the mail sender and the sweeper
/// running beside the HTTP server. Logs "listening on …" once it is ready.
pub async fn serve(
    app: Arc<App>,
    background: Background,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    // Before the first request is answered: an admin command that runs from now on
    // waits for this server to apply its change (see `session::follow_revocations`).
    let position = session::join_revocations(&app).await;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let public = app.cfg.public_base();
    if let Some(m) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!(address = %m, "metrics on http://{m}/metrics");
    }
    if let Some(a) = api_listener.as_ref().and_then(|l| l.local_addr().ok()) {
        if app.cfg.derived.api_token_hash.is_some() {
            tracing::info!(address = %a, "email API on http://{a}/api/email");
        } else {
            tracing::info!(address = %a, "email API listener on {a}, but the API is off (no token)");
        }
    }
    tracing::info!(address = %bound, workers = app.cfg.workers(), "listening on http://{bound}; open {public}/");
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mail_task = tokio::spawn(background.mailer.run(stop_rx.clone()));
    let activity_task = tokio::spawn(session::record_activity(
        app.store.clone(),
        background.activity_queue,
        stop_rx.clone(),
    ));
    let audit_task = tokio::spawn(audit::run(
        app.store.clone(),
        background.audit_queue,
        stop_rx.clone(),
    ));
    let store = app.store.clone();
    let retention = app.cfg.audit.retention.secs();
    let sweep_stop = stopped(stop_rx.clone());
    let sweep_task = tokio::spawn(async move {
        tokio::pin!(sweep_stop);
        loop {
            match store.sweep(store::now(), retention).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "swept expired rows"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
            tokio::select! {
                _ = &mut sweep_stop => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    });
    // Stopped last: this server stays registered (heartbeating) until its mail sender
    // has handed back its claims, so no other server takes over a message being sent.
    let (follow_tx, follow_rx) = watch::channel(false);
    let revocations = tokio::spawn(session::follow_revocations(
        app.clone(),
        position,
        follow_rx,
    ));
    // One shutdown signal for both listeners.
    let (quit_tx, quit_rx) = watch::channel(false);
    let metrics_server = {
        let (app, quit) = (app.clone(), stopped(quit_rx.clone()));
        async move {
            if let Some(l) = metrics_listener {
                server::run(l, app, server::Surface::Metrics, quit).await;
            }
        }
    };
    let api_server = {
        let (app, quit) = (app.clone(), stopped(quit_rx.clone()));
        async move {
            if let Some(l) = api_listener {
                server::run(l, app, server::Surface::Api, quit).await;
            }
        }
    };
    tokio::join!(
        async {
            shutdown.await;
            let _ = quit_tx.send(true);
        },
        server::run(
            listener,
            app,
            server::Surface::Main,
            stopped(quit_rx.clone())
        ),
        metrics_server,
        api_server,
    );
    let _ = stop_tx.send(true);
    // The mail sender stops between messages; a send in progress gets a bounded time.
    let (mail_abort, sweep_abort) = (mail_task.abort_handle(), sweep_task.abort_handle());
    let both = async { tokio::join!(mail_task, sweep_task, activity_task, audit_task) };
    if tokio::time::timeout(server::DRAIN_TIMEOUT, both)
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time; a message being sent stays queued");
        mail_abort.abort();
        sweep_abort.abort();
    }
    let _ = follow_tx.send(true);
    // Unregistering is one write, bounded by the busy timeout.
    let _ = tokio::time::timeout(Duration::from_secs(6), revocations).await;
    tracing::info!("stopped");
}
