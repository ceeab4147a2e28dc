//! The accept loop: HTTP/1.1 with a header-read timeout, a connection cap, a per-request
//! timeout, the request wrapper (security headers, error mapping, one log line per
//! request) and graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

use crate::app::App;
use crate::error::AppError;
use crate::handlers::verify;
use crate::pages::{self, Message};
use crate::router;
use crate::secrets;
use crate::web::{self, Ctx, Resp};

/// How long in-flight requests get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which routes a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (`listen`).
    Main,
    /// `/metrics` and the health checks only (`metrics.listen`).
    Metrics,
    /// `/api/` and the health checks only (`api.listen`).
    Api,
}

pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    surface: Surface,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = app.cfg.clone();
    let max = cfg.server.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let open = Arc::new(Open::default());
    // Signals every open connection when dropped: at shutdown, or if this future is.
    let stop_all = StopAll(open.clone());
    let mut builder = http1::Builder::new();
    // `server.header_read_timeout` is kept by `watch_connection` below, not by hyper's
    // `header_read_timeout`, which arms and drops a timer around every request head.
    builder
        .keep_alive(true)
        // hyper's default limit of 100 request headers applies (more: 431); setting it
        // explicitly would make hyper allocate the header array on every request.
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::new(Connection {
            app: app.clone(),
            started: AtomicU32::new(0),
            finished: AtomicU32::new(0),
        });
        let c = shared.clone();
        let svc = service_fn(move |req| {
            c.started.fetch_add(1, Ordering::Relaxed);
            answer(&c, peer, surface, req)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let (stop, stopped) = oneshot::channel();
        let registered = Registered {
            id: open.add(stop),
            open: open.clone(),
            _permit: permit,
        };
        let progress = shared.clone();
        let task = tokio::spawn(async move {
            let _registered = registered;
            tokio::pin!(conn);
            tokio::select! {
                biased;
                _ = conn.as_mut() => {}
                _ = stopped => {
                    conn.as_mut().graceful_shutdown();
                    drain(conn, &progress).await;
                }
            }
        });
        tokio::spawn(watch_connection(
            task.abort_handle(),
            shared,
            cfg.server.header_read_timeout.0,
        ));
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    drop(stop_all);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(max).expect("server.max_connections is checked at start-up");
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("in-flight requests did not finish in time"),
    }
}

/// A connection at shutdown, after hyper's `graceful_shutdown`: the request in flight is
/// finished and the connection closed. hyper closes a connection between requests, or
/// one that has sent nothing, at once; not one whose request head is still arriving
/// (a slow or stalled client), which would hold the shutdown until the header-read
/// watchdog cut it. Such a one is closed at the first look, every `DRAIN_TICK`, that
/// finds no request being handled.
async fn drain(mut conn: Pin<&mut impl Future>, progress: &Connection) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + DRAIN_TICK, DRAIN_TICK);
    loop {
        tokio::select! {
            biased;
            _ = conn.as_mut() => return,
            _ = ticks.tick() => {
                if progress.started.load(Ordering::Relaxed) == progress.finished.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    }
}

/// How often a draining connection is looked at (see `drain`).
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// What a connection's requests share: the app (one reference per connection; see
/// `web::AppRef`) and the counts its watchdog and `drain` read, requests started and
/// finished.
pub struct Connection {
    pub(crate) app: Arc<App>,
    started: AtomicU32,
    finished: AtomicU32,
}

/// Counts a request finished when dropped: answered, or abandoned by the client.
struct Finished(Arc<Connection>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The open connections' shutdown signals. One channel per connection rather than
/// hyper-util's `GracefulShutdown`, whose connections each lock a mutex shared by all
/// of them (one of eight, picked at random) every time they are polled: on a busy
/// server, locks bounced between cores on every request. Here the set is locked when a
/// connection opens and closes only.
#[derive(Default)]
struct Open(std::sync::Mutex<(u64, HashMap<u64, oneshot::Sender<()>>)>);

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, oneshot::Sender<()>>)> {
        // Insertions and removals are whole; a panic elsewhere cannot leave one half-done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, stop: oneshot::Sender<()>) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, stop);
        id
    }

    fn take_all(&self) -> Vec<oneshot::Sender<()>> {
        self.lock().1.drain().map(|(_, s)| s).collect()
    }
}

