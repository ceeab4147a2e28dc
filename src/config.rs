//! Configuration: one struct, parsed from TOML with defaults, overridden from the
//! environment in one place, and validated once at start-up with errors that name the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::branding::BrandingConfig;
use crate::net::IpNet;

mod effective;
mod env;

pub use env::{
    EnvOverride, SecretFrom, SecretKey, API_TOKEN, DATABASE_PASSWORD, ENV_ONLY, SECRETS,
    SMTP_PASSWORD,
};

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("config error: `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// `server.max_connections` at most: far above any open-file limit, and a count the
/// server's shutdown can wait for in one go.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// `server.workers` at most.
pub const MAX_WORKERS: usize = 1024;

/// The request threads when `server.workers` is 0: half the cores this process may use
/// (its CPU affinity and cgroup quota count), rounded up. authbase runs beside the proxy
/// that asks it, which does as much work per request as it does: with a worker per core
/// the two time-share the cores under load, and every `/verify` can wait a scheduler
/// slice (on 2 cores, p99 2.8 ms with two workers, 0.55 ms with one, at the same
/// throughput; see README, Performance). One core answers ~100,000 `/verify` a second.
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.div_ceil(2)
}

pub(crate) fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A duration written as `30d`, `7d`, `12h`, `10m`, `45s`, or `0`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs())
    }
}

/// As written in the file: the largest unit that divides it (`30d`, `90m`, `45s`, `0`).
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        if s == 0 {
            return f.write_str("0");
        }
        for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
            if s % n == 0 {
                return write!(f, "{}{unit}", s / n);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if unit.is_empty() && !num.is_empty() {
            return Err(format!("`{s}` needs a unit (e.g. \"{s}s\")"));
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (use e.g. 30d, 12h, 10m, 45s or 0)"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(format!("`{s}` has an unknown unit (use s, m, h or d)")),
        };
        n.checked_mul(mult)
            .filter(|v| *v <= 100 * 365 * 86400)
            .map(|v| Dur(Duration::from_secs(v)))
            .ok_or_else(|| format!("`{s}` is too long"))
    }
    pub fn secs(&self) -> i64 {
        self.0.as_secs() as i64
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => Dur::parse(&s).map_err(serde::de::Error::custom),
            Raw::N(0) => Ok(Dur(Duration::ZERO)),
            Raw::N(n) => Err(serde::de::Error::custom(format!(
                "`{n}` needs a unit (e.g. \"{n}s\")"
            ))),
        }
    }
}

/// The `database` setting: a SQLite path or a PostgreSQL URL, which may hold a password,
/// so `Debug` and `Display` show it with the password as `***` (`store::db::shown`).
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Database(String);

impl std::ops::Deref for Database {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Database {
    fn from(s: &str) -> Database {
        Database(s.to_string())
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&crate::store::db::shown(self), f)
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::store::db::shown(self))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub webapp_name: String,
    pub public_url: String,
    pub redirect_url: String,
    pub listen: String,
    pub database: Database,
    /// PostgreSQL: a file holding the password (instead of one in the URL).
    pub database_password_file: String,
    pub secret_key_file: String,
    pub trusted_proxies: Vec<String>,
    pub allowed_redirect_hosts: Vec<String>,
    pub branding: BrandingConfig,
    pub cookie: CookieConfig,
    pub session: SessionConfig,
    pub email: EmailConfig,
    pub server: ServerConfig,
    pub cors: CorsConfig,
    pub access: AccessConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    pub assertion: AssertionConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// Derived at validation; never read from the file.
    #[serde(skip)]
    pub derived: Derived,
}

/// Values computed once from the raw keys by `validate()`. `Debug` redacts secrets.
#[derive(Clone, Default)]
pub struct Derived {
    pub public_url: Option<url::Url>,
    /// `public_url` without a trailing slash, for building links.
    pub public_base: String,
    /// `scheme://host[:port]` of `public_url`, for Origin checks.
    pub public_origin: String,
    pub listen: Option<SocketAddr>,
    /// `server.workers`, with 0 resolved to `default_workers()` (which reads the
    /// process's CPU affinity and cgroup quota: once).
    pub workers: Option<usize>,
    pub trusted_proxies: Vec<IpNet>,
    pub smtp_password: Option<String>,
    /// `database` with the password of `database_password_file` put in (PostgreSQL).
    pub database: Option<String>,
    pub cookie_domain: Option<String>,
    /// `[access]`, compiled.
    pub access: crate::access::Policy,
    /// `metrics.listen`, parsed; `None`: `/metrics` is served on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// SHA-256 of the API token (`api.token_file` / `AUTHBASE_API_TOKEN`); `None`: the
    /// API is off.
    pub api_token_hash: Option<crate::secrets::Hash>,
    /// `api.listen`, parsed; `None`: `/api/` is served on `listen`.
    pub api_listen: Option<SocketAddr>,
    /// `[branding]`, compiled: the served stylesheet, logo, CSP.
    pub branding: crate::branding::Branding,
    /// Keys set from `AUTHBASE_*` environment variables, in declaration order.
    pub env: Vec<EnvOverride>,
    /// Per secret (`email.smtp_password`, …): where its value came from, if it is set.
    pub secrets: Vec<(&'static str, Option<SecretFrom>)>,
    /// Environment variables that were ignored (unknown names, shadowed aliases).
    pub env_warnings: Vec<String>,
}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Derived")
            .field("public_url", &self.public_url)
            .field("public_base", &self.public_base)
            .field("public_origin", &self.public_origin)
            .field("listen", &self.listen)
            .field("workers", &self.workers)
            .field("trusted_proxies", &self.trusted_proxies)
            .field(
                "smtp_password",
                &self.smtp_password.as_ref().map(|_| "(redacted)"),
            )
            .field(
                "database",
                &self.database.as_deref().map(crate::store::db::shown),
            )
            .field("cookie_domain", &self.cookie_domain)
            .field("access", &self.access)
            .field("metrics_listen", &self.metrics_listen)
            .field(
                "api_token_hash",
                &self.api_token_hash.as_ref().map(|_| "(redacted)"),
            )
            .field("api_listen", &self.api_listen)
            .field("branding", &self.branding)
            .field("env", &self.env)
            .field("secrets", &self.secrets)
            .field("env_warnings", &self.env_warnings)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    pub name: String,
    pub domain: String,
    pub secure: bool,
    pub same_site: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub lifetime: Dur,
    pub idle_timeout: Dur,
    pub link_ttl: Dur,
    pub code_attempts: u32,
    pub code_attempts_per_address: u32,
    pub match_attempts: u32,
    pub cache_entries: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    pub sender_address: String,
    pub transport: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: String,
    pub smtp_username: String,
    pub smtp_password_file: String,
    pub smtp_timeout: Dur,
    pub retry_max_interval: Dur,
    pub max_attempts: u32,
    /// Queued mail older than this is given up on (marked failed).
    pub max_age: Dur,
    /// Messages sent at the same time, per lane (sign-in mail, API mail).
    pub concurrency: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Threads that answer requests (tokio workers); 0: `default_workers()`.
    pub workers: usize,
    pub max_connections: usize,
    pub header_read_timeout: Dur,
    pub request_timeout: Dur,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
}

