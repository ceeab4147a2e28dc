//! Prometheus metrics at `GET /metrics` (text exposition format 0.0.4).
//!
//! Counters and the `/verify` latency histogram are plain atomics indexed by a fixed set
//! of endpoints and status codes, so counting costs `/verify` a few relaxed atomic adds
//! and no lock or map lookup (a metrics crate's labelled families take a lock per
//! update). Gauges that live in the database (queue depth, active sessions) are read
//! when scraped. The format is written here; tests parse it with the Python
//! `prometheus-client` parser.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Endpoints, as labels; the router's paths map onto them in [`endpoint`].
pub const ENDPOINTS: &[&str] = &[
    "verify",
    "verify_redirect",
    "index",
    "auth",
    "auth_code",
    "sign_in",
    "me",
    "sign_out",
    "healthz",
    "readyz",
    "metrics",
    "static",
    "api_email",
    "jwks",
    "other",
];

/// The label for a request path.
pub fn endpoint(path: &str) -> usize {
    let name = match path {
        "/verify" => "verify",
        "/verify/redirect" => "verify_redirect",
        "/" => "index",
        "/auth" => "auth",
        "/auth/code" => "auth_code",
        "/me" => "me",
        "/sign_out" => "sign_out",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/.well-known/jwks.json" => "jwks",
        p if p.starts_with("/sign_in/") => "sign_in",
        p if p.starts_with("/static/") => "static",
        p if p.starts_with("/api/email") => "api_email",
        _ => "other",
    };
    ENDPOINTS.iter().position(|e| *e == name).unwrap_or(0)
}

/// Status codes counted one by one; anything else is counted as its class (`5xx`, …).
const STATUSES: &[u16] = &[
    200, 202, 204, 302, 303, 400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 429, 431, 500, 503,
];
const CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx"];
const N_STATUS: usize = STATUSES.len() + CLASSES.len();

fn status_index(code: u16) -> usize {
    match STATUSES.iter().position(|s| *s == code) {
        Some(i) => i,
        None => STATUSES.len() + (code as usize / 100).clamp(1, 5) - 1,
    }
}

fn status_label(i: usize) -> String {
    match STATUSES.get(i) {
        Some(s) => s.to_string(),
        None => CLASSES[i - STATUSES.len()].to_string(),
    }
}

/// Upper bounds of the `/verify` latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Rate limits, as labels (the names used in `[limits]`).
pub const LIMITS: &[&str] = &[
    "sign_in_per_address",
    "sign_in_per_ip",
    "sign_in_global",
    "codes_per_ip",
    "unknown_links_per_ip",
    "api_email_per_recipient",
    "api_email_global",
];

/// Sign-in outcomes counted.
#[derive(Clone, Copy)]
pub enum SignIn {
    Requested,
    Confirmed,
    Refused,
}

/// Mail outcomes counted.
#[derive(Clone, Copy)]
pub enum Mail {
    Queued,
    Sent,
    Retried,
    Failed,
}

/// Request counters are kept in stripes: a thread counts in its own (see `stripe`), so
/// two cores answering `/verify` do not pass one counter's cache line back and forth on
/// every request; a scrape adds the stripes up.
const STRIPES: usize = 8;

/// One stripe of the request counters, on cache lines of its own.
#[repr(align(64))]
struct Stripe {
    requests: [AtomicU64; ENDPOINTS.len() * N_STATUS],
    verify_buckets: [AtomicU64; BUCKETS.len() + 1],
    verify_sum_nanos: AtomicU64,
}

impl Stripe {
    fn new() -> Stripe {
        Stripe {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            verify_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            verify_sum_nanos: AtomicU64::new(0),
        }
    }
}

/// This thread's stripe: threads take them in turn when they first count.
fn stripe() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    MINE.with(|m| *m)
}

pub struct Metrics {
    stripes: Box<[Stripe]>,
    sign_ins: [AtomicU64; 3],
    mail: [AtomicU64; 4],
    rate_limited: [AtomicU64; LIMITS.len()],
    access_denied: AtomicU64,
    assertions_signed: AtomicU64,
    started: u64,
}