/// Tells every open connection to finish, when dropped.
struct StopAll(Arc<Open>);

impl Drop for StopAll {
    fn drop(&mut self) {
        for stop in self.0.take_all() {
            let _ = stop.send(());
        }
    }
}

/// A connection's place in `Open` and its connection permit, given back when its task
/// ends — closed, or aborted by its watchdog.
struct Registered {
    id: u64,
    open: Arc<Open>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.lock().1.remove(&self.id);
    }
}

/// `server.header_read_timeout`: closes a connection once no request on it has started
/// or finished for `limit` and none is being handled — a client that has not sent a
/// whole request head by then (slowloris), or sends nothing, or a keep-alive connection
/// idle that long. It looks four times per `limit`, so the cut comes between 1 and 1.25 ×
/// `limit` after the last request (or the connect). A request being handled is never
/// cut here: `server.request_timeout` bounds it. Ends with the connection.
///
/// (hyper's own `header_read_timeout` arms a timer and drops it around every request
/// head: an allocation and two timer-wheel updates on each `/verify`. Here a request
/// costs two counter increments.)
async fn watch_connection(
    conn: tokio::task::AbortHandle,
    progress: Arc<Connection>,
    limit: Duration,
) {
    // Config durations are whole seconds (≥ 1 s); the floor only keeps `interval` from
    // ever seeing zero.
    let tick = (limit / 4).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (0, 0);
    let mut quiet = 0;
    loop {
        ticks.tick().await;
        if conn.is_finished() {
            return;
        }
        let now = (
            progress.started.load(Ordering::Relaxed),
            progress.finished.load(Ordering::Relaxed),
        );
        if now != last || now.0 != now.1 {
            last = now;
            quiet = 0;
        } else {
            quiet += 1;
            if quiet == 4 {
                conn.abort();
                return;
            }
        }
    }
}

/// The future hyper is given for one request. A `/verify` that needs no database read —
/// a cached session, no session cookie, an `[access]` bypass or deny rule, a malformed
/// request — is answered here, on the spot: the hot path, run before every request of
/// every protected app, builds no async state machine to move into the connection and
/// poll. (`handle`'s is ~4 KB, since it can hold any handler. In a pinned profile this
/// took ~0.4 µs of user-space CPU off a cached `/verify`, 6.8–7.0 → 6.4 µs.) Everything
/// else runs `handle`, boxed: one allocation per request, where hyper reused one box per
/// connection, which pages and API calls do not notice.
enum Answer {
    Now(std::future::Ready<Result<Resp, Infallible>>),
    Later(Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Resp, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Now(r) => Pin::new(r).poll(cx),
            Answer::Later(f) => f.as_mut().poll(cx),
        }
    }
}

fn answer(
    conn: &Arc<Connection>,
    peer: SocketAddr,
    surface: Surface,
    req: Request<Incoming>,
) -> Answer {
    let finished = Finished(conn.clone());
    let ctx = Ctx::new(web::AppRef(conn.clone()), peer, &req);
    if surface == Surface::Main {
        if let Some(style) = router::verify_style(&req) {
            if let Some(result) = verify::cached(&ctx, &req, style) {
                let about = About::of(&ctx, &req);
                let resp = finish(&ctx, about, result, true);
                drop(finished);
                return Answer::Now(std::future::ready(Ok(resp)));
            }
        }
    }
    Answer::Later(Box::pin(handle(ctx, surface, req, finished)))
}

async fn handle(
    ctx: Ctx,
    surface: Surface,
    req: Request<Incoming>,
    _finished: Finished,
) -> Result<Resp, Infallible> {
    let about = About::of(&ctx, &req);
    let app = &ctx.app;
    // /verify needs no timer of its own: it gets here to read the database, which the
    // pool's and SQLite's busy timeouts bound.
    let result = if surface == Surface::Metrics {
        router::route_metrics(&ctx, req).await
    } else if surface == Surface::Api {
        let timeout = app.cfg.server.request_timeout.0;
        match tokio::time::timeout(timeout, router::route_api(&ctx, req)).await {
            Ok(r) => r,
            Err(_) => Err(AppError::Timeout),
        }
    } else if about.path.starts_with("/verify") {
        router::route(&ctx, req).await
    } else {
        let timeout = app.cfg.server.request_timeout.0;
        match tokio::time::timeout(timeout, router::route(&ctx, req)).await {
            Ok(r) => r,
            Err(_) => Err(AppError::Timeout),
        }
    };
    Ok(finish(&ctx, about, result, false))
}