/// `[access]`: who may sign in, and who may reach which host.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Domains whose addresses may sign in (`example.com`, or `*.example.com` for its
    /// subdomains). Empty together with `allowed_emails`: anyone may sign up.
    pub allowed_domains: Vec<String>,
    pub allowed_emails: Vec<String>,
    /// Group name -> member addresses (added to the groups set with the CLI).
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Per-host rules, first match wins.
    pub rules: Vec<RuleConfig>,
}

/// One `[[access.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub host: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default = "default_policy")]
    pub policy: String,
    #[serde(default)]
    pub emails: Vec<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_policy() -> String {
    "allow".into()
}

/// A rate limit written as `5/1h` (at most 5 in any window of an hour that starts with
/// the first one), or `off`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<(u32, Duration)>);

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((n, w)) => write!(f, "{n}/{}s", w.as_secs()),
            None => write!(f, "off"),
        }
    }
}

/// As written in the file: `5/1h` or `off`.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((n, w)) => write!(f, "{n}/{}", Dur(w)),
            None => f.write_str("off"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(Rate(None));
        }
        let (n, w) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a rate like \"5/1h\" (or \"off\")"))?;
        let n: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{s}`: the count must be a whole number above 0"))?;
        let w = Dur::parse(w)?;
        if w.0 < Duration::from_secs(1) || w.0 > Duration::from_secs(7 * 86400) {
            return Err(format!("`{s}`: the window must be between 1s and 7d"));
        }
        Ok(Rate(Some((n, w.0))))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `[limits]`: abuse protection, held in memory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sign-in emails one address can ask for.
    pub sign_in_per_address: Rate,
    /// The least time between two sign-in requests for one address.
    pub sign_in_address_gap: Dur,
    /// Sign-in requests from one client IP (IPv6: one /64).
    pub sign_in_per_ip: Rate,
    /// Sign-in requests overall: the ceiling on sign-in mail sent.
    pub sign_in_global: Rate,
    /// One-time codes one client IP can submit.
    pub codes_per_ip: Rate,
    /// Unknown or malformed sign-in links one client IP can open.
    pub unknown_links_per_ip: Rate,
    /// Keys (addresses, IPs) each limit remembers at most.
    pub tracked_keys: usize,
    /// Messages the email API accepts for one recipient (counted in the database).
    pub api_email_per_recipient: Rate,
    /// Messages the email API accepts overall.
    pub api_email_global: Rate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let r = |s: &str| Rate::parse(s).expect("valid default");
        LimitsConfig {
            sign_in_per_address: r("5/1h"),
            sign_in_address_gap: Dur(Duration::from_secs(30)),
            sign_in_per_ip: r("60/1h"),
            sign_in_global: r("1000/1h"),
            codes_per_ip: r("30/10m"),
            unknown_links_per_ip: r("30/10m"),
            tracked_keys: 100_000,
            api_email_per_recipient: r("20/1h"),
            api_email_global: r("2000/1h"),
        }
    }
}

/// `[audit]`: the security event log in the database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Events older than this are deleted (0 = keep forever).
    pub retention: Dur,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Dur(Duration::from_secs(90 * 86400)),
        }
    }
}

/// `[assertion]`: the signed `X-User-Assertion` on `/verify` answers (see `assertion`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionConfig {
    pub enabled: bool,
    /// Lifetime of one assertion (`exp - iat`); between 30s and 10m.
    pub ttl: Dur,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            enabled: true,
            ttl: Dur(Duration::from_secs(120)),
        }
    }
}

/// `[api]`: the email API for upstream apps (`POST /api/email`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding the bearer token (or `AUTHBASE_API_TOKEN`). Empty: the API is off.
    pub token_file: String,
    /// A listener of its own for `/api/` (e.g. 127.0.0.1:9093); empty: `listen`.
    pub listen: String,
    /// The most one message may carry: text, HTML and decoded attachments together.
    pub max_message_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token_file: String::new(),
            listen: String::new(),
            max_message_bytes: 10 * 1024 * 1024,
        }
    }
}

/// `[metrics]`: Prometheus exposition at `GET /metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Empty: on the main listener. An address: only there (e.g. a loopback or
    /// internal-network port the public proxy does not reach).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: String::new(),
        }
    }
}