/// Values read from elsewhere when scraped.
#[derive(Default)]
pub struct Gauges {
    pub mail_queued: i64,
    pub mail_oldest_due_age: i64,
    pub sessions_active: i64,
    pub sessions_cached: usize,
    pub limiter_keys: usize,
    pub running_servers: i64,
    /// The runtime's request threads (`server.workers`, resolved).
    pub workers: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            stripes: (0..STRIPES).map(|_| Stripe::new()).collect(),
            sign_ins: Default::default(),
            mail: Default::default(),
            rate_limited: Default::default(),
            access_denied: AtomicU64::new(0),
            assertions_signed: AtomicU64::new(0),
            started: crate::store::now() as u64,
        }
    }

    /// One answered request; `/verify` (both styles) also feeds the latency histogram.
    pub fn request(&self, endpoint: usize, status: u16, took: Duration) {
        let s = &self.stripes[stripe()];
        s.requests[endpoint * N_STATUS + status_index(status)].fetch_add(1, Relaxed);
        if endpoint <= 1 {
            let secs = took.as_secs_f64();
            let b = BUCKETS
                .iter()
                .position(|le| secs <= *le)
                .unwrap_or(BUCKETS.len());
            s.verify_buckets[b].fetch_add(1, Relaxed);
            s.verify_sum_nanos
                .fetch_add(took.as_nanos() as u64, Relaxed);
        }
    }

    /// One counter, added up over the stripes.
    fn sum(&self, counter: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes.iter().map(|s| counter(s).load(Relaxed)).sum()
    }

    pub fn sign_in(&self, what: SignIn) {
        self.sign_ins[what as usize].fetch_add(1, Relaxed);
    }

    pub fn mail(&self, what: Mail, n: u64) {
        self.mail[what as usize].fetch_add(n, Relaxed);
    }

    pub fn rate_limited(&self, limit: &str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.rate_limited[i].fetch_add(1, Relaxed);
        }
    }

    pub fn access_denied(&self) {
        self.access_denied.fetch_add(1, Relaxed);
    }

    /// An `X-User-Assertion` was signed (a cache hit reuses one and does not count).
    pub fn assertion_signed(&self) {
        self.assertions_signed.fetch_add(1, Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(8 * 1024);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        head(
            &mut o,
            "authbase_build_info",
            "gauge",
            "Version and git revision of the running binary.",
        );
        let _ = writeln!(
            o,
            "authbase_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_REVISION
        );
        head(
            &mut o,
            "authbase_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch.",
        );
        let _ = writeln!(o, "authbase_start_time_seconds {}", self.started);

        head(
            &mut o,
            "authbase_http_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code (or class).",
        );
        for (e, name) in ENDPOINTS.iter().enumerate() {
            for s in 0..N_STATUS {
                let n = self.sum(|st| &st.requests[e * N_STATUS + s]);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "authbase_http_requests_total{{endpoint=\"{name}\",status=\"{}\"}} {n}",
                        status_label(s)
                    );
                }
            }
        }

        head(
            &mut o,
            "authbase_verify_duration_seconds",
            "histogram",
            "Time to answer /verify and /verify/redirect, from request to response.",
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|st| &st.verify_buckets[i]);
            let _ = writeln!(
                o,
                "authbase_verify_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.sum(|st| &st.verify_buckets[BUCKETS.len()]);
        let _ = writeln!(
            o,
            "authbase_verify_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum(|st| &st.verify_sum_nanos) as f64 / 1e9;
        let _ = writeln!(o, "authbase_verify_duration_seconds_sum {sum}");
        let _ = writeln!(o, "authbase_verify_duration_seconds_count {cumulative}");

        head(
            &mut o,
            "authbase_sign_ins_total",
            "counter",
            "Sign-ins by outcome: requested (mail queued), refused (address not allowed or blocked; no mail), confirmed.",
        );
        for (i, what) in ["requested", "confirmed", "refused"].iter().enumerate() {
            let _ = writeln!(
                o,
                "authbase_sign_ins_total{{outcome=\"{what}\"}} {}",
                self.sign_ins[i].load(Relaxed)
            );
        }

        head(
            &mut o,
            "authbase_emails_total",
            "counter",
            "Emails by outcome: queued, sent, retried (a failed attempt that will be retried), failed (given up).",
        );
        for (i, what) in ["queued", "sent", "retried", "failed"].iter().enumerate() {
            let _ = writeln!(
                o,
                "authbase_emails_total{{outcome=\"{what}\"}} {}",
                self.mail[i].load(Relaxed)
            );
        }
        head(
            &mut o,
            "authbase_email_queue_depth",
            "gauge",
            "Emails waiting in the outbox (all processes sharing the database).",
        );
        let _ = writeln!(o, "authbase_email_queue_depth {}", g.mail_queued);
        head(
            &mut o,
            "authbase_email_queue_oldest_due_seconds",
            "gauge",
            "How long the oldest due email has been waiting past its send time (0: none).",
        );
        let _ = writeln!(
            o,
            "authbase_email_queue_oldest_due_seconds {}",
            g.mail_oldest_due_age
        );

        head(
            &mut o,
            "authbase_sessions_active",
            "gauge",
            "Signed-in (confirmed, unexpired) sessions in the database.",
        );
        let _ = writeln!(o, "authbase_sessions_active {}", g.sessions_active);
        head(
            &mut o,
            "authbase_sessions_cached",
            "gauge",
            "Sessions held in this process's /verify cache.",
        );
        let _ = writeln!(o, "authbase_sessions_cached {}", g.sessions_cached);

        head(
            &mut o,
            "authbase_rate_limited_total",
            "counter",
            "Requests refused with 429, by [limits] limit.",
        );
        for (i, l) in LIMITS.iter().enumerate() {
            let _ = writeln!(
                o,
                "authbase_rate_limited_total{{limit=\"{l}\"}} {}",
                self.rate_limited[i].load(Relaxed)
            );
        }
        head(
            &mut o,
            "authbase_rate_limit_tracked_keys",
            "gauge",
            "Addresses and IPs the rate limits currently remember.",
        );
        let _ = writeln!(o, "authbase_rate_limit_tracked_keys {}", g.limiter_keys);
        head(
            &mut o,
            "authbase_access_denied_total",
            "counter",
            "/verify answers of 403 (an [access] rule or the global policy refused).",
        );
        let _ = writeln!(
            o,
            "authbase_access_denied_total {}",
            self.access_denied.load(Relaxed)
        );
        head(
            &mut o,
            "authbase_assertions_signed_total",
            "counter",
            "X-User-Assertion tokens signed (reused ones are not counted).",
        );
        let _ = writeln!(
            o,
            "authbase_assertions_signed_total {}",
            self.assertions_signed.load(Relaxed)
        );
        head(
            &mut o,
            "authbase_running_servers",
            "gauge",
            "authbase servers registered on this database with a recent heartbeat.",
        );
        let _ = writeln!(o, "authbase_running_servers {}", g.running_servers);
        head(
            &mut o,
            "authbase_workers",
            "gauge",
            "Threads answering requests (server.workers, or half the cores when it is 0).",
        );
        let _ = writeln!(o, "authbase_workers {}", g.workers);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_endpoints_index() {
        assert_eq!(status_label(status_index(200)), "200");
        assert_eq!(status_label(status_index(418)), "4xx");
        assert_eq!(status_label(status_index(502)), "5xx");
        assert_eq!(status_label(status_index(101)), "1xx");
        assert_eq!(ENDPOINTS[endpoint("/sign_in/abc")], "sign_in");
        assert_eq!(ENDPOINTS[endpoint("/verify")], "verify");
        assert_eq!(ENDPOINTS[endpoint("/nope")], "other");
        assert_eq!(ENDPOINTS[endpoint("/.well-known/jwks.json")], "jwks");
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new();
        m.request(0, 200, Duration::from_micros(30));
        m.request(1, 302, Duration::from_millis(3));
        m.request(2, 200, Duration::from_secs(3));
        let t = m.render(&Gauges::default());
        assert!(
            t.contains("authbase_verify_duration_seconds_bucket{le=\"0.00005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("authbase_verify_duration_seconds_bucket{le=\"0.005\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("authbase_verify_duration_seconds_bucket{le=\"+Inf\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("authbase_verify_duration_seconds_count 2"),
            "{t}"
        );
        assert!(t.contains("authbase_http_requests_total{endpoint=\"index\",status=\"200\"} 1"));
    }
}