/// What the request wrapper notes of a request before it is handled.
struct About {
    endpoint: usize,
    method: hyper::Method,
    path: std::borrow::Cow<'static, str>,
    cors: Option<HeaderValue>,
}

impl About {
    fn of(ctx: &Ctx, req: &Request<Incoming>) -> About {
        About {
            endpoint: crate::metrics::endpoint(req.uri().path()),
            method: req.method().clone(),
            path: router::loggable_path(req.uri().path()),
            cors: web::cors_origin(req.headers(), req.uri().path(), &ctx.app),
        }
    }
}

/// The request wrapper's work on every answer: errors become responses (here only),
/// CORS and security headers, metrics, the access log line. `on_the_spot`: answered by
/// `answer` without the handler (logged as `hot` on `/verify` lines).
fn finish(ctx: &Ctx, about: About, result: web::Result<Resp>, on_the_spot: bool) -> Resp {
    let app = &ctx.app;
    let About {
        endpoint,
        method,
        path,
        cors,
    } = about;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => error_response(ctx, e),
    };
    if let Some(origin) = cors {
        web::add_cors(&mut resp, origin);
    }
    let verify = path.starts_with("/verify");
    // A /verify 200 goes to the proxy only (it copies the identity headers and drops
    // the rest): browser-facing headers there would be bytes on the hot path.
    if !(verify && resp.status().is_success()) {
        web::security_headers(&mut resp, &app.cfg.derived.branding.csp);
    }
    // /verify answers the proxy, which logs the same request itself: its lines are
    // `debug` so the hot path does not pay for a second access log. Everything else
    // is `info`.
    let took = ctx.started.elapsed();
    app.metrics.request(endpoint, resp.status().as_u16(), took);
    let user_id = resp.extensions().get::<web::UserId>().map(|u| u.0);
    let hot = verify.then_some(on_the_spot);
    macro_rules! access_log {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "authbase::request",
                method = %method,
                path = %path,
                status = resp.status().as_u16(),
                ms = took.as_secs_f64() * 1000.0,
                ip = %ctx.client_ip,
                user_id,
                hot,
                "request"
            )
        };
    }
    if verify && !resp.status().is_server_error() {
        access_log!(debug);
    } else {
        access_log!(info);
    }
    resp
}

/// What an error page says at the top (and in its `<title>`): where the user is, in
/// words, not a status code.
fn page_title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Something is not right",
        403 => "Request refused",
        404 => "Page not found",
        405 => "Not available here",
        413 => "Too much data",
        415 => "Unsupported request",
        429 => "Please wait a moment",
        503 => "Temporarily unavailable",
        s if s >= 500 => "Something went wrong",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

/// The one place an error becomes a response.
fn error_response(ctx: &Ctx, e: AppError) -> Resp {
    let status = e.status();
    // A short id shown on 5xx answers and logged with the error, to find one in the other.
    let reference = status.is_server_error().then(|| {
        let id = secrets::hex(&secrets::random::<6>());
        tracing::error!(reference = %id, error = %e, "request failed");
        id
    });
    let reference = reference.as_deref();
    let message = e.public_message();
    let mut r = if ctx.wants_json || status == StatusCode::UNAUTHORIZED {
        let mut v = serde_json::json!({ "error": status.canonical_reason().unwrap_or("error"), "message": message });
        if let Some(id) = reference {
            v["reference"] = id.into();
        }
        web::json(status, v)
    } else {
        let title = page_title(status);
        let page = Message {
            reference,
            ..Message::new(ctx.app.frame(), title, &message).link("/", "Back to sign-in")
        };
        pages::render(status, &page).unwrap_or_else(|_| {
            web::with_type(status, "text/plain; charset=utf-8", message.clone().into())
        })
    };
    match e {
        AppError::MethodNotAllowed(allow) => {
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        AppError::Busy | AppError::Timeout | AppError::Unavailable(_) => {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        AppError::RateLimited { retry_after, .. } => {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
        }
        AppError::ApiUnauthorized(_) => {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"authbase\""),
            );
        }
        _ => {}
    }
    r
}