/// `[log]`: what goes to stderr.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `warn,audit=info`, …); `RUST_LOG` wins.
    pub level: String,
    /// `pretty` or `json`; `--log-format` / `AUTHBASE_LOG_FORMAT` win.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "pretty".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            webapp_name: "authbase".into(),
            public_url: "http://localhost:9091".into(),
            redirect_url: "http://localhost:9091/me".into(),
            listen: "127.0.0.1:9091".into(),
            database: "authbase.db".into(),
            database_password_file: String::new(),
            secret_key_file: "authbase.key".into(),
            trusted_proxies: vec![],
            allowed_redirect_hosts: vec![],
            branding: BrandingConfig::default(),
            cookie: CookieConfig::default(),
            session: SessionConfig::default(),
            email: EmailConfig::default(),
            server: ServerConfig::default(),
            cors: CorsConfig::default(),
            access: AccessConfig::default(),
            limits: LimitsConfig::default(),
            audit: AuditConfig::default(),
            assertion: AssertionConfig::default(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            derived: Derived::default(),
        }
    }
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "session_id".into(),
            domain: String::new(),
            secure: false,
            same_site: "lax".into(),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            lifetime: Dur(Duration::from_secs(30 * 86400)),
            idle_timeout: Dur(Duration::from_secs(7 * 86400)),
            link_ttl: Dur(Duration::from_secs(600)),
            code_attempts: 5,
            code_attempts_per_address: 10,
            match_attempts: 3,
            cache_entries: 250_000,
        }
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            sender_address: "authbase <no-reply@localhost.localdomain>".into(),
            transport: "log".into(),
            smtp_host: "127.0.0.1".into(),
            smtp_port: 2525,
            smtp_tls: "none".into(),
            smtp_username: String::new(),
            smtp_password_file: String::new(),
            smtp_timeout: Dur(Duration::from_secs(10)),
            retry_max_interval: Dur(Duration::from_secs(300)),
            max_attempts: 300,
            max_age: Dur(Duration::from_secs(86400)),
            concurrency: 4,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 0,
            max_connections: 4096,
            header_read_timeout: Dur(Duration::from_secs(10)),
            request_timeout: Dur(Duration::from_secs(30)),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Where environment overrides come from; a trait so tests never touch the process env.
/// An empty variable counts as unset.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// The names of the set `AUTHBASE_*` variables, to warn about unknown ones.
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

pub struct ProcessEnv;
impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter(|(_, v)| !v.is_empty())
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("AUTHBASE_"))
            .collect()
    }
}

impl Config {
    /// Read, parse, override from the environment, and validate.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, env)
    }

    /// Parse `text`, apply `AUTHBASE_*` overrides to the parsed TOML, read the secrets,
    /// and validate. Errors name the key, or the environment variable that set it.
    pub fn from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        // The file alone first, so that its mistakes are reported with key and line.
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start.min(text.len()));
            let line = at.map(|a| text[..a].matches('\n').count() + 1);
            ConfigError {
                key: at
                    .and_then(|a| key_at(text, a))
                    .unwrap_or_else(|| "authbase.toml".into()),
                message: format!(
                    "{}{}",
                    e.message().trim_end(),
                    line.map(|l| format!(" (line {l})")).unwrap_or_default()
                ),
            }
        })?;
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            err("authbase.toml", e.message().trim_end().to_string())
        })?;
        let overrides = env::apply_env(&mut table, env)?;
        if !overrides.is_empty() {
            cfg = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| err("environment", e.message().trim_end()))?;
        }
        cfg.derived.env = overrides;
        let unknown = env::unknown_vars(env);
        // A mistyped access variable would leave the access lists as the file has them,
        // perhaps empty: open sign-up. That is an error, not a warning.
        if let Some(u) = unknown
            .iter()
            .find(|u| u.name.starts_with("AUTHBASE_ACCESS_"))
        {
            let hint = match &u.likely {
                Some(k) => format!("did you mean {k}?"),
                None => "access.allowed_domains and access.allowed_emails are the access keys a variable can set; rules and groups are set in the file only".into(),
            };
            return Err(err(
                &u.name,
                format!("is not a configuration key ({hint}); a mistake in the access settings could let anyone sign in, so it is an error"),
            ));
        }
        cfg.derived.env_warnings = unknown.iter().map(env::UnknownVar::warning).collect();
        cfg.read_secrets(env)?;
        cfg.validate().map_err(|e| {
            let set_by_env = cfg.derived.env.iter().any(|o| e.key == o.key);
            let e = env::name_the_variable(e, &cfg.derived.env);
            match line_of(text, &e.key) {
                Some(l) if !set_by_env => ConfigError {
                    message: format!("{} (line {l})", e.message),
                    ..e
                },
                _ => e,
            }
        })?;
        Ok(cfg)
    }

    /// What the store opens: `database`, with the password of `database_password_file`
    /// put into a PostgreSQL URL. Never log it; show `store::db::shown(&cfg.database)`.
    pub fn database_target(&self) -> &str {
        self.derived.database.as_deref().unwrap_or(&self.database.0)
    }

    /// Every secret (see [`SECRETS`]): from its environment variable, else from its
    /// `*_file` key. Adding one: a `*_file` key, a [`SecretKey`], a line here.
    fn read_secrets(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        let file = self.email.smtp_password_file.clone();
        self.derived.smtp_password = self.read_secret(&SMTP_PASSWORD, &file, env)?;
        let file = self.api.token_file.clone();
        if let Some(token) = self.read_secret(&API_TOKEN, &file, env)? {
            // 32 characters of hex or base64 carry at least 128 bits.
            if token.trim().len() < 32 || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                let key = match self
                    .derived
                    .secrets
                    .iter()
                    .find(|(k, _)| *k == API_TOKEN.name())
                {
                    Some((_, Some(SecretFrom::Env(var)))) => var.clone(),
                    _ => API_TOKEN.file_key.to_string(),
                };
                return Err(err(
                    &key,
                    "the API token must be at least 32 characters without spaces (e.g. `openssl rand -hex 32`)",
                ));
            }
            self.derived.api_token_hash = Some(crate::secrets::hash(&token));
        }
        let file = self.database_password_file.clone();
        if let Some(pw) = self.read_secret(&DATABASE_PASSWORD, &file, env)? {
            let key = DATABASE_PASSWORD.file_key;
            if !crate::store::db::is_postgres(&self.database) {
                return Err(err(
                    key,
                    "is for a PostgreSQL database; `database` names a SQLite file",
                ));
            }
            let mut u = url::Url::parse(&self.database)
                .map_err(|e| err("database", format!("not a PostgreSQL URL: {e}")))?;
            u.set_password(Some(&pw))
                .map_err(|_| err("database", "a PostgreSQL URL needs a user name (postgres://user@host/db) to take a password"))?;
            self.derived.database = Some(u.to_string());
        }
        Ok(())
    }

    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.webapp_name.trim().is_empty() || self.webapp_name.chars().any(char::is_control) {
            return Err(err(
                "webapp_name",
                "must be a non-empty name without control characters",
            ));
        }
        let public = parse_http_url("public_url", &self.public_url)?;
        if public.query().is_some() || public.fragment().is_some() {
            return Err(err("public_url", "must not have a query or fragment"));
        }
        if public.path() != "/" {
            return Err(err(
                "public_url",
                "must not have a path: serve authbase at the root of its own host (e.g. https://auth.example.com)",
            ));
        }
        self.derived.public_base = public.as_str().trim_end_matches('/').to_string();
        self.derived.public_origin = public.origin().ascii_serialization();
        parse_http_url("redirect_url", &self.redirect_url)?;
        self.derived.listen = Some(self.listen.parse().map_err(|_| {
            err(
                "listen",
                format!("`{}` is not an address like 127.0.0.1:9091", self.listen),
            )
        })?);
        if self.database.trim().is_empty() {
            return Err(err(
                "database",
                "must name a SQLite file or a postgres:// URL",
            ));
        }
        if crate::store::db::is_postgres(&self.database) {
            if let Err(e) = crate::store::db::check_url(&self.database) {
                return Err(err("database", format!("not a PostgreSQL URL: {e}")));
            }
        }
        if self.secret_key_file.trim().is_empty() {
            return Err(err("secret_key_file", "must name a file"));
        }
        self.derived.trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>().map_err(|_| {
                    err(
                        "trusted_proxies",
                        format!("`{p}` is not an IP address or CIDR"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        for h in &self.allowed_redirect_hosts {
            if !is_hostname(h.trim_start_matches("*.")) {
                return Err(err(
                    "allowed_redirect_hosts",
                    format!("`{h}` is not a host name"),
                ));
            }
        }
        for o in &self.cors.allowed_origins {
            let u = url::Url::parse(o).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.origin().ascii_serialization() == o.trim_end_matches('/')
            });
            if u.is_none() {
                return Err(err(
                    "cors.allowed_origins",
                    format!("`{o}` is not an origin like https://app.example.com"),
                ));
            }
        }

        // Cookie.
        let c = &self.cookie;
        if c.name.is_empty()
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(err(
                "cookie.name",
                "must be letters, digits, `_`, `-` or `.`",
            ));
        }
        if !matches!(c.same_site.as_str(), "lax" | "strict") {
            return Err(err("cookie.same_site", "must be \"lax\" or \"strict\""));
        }
        let domain = c.domain.trim().trim_start_matches('.').to_ascii_lowercase();
        if !domain.is_empty() {
            if !is_hostname(&domain) {
                return Err(err(
                    "cookie.domain",
                    format!("`{}` is not a domain", c.domain),
                ));
            }
            // A public suffix (`com`, `co.uk`, `github.io`) would make every site under
            // it "ours" for return URLs, CORS and CSRF checks; browsers refuse the cookie.
            if psl::suffix_str(&domain) == Some(domain.as_str()) {
                return Err(err(
                    "cookie.domain",
                    format!(
                        "`{domain}` is a public suffix; use your own domain, e.g. example.co.uk"
                    ),
                ));
            }
            let host = public.host_str().unwrap_or("").to_ascii_lowercase();
            if !host_within(&host, &domain) {
                return Err(err(
                    "cookie.domain",
                    format!("public_url host `{host}` is not `{domain}` or one of its subdomains, so browsers would refuse the cookie"),
                ));
            }
            self.derived.cookie_domain = Some(domain);
        }
        if c.secure && public.scheme() != "https" && public.host_str() != Some("localhost") {
            return Err(err(
                "cookie.secure",
                "is true but public_url is not https: browsers would never send the cookie",
            ));
        }
        // Name prefixes (RFC 6265bis; browsers match them in any case): a `__Secure-`
        // cookie without `Secure` is dropped, a `__Host-` one also with a `Domain`. The
        // sign-in would then seem to work and never stick.
        let lower = c.name.to_ascii_lowercase();
        if (lower.starts_with("__secure-") || lower.starts_with("__host-")) && !c.secure {
            return Err(err(
                "cookie.name",
                format!(
                    "`{}` needs cookie.secure = true: browsers drop a cookie of that prefix without Secure",
                    c.name
                ),
            ));
        }
        if lower.starts_with("__host-") && self.derived.cookie_domain.is_some() {
            return Err(err(
                "cookie.name",
                "a `__Host-` cookie cannot have a cookie.domain (browsers drop it): leave cookie.domain empty, or use a `__Secure-` name",
            ));
        }
        self.derived.branding = crate::branding::Branding::compile(
            &self.branding,
            &self.derived.public_base,
            &self.derived.public_origin,
        )?;
        self.derived.public_url = Some(public);

        // Session.
        let s = &self.session;
        if s.lifetime.0.is_zero() {
            return Err(err("session.lifetime", "must be longer than 0"));
        }
        if s.link_ttl.0.is_zero() || s.link_ttl.0 > Duration::from_secs(86400) {
            return Err(err("session.link_ttl", "must be between 1s and 1d"));
        }
        if s.code_attempts == 0 || s.code_attempts > 20 {
            return Err(err("session.code_attempts", "must be between 1 and 20"));
        }
        if s.code_attempts_per_address < s.code_attempts || s.code_attempts_per_address > 100 {
            return Err(err(
                "session.code_attempts_per_address",
                "must be between session.code_attempts and 100",
            ));
        }
        if s.match_attempts == 0 || s.match_attempts > 10 {
            return Err(err("session.match_attempts", "must be between 1 and 10"));
        }

        // Email.
        let e = &self.email;
        if e.sender_address
            .parse::<lettre::message::Mailbox>()
            .is_err()
        {
            return Err(err(
                "email.sender_address",
                format!(
                    "`{}` is not an address like `My App <no-reply@example.com>`",
                    e.sender_address
                ),
            ));
        }
        if !matches!(e.transport.as_str(), "log" | "smtp") {
            return Err(err("email.transport", "must be \"log\" or \"smtp\""));
        }
        if !matches!(e.smtp_tls.as_str(), "none" | "starttls" | "tls") {
            return Err(err(
                "email.smtp_tls",
                "must be \"none\", \"starttls\" or \"tls\"",
            ));
        }
        if e.transport == "smtp" && e.smtp_host.trim().is_empty() {
            return Err(err(
                "email.smtp_host",
                "is required when transport = \"smtp\"",
            ));
        }
        if e.smtp_timeout.0.is_zero() {
            return Err(err("email.smtp_timeout", "must be longer than 0"));
        }
        if e.retry_max_interval.0 < Duration::from_secs(1) {
            return Err(err("email.retry_max_interval", "must be at least 1s"));
        }
        if e.max_attempts == 0 {
            return Err(err("email.max_attempts", "must be at least 1"));
        }
        if e.max_age.0 < Duration::from_secs(60) || e.max_age.0 > Duration::from_secs(7 * 86400) {
            return Err(err("email.max_age", "must be between 1m and 7d"));
        }
        if e.concurrency == 0 || e.concurrency > 32 {
            return Err(err("email.concurrency", "must be between 1 and 32"));
        }
        if self.derived.smtp_password.is_some() && e.smtp_username.is_empty() {
            return Err(err(
                "email.smtp_username",
                "is required when a password is set",
            ));
        }

        // Server limits.
        let v = &self.server;
        if v.workers > MAX_WORKERS {
            return Err(err(
                "server.workers",
                format!("must be between 0 (automatic) and {MAX_WORKERS}"),
            ));
        }
        self.derived.workers = Some(match v.workers {
            0 => default_workers(),
            n => n,
        });
        if v.max_connections == 0 || v.max_connections > MAX_CONNECTIONS {
            return Err(err(
                "server.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        if v.header_read_timeout.0.is_zero() {
            return Err(err("server.header_read_timeout", "must be longer than 0"));
        }
        if v.request_timeout.0.is_zero() {
            return Err(err("server.request_timeout", "must be longer than 0"));
        }
        if v.max_body_bytes < 1024 {
            return Err(err("server.max_body_bytes", "must be at least 1024"));
        }

        let l = &self.limits;
        if l.tracked_keys < 16 || l.tracked_keys > 10_000_000 {
            return Err(err(
                "limits.tracked_keys",
                "must be between 16 and 10000000",
            ));
        }
        if l.sign_in_address_gap.0 > Duration::from_secs(86400) {
            return Err(err("limits.sign_in_address_gap", "must be at most 1d"));
        }
        self.derived.access = crate::access::Policy::compile(&self.access)?;
        // Below 30 s clock skew between authbase and apps starts to bite; above 10 min a
        // signed-out session's assertions live too long (and `signing::OVERLAP` assumes it).
        let ttl = self.assertion.ttl.0;
        if ttl < Duration::from_secs(30) || ttl > Duration::from_secs(600) {
            return Err(err("assertion.ttl", "must be between 30s and 10m"));
        }

        if !self.metrics.listen.is_empty() {
            let a: SocketAddr = self.metrics.listen.parse().map_err(|_| {
                err(
                    "metrics.listen",
                    format!(
                        "`{}` is not an address like 127.0.0.1:9092",
                        self.metrics.listen
                    ),
                )
            })?;
            if Some(a) == self.derived.listen && a.port() != 0 {
                return Err(err(
                    "metrics.listen",
                    "is the same as `listen`; leave it empty to serve /metrics there",
                ));
            }
            self.derived.metrics_listen = Some(a);
        }
        if !self.api.listen.is_empty() {
            let a: SocketAddr = self.api.listen.parse().map_err(|_| {
                err(
                    "api.listen",
                    format!(
                        "`{}` is not an address like 127.0.0.1:9093",
                        self.api.listen
                    ),
                )
            })?;
            if a.port() != 0
                && (Some(a) == self.derived.listen || Some(a) == self.derived.metrics_listen)
            {
                return Err(err(
                    "api.listen",
                    "is the same as `listen` or `metrics.listen`; leave it empty to serve /api/ on `listen`",
                ));
            }
            self.derived.api_listen = Some(a);
        }
        if self.api.max_message_bytes < 1024 || self.api.max_message_bytes > 50 * 1024 * 1024 {
            return Err(err(
                "api.max_message_bytes",
                "must be between 1024 and 52428800 (50 MiB)",
            ));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return Err(err("log.format", "must be \"pretty\" or \"json\""));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(err(
                "log.level",
                format!(
                    "`{}` is not a log filter like \"info\" or \"warn,audit=info\"",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    /// Valid but risky settings, worth a line in the log at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let e = &self.email;
        if e.transport == "log" {
            w.push(
                "email.transport = \"log\": sign-in links are printed to stdout (development only)"
                    .into(),
            );
        }
        let loopback = matches!(e.smtp_host.as_str(), "127.0.0.1" | "::1" | "localhost");
        if e.transport == "smtp"
            && e.smtp_tls == "none"
            && self.derived.smtp_password.is_some()
            && !loopback
        {
            w.push(format!(
                "email.smtp_tls = \"none\": the SMTP password goes to {} unencrypted",
                e.smtp_host
            ));
        }
        let local = self
            .derived
            .public_url
            .as_ref()
            .and_then(|u| u.host_str())
            .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h.ends_with(".localhost"));
        if !self.cookie.secure && !local {
            w.push(
                "cookie.secure = false: set it to true when authbase is served over https".into(),
            );
        }
        w.extend(self.derived.access.hidden_rules());
        if self.derived.access.open_sign_up() {
            w.push("[access] allowed_domains and allowed_emails are empty: ANYONE with an email address can sign in (open sign-up)".into());
        }
        if self.derived.api_listen.is_some() && self.derived.api_token_hash.is_none() {
            w.push("api.listen is set but there is no API token (api.token_file or AUTHBASE_API_TOKEN): the email API is off".into());
        }
        if self.cookie.same_site == "strict" {
            w.push("cookie.same_site = \"strict\": a link clicked in webmail arrives without the cookie, so it opens the \"other device\" page".into());
        }
        w.extend(self.derived.env_warnings.iter().cloned());
        w
    }

    /// Request threads: `server.workers`, or `default_workers()` when it is 0.
    pub fn workers(&self) -> usize {
        self.derived.workers.expect("validated")
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.derived.listen.expect("validated")
    }

    pub fn public_base(&self) -> &str {
        &self.derived.public_base
    }

    pub fn secret_key_path(&self) -> PathBuf {
        PathBuf::from(&self.secret_key_file)
    }
}

/// The dotted key (`section.key`) written at byte offset `at` of a TOML text.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    let section = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(table_name);
    if line.starts_with('[') {
        return Some(table_name(line));
    }
    let key = line.split('=').next()?.trim().trim_matches('"');
    if key.is_empty() {
        return section;
    }
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

/// The line (1-based) where the file sets `key` (`section.name` or a top-level `name`).
/// `access.rules[2].policy` is the second `[[access.rules]]` table's `policy`.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
    // `base[n]`: the n-th (1-based) `[[base]]` table.
    let (base, nth) = match section.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
        Some((base, n)) => (base, n.parse::<usize>().ok()?),
        None => (section, 0),
    };
    let (mut current, mut seen) = (String::new(), 0);
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            current = table_name(l);
            if current == base {
                seen += 1;
            }
        } else if current == base
            && (nth == 0 || seen == nth)
            && l.strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// The name in a table header line, `[name]` or `[[name]]`, without a comment after it.
fn table_name(line: &str) -> String {
    let inner = line.trim_start_matches('[');
    inner[..inner.find(']').unwrap_or(inner.len())]
        .trim()
        .to_string()
}

fn parse_http_url(key: &str, v: &str) -> Result<url::Url, ConfigError> {
    let u =
        url::Url::parse(v).map_err(|e| err(key, format!("`{v}` is not an absolute URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(err(
            key,
            format!("`{v}` must be an http:// or https:// URL"),
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(err(key, "must not contain user:password@"));
    }
    Ok(u)
}

/// A DNS host name in ASCII (IDN must be given in punycode).
pub fn is_hostname(h: &str) -> bool {
    is_dns_name(h, false)
}

/// Labels of letters, digits and inner `-` (and `_` when `underscore`, as internal
/// service names have), at most 63 bytes each and 253 in all.
pub fn is_dns_name(h: &str, underscore: bool) -> bool {
    // One pass over the bytes, one table lookup each (every /verify checks the forwarded
    // host): labels of 1–63 letters, digits and hyphens (and `_` when allowed), no
    // hyphen at either end.
    let b = h.as_bytes();
    if b.is_empty() || b.len() > 253 {
        return false;
    }
    let (mut len, mut prev) = (0usize, DOT);
    for &c in b {
        let class = DNS_CLASS[c as usize];
        match class {
            LETTER | HYPHEN | UNDERSCORE => {
                if len == 63
                    || (class == HYPHEN && len == 0)
                    || (class == UNDERSCORE && !underscore)
                {
                    return false;
                }
                len += 1;
            }
            DOT if len > 0 && prev != HYPHEN => len = 0,
            _ => return false,
        }
        prev = class;
    }
    len > 0 && prev != HYPHEN
}

const OTHER: u8 = 0;
const LETTER: u8 = 1; // letters and digits
const HYPHEN: u8 = 2;
const UNDERSCORE: u8 = 3;
const DOT: u8 = 4;

static DNS_CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphanumeric() {
            LETTER
        } else if c == b'-' {
            HYPHEN
        } else if c == b'_' {
            UNDERSCORE
        } else if c == b'.' {
            DOT
        } else {
            OTHER
        };
        i += 1;
    }
    t
};

/// `host` equals `domain` or is a subdomain of it (both lowercase ASCII).
pub fn host_within(host: &str, domain: &str) -> bool {
    host == domain
        || (host.len() > domain.len()
            && host.ends_with(domain)
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The one-pass `is_dns_name` answers as the label-by-label definition it replaced.
    #[test]
    fn dns_names_match_the_definition() {
        fn reference(h: &str, underscore: bool) -> bool {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_')
                        })
                })
        }
        let long = "a".repeat(63);
        let parts = ["a", "Z9", "-", ".", "_", "é", " ", long.as_str(), "x"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = 0;
        for _ in 0..50_000 {
            let n = next() % 12;
            let h: String = (0..n)
                .map(|_| parts[(next() % parts.len() as u64) as usize])
                .collect();
            for u in [false, true] {
                assert_eq!(is_dns_name(&h, u), reference(&h, u), "{h:?} {u}");
                valid += is_dns_name(&h, u) as u32;
            }
        }
        assert!(valid > 1000, "the inputs reach valid names ({valid})");
        let max = [long.as_str(); 4].join(".");
        assert_eq!(max.len(), 255);
        assert!(!is_dns_name(&max, false) && !reference(&max, false));
        assert!(is_dns_name(&max[2..], false) && reference(&max[2..], false));
    }

    /// No environment variables (for other modules' tests too).
    pub(crate) struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn debug_output_redacts_the_smtp_password() {
        let mut c = Config::from_toml("", &NoEnv).unwrap();
        c.derived.smtp_password = Some("hunter2-secret".into());
        let d = format!("{c:?}");
        assert!(
            !d.contains("hunter2-secret") && d.contains("(redacted)"),
            "{d}"
        );
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../authbase.toml");
        let c = Config::from_toml(text, &NoEnv).expect("authbase.toml must validate");
        assert_eq!(c.cookie.name, "session_id");
        assert_eq!(c.email.transport, "log");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[session]\nlifetime = \"3x\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "session.lifetime", "{e}");
        let e = Config::from_toml("bogus = 1\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "bogus", "{e}");
        let e = Config::from_toml("[email]\nsmtp_port = \"x\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "email.smtp_port", "{e}");
        let e = Config::from_toml("[cookie]\nnmae = \"x\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "cookie.nmae", "{e}");
        let e = Config::from_toml("public_url = \"ftp://x\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "public_url");
        let e = Config::from_toml("[cookie]\ndomain = \"other.org\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "cookie.domain");
        let e = Config::from_toml("[email]\ntransport = \"pigeon\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "email.transport");
        let t = "public_url = \"https://auth.example.co.uk\"\n[cookie]\ndomain = \"co.uk\"\n";
        assert_eq!(
            Config::from_toml(t, &NoEnv).unwrap_err().key,
            "cookie.domain"
        );
        let t = "public_url = \"https://x.github.io\"\n[cookie]\ndomain = \"github.io\"\n";
        assert_eq!(
            Config::from_toml(t, &NoEnv).unwrap_err().key,
            "cookie.domain"
        );
        let t =
            "public_url = \"https://auth.example.co.uk\"\n[cookie]\ndomain = \"example.co.uk\"\n";
        assert!(Config::from_toml(t, &NoEnv).is_ok());
        let e =
            Config::from_toml("public_url = \"https://x.example.com/auth\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "public_url");
        // Every key has a default: an empty file is a working configuration.
        assert!(Config::from_toml("", &NoEnv).is_ok());
    }

    /// A misspelt key anywhere in the shipped file is named as `section.key`, also under
    /// a table header that has a comment on its line (`[assertion]   # …`).
    #[test]
    fn a_misspelt_key_in_the_shipped_file_is_named_with_its_section() {
        let text = include_str!("../authbase.toml");
        let mut section = String::new();
        let mut checked = 0;
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.starts_with('[') {
                section = table_name(l);
                continue;
            }
            let Some((key, _)) = l.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if l.starts_with('#') || key.contains(' ') {
                continue;
            }
            let mut lines: Vec<&str> = text.lines().collect();
            let typo = line.replacen(key, &format!("{key}x"), 1);
            lines[i] = &typo;
            let e = Config::from_toml(&lines.join("\n"), &NoEnv).unwrap_err();
            let want = if section.is_empty() {
                format!("{key}x")
            } else {
                format!("{section}.{key}x")
            };
            assert_eq!(e.key, want, "line {}: {e}", i + 1);
            assert!(e.message.contains(&format!("(line {})", i + 1)), "{e}");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} keys in the shipped file");
        assert_eq!(table_name("[assertion]   # a comment [x]"), "assertion");
        assert_eq!(table_name("[[rule]] # x"), "rule");
    }

    /// A value out of range is reported with the line that sets it (not when an
    /// environment variable set it: that is named instead); a number without a unit
    /// says so, in the file and in a variable alike.
    #[test]
    fn range_errors_give_the_line_and_bare_numbers_need_a_unit() {
        let t = "webapp_name = \"x\"\n\n[assertion]  # signed\nenabled = true\nttl = \"20m\"\n";
        let e = Config::from_toml(t, &NoEnv).unwrap_err();
        assert_eq!(e.key, "assertion.ttl");
        assert!(e.message.ends_with("(line 5)"), "{e}");
        for t in ["[assertion]\nttl = \"5\"\n", "[assertion]\nttl = 5\n"] {
            let e = Config::from_toml(t, &NoEnv).unwrap_err();
            assert!(e.message.contains("needs a unit (e.g. \"5s\")"), "{t}: {e}");
        }
        assert_eq!(line_of("a = 1\n[s]\nab = 2\na = 3\n", "s.a"), Some(4));
        assert_eq!(line_of("a = 1\n[s]\na = 3\n", "a"), Some(1));
        assert_eq!(line_of("[s]\na = 3\n", "t.a"), None);
        let rules = "[[access.rules]]\nhost = \"a.b\"\n\n[[access.rules]]\nhost = \"c.d\"\npolicy = \"Deny\"\n";
        assert_eq!(line_of(rules, "access.rules[2].policy"), Some(6));
        assert_eq!(line_of(rules, "access.rules[1].host"), Some(2));
        let e = Config::from_toml(rules, &NoEnv).unwrap_err();
        assert_eq!(e.key, "access.rules[2].policy");
        assert!(e.message.ends_with("(line 6)"), "{e}");
    }

    #[test]
    fn workers_are_bounded_and_zero_means_half_the_cores() {
        let e = Config::from_toml("[server]\nworkers = 1025\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "server.workers", "{e}");
        assert!(e.message.contains("0 (automatic)"), "{e}");
        let c = Config::from_toml("[server]\nworkers = 1024\n", &NoEnv).unwrap();
        assert_eq!(c.workers(), 1024);
        let c = Config::from_toml("", &NoEnv).unwrap();
        assert_eq!(c.server.workers, 0);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.workers(), cores.div_ceil(2));
        assert!(default_workers() >= 1);
    }

    #[test]
    fn max_connections_is_bounded() {
        for bad in ["0", "1000001"] {
            let e = Config::from_toml(&format!("[server]\nmax_connections = {bad}\n"), &NoEnv)
                .unwrap_err();
            assert_eq!(e.key, "server.max_connections", "{bad}: {e}");
        }
        assert!(Config::from_toml("[server]\nmax_connections = 1000000\n", &NoEnv).is_ok());
    }

    /// `__Secure-` and `__Host-` names need what browsers require of them.
    #[test]
    fn cookie_name_prefixes_need_secure_and_host_no_domain() {
        let base = "public_url = \"https://auth.example.com\"\nredirect_url = \"https://app.example.com/\"\n";
        for (cookie, bad) in [
            (
                "name = \"__Host-sid\"\nsecure = false",
                Some("cookie.secure = true"),
            ),
            (
                "name = \"__secure-sid\"\nsecure = false",
                Some("cookie.secure = true"),
            ),
            (
                "name = \"__Host-sid\"\nsecure = true\ndomain = \"example.com\"",
                Some("cannot have a cookie.domain"),
            ),
            ("name = \"__Host-sid\"\nsecure = true", None),
            (
                "name = \"__Secure-sid\"\nsecure = true\ndomain = \"example.com\"",
                None,
            ),
            ("name = \"Host-sid\"\nsecure = false", None),
        ] {
            let r = Config::from_toml(&format!("{base}[cookie]\n{cookie}\n"), &NoEnv);
            match bad {
                Some(want) => {
                    let e = r.unwrap_err().to_string();
                    assert!(
                        e.contains("cookie.name") && e.contains(want),
                        "{cookie}: {e}"
                    );
                }
                None => assert!(r.is_ok(), "{cookie}: {:?}", r.err()),
            }
        }
    }

    #[test]
    fn assertion_keys_are_checked() {
        let c = Config::from_toml("", &NoEnv).unwrap();
        assert!(c.assertion.enabled);
        assert_eq!(c.assertion.ttl.secs(), 120);
        for bad in ["29s", "11m", "0"] {
            let e =
                Config::from_toml(&format!("[assertion]\nttl = \"{bad}\"\n"), &NoEnv).unwrap_err();
            assert_eq!(e.key, "assertion.ttl", "{bad}: {e}");
        }
        for good in ["30s", "10m"] {
            assert!(Config::from_toml(&format!("[assertion]\nttl = \"{good}\"\n"), &NoEnv).is_ok());
        }
        let e = Config::from_toml("[assertion]\nenabled = \"yes\"\n", &NoEnv).unwrap_err();
        assert_eq!(e.key, "assertion.enabled", "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("30d").unwrap().secs(), 30 * 86400);
        assert_eq!(Dur::parse("10m").unwrap().secs(), 600);
        assert_eq!(Dur::parse("0").unwrap().secs(), 0);
        assert!(Dur::parse("10").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert!(Dur::parse("99999999999999d").is_err());
    }

    #[test]
    fn durations_and_rates_print_as_written() {
        for s in ["30d", "12h", "90m", "10m", "45s", "0", "1h"] {
            assert_eq!(Dur::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Dur::parse("60m").unwrap().to_string(), "1h");
        assert_eq!(Dur::parse("3601s").unwrap().to_string(), "3601s");
        for s in ["5/1h", "30/10m", "off", "1000/1h", "7/45s"] {
            assert_eq!(Rate::parse(s).unwrap().to_string(), s);
        }
        let t = toml::to_string(&AuditConfig::default()).unwrap();
        assert_eq!(t.trim(), "retention = \"90d\"");
    }

    #[test]
    fn host_within_needs_a_dot_boundary() {
        assert!(host_within("a.example.com", "example.com"));
        assert!(host_within("example.com", "example.com"));
        assert!(!host_within("badexample.com", "example.com"));
    }
}
