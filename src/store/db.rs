//! One SQL API over both backends, so the store is written once.
//!
//! The store's queries are plain SQL in the subset SQLite and PostgreSQL share (`?N`
//! parameters, `RETURNING`, `ON CONFLICT`, `COUNT(*) FILTER`, `string_agg`, and a
//! case-insensitive collation named `nocase` in both), run through [`Db`] on tokio's
//! blocking pool. SQLite goes through rusqlite; PostgreSQL through rust-postgres' blocking
//! client, with parameters rewritten to `$N`, typed from the Rust values bound to them, and
//! statements kept prepared per connection.
//!
//! Transactions are serialized like SQLite's: a write transaction on PostgreSQL first takes
//! a transaction-scoped advisory lock that every writer of every replica takes, so the
//! store's read-then-write logic (limits, single-use links, the revocation log's order)
//! holds across replicas exactly as it does on one SQLite file. Reads never wait for it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postgres::types::{to_sql_checked, IsNull, ToSql as PgToSql, Type};
use r2d2::PooledConnection;
use r2d2_sqlite::SqliteConnectionManager;

use super::{Result, StoreError};

/// The advisory lock every PostgreSQL write transaction holds ("authbase" in ASCII).
pub const WRITE_LOCK: i64 = 0x6175_7468_6261_7365;

/// The `NOTIFY` channel of the revocation log.
pub const REVOCATIONS_CHANNEL: &str = "authbase_revocations";

/// Is this `database` setting a PostgreSQL URL (rather than a SQLite file path)?
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// The `database` setting as it may be shown (logs, errors, CLI output): a URL's
/// password replaced by `***`.
pub fn shown(database: &str) -> String {
    if !is_postgres(database) {
        return database.to_string();
    }
    match url::Url::parse(database) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "(a PostgreSQL URL that does not parse)".into(),
    }
}

/// The type of a parameter, for a NULL and for PostgreSQL's statement preparation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ty {
    Int,
    Text,
    Blob,
}

/// A value bound to a statement parameter.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    Null(Ty),
}

impl Arg<'_> {
    fn ty(&self) -> Ty {
        match self {
            Arg::Int(_) => Ty::Int,
            Arg::Text(_) => Ty::Text,
            Arg::Blob(_) => Ty::Blob,
            Arg::Null(t) => *t,
        }
    }
}

/// A column read as it is, and bound again as it was (`copy`).
#[derive(Debug, Clone)]
pub enum Value {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    /// Bound as a NULL of text type; give a typed `Arg::Null` where that matters.
    Null,
}

/// Something that binds as a parameter. `TY` is its type when it is absent (`None`).
pub trait ToArg {
    const TY: Ty;
    fn to_arg(&self) -> Arg<'_>;
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            const TY: Ty = Ty::Int;
            fn to_arg(&self) -> Arg<'_> {
                Arg::Int(*self as i64)
            }
        }
    )*};
}
int_arg!(i64, i32, u32, u16, u8);

impl ToArg for bool {
    const TY: Ty = Ty::Int;
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}
impl ToArg for str {
    const TY: Ty = Ty::Text;
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}
impl ToArg for String {
    const TY: Ty = Ty::Text;
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}
impl ToArg for [u8] {
    const TY: Ty = Ty::Blob;
    fn to_arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}
impl ToArg for Vec<u8> {
    const TY: Ty = Ty::Blob;
    fn to_arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}
impl<const N: usize> ToArg for [u8; N] {
    const TY: Ty = Ty::Blob;
    fn to_arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}
impl ToArg for Value {
    // Never absent; the type is only used for `Option<Value>`, which nothing binds.
    const TY: Ty = Ty::Text;
    fn to_arg(&self) -> Arg<'_> {
        match self {
            Value::Int(i) => Arg::Int(*i),
            Value::Text(s) => Arg::Text(s),
            Value::Blob(b) => Arg::Blob(b),
            Value::Null => Arg::Null(Ty::Text),
        }
    }
}
impl<T: ToArg> ToArg for Option<T> {
    const TY: Ty = T::TY;
    fn to_arg(&self) -> Arg<'_> {
        match self {
            Some(v) => v.to_arg(),
            None => Arg::Null(T::TY),
        }
    }
}
impl<T: ToArg + ?Sized> ToArg for &T {
    const TY: Ty = T::TY;
    fn to_arg(&self) -> Arg<'_> {
        (**self).to_arg()
    }
}

/// Statement parameters: `args![a, &b, c]`.
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$($crate::store::db::ToArg::to_arg(&$e)),*][..]
    };
}
pub(crate) use args;

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput::Borrowed, ValueRef};
        Ok(Borrowed(match *self {
            Arg::Int(i) => ValueRef::Integer(i),
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
            Arg::Null(_) => ValueRef::Null,
        }))
    }
}

impl PgToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Arg::Null(_) => Ok(IsNull::Yes),
            Arg::Int(i) => i.to_sql(ty, out),
            Arg::Text(s) => s.to_sql(ty, out),
            Arg::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn pg_type(t: Ty) -> Type {
    match t {
        Ty::Int => Type::INT8,
        Ty::Text => Type::TEXT,
        Ty::Blob => Type::BYTEA,
    }
}

/// `?N` and `?` parameters as PostgreSQL's `$N` (a bare `?` is one more than the largest
/// number so far, as in SQLite). Quoted strings and identifiers are left alone.
pub fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut quote, mut max) = (None::<char>, 0u32);
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match (quote, ch) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                out.push(ch);
            }
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = digits.parse().unwrap_or(max + 1);
                max = max.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// One column of a result row, as both backends give it.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// A Rust value read from a column.
pub trait FromCell: Sized {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String>;
}

impl FromCell for i64 {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        match c {
            Cell::Int(i) => Ok(i),
            other => Err(format!("expected an integer, got {other:?}")),
        }
    }
}
impl FromCell for u32 {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        u32::try_from(i64::from_cell(c)?).map_err(|e| e.to_string())
    }
}
impl FromCell for bool {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        Ok(i64::from_cell(c)? != 0)
    }
}
impl FromCell for String {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        match c {
            Cell::Text(s) => Ok(s.to_string()),
            other => Err(format!("expected text, got {other:?}")),
        }
    }
}
impl FromCell for Vec<u8> {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        match c {
            Cell::Blob(b) => Ok(b.to_vec()),
            other => Err(format!("expected bytes, got {other:?}")),
        }
    }
}
impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        match c {
            Cell::Null => Ok(None),
            c => T::from_cell(c).map(Some),
        }
    }
}

/// A result row.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

impl FromCell for Value {
    fn from_cell(c: Cell<'_>) -> std::result::Result<Self, String> {
        Ok(match c {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::Int(i),
            Cell::Text(t) => Value::Text(t.to_string()),
            Cell::Blob(b) => Value::Blob(b.to_vec()),
        })
    }
}

impl Row<'_> {
    pub fn get<T: FromCell>(&self, i: usize) -> Result<T> {
        let bad = |e: String| StoreError::Db(format!("column {i}: {e}"));
        match self {
            Row::Lite(r) => {
                use rusqlite::types::ValueRef;
                let c = match r.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Text(t) => {
                        Cell::Text(std::str::from_utf8(t).map_err(|e| bad(e.to_string()))?)
                    }
                    ValueRef::Blob(b) => Cell::Blob(b),
                    ValueRef::Real(_) => return Err(bad("a real number".into())),
                };
                T::from_cell(c).map_err(bad)
            }
            Row::Pg(r) => {
                let ty = r
                    .columns()
                    .get(i)
                    .ok_or_else(|| bad("no such column".into()))?
                    .type_()
                    .clone();
                let pg = |e: postgres::Error| bad(e.to_string());
                let c = if ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map_err(pg)?.map(Cell::Int)
                } else if ty == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)
                        .map_err(pg)?
                        .map(|v| Cell::Int(v.into()))
                } else if ty == Type::INT2 {
                    r.try_get::<_, Option<i16>>(i)
                        .map_err(pg)?
                        .map(|v| Cell::Int(v.into()))
                } else if ty == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i)
                        .map_err(pg)?
                        .map(|v| Cell::Int(v.into()))
                } else if ty == Type::BYTEA {
                    r.try_get::<_, Option<&[u8]>>(i)
                        .map_err(pg)?
                        .map(Cell::Blob)
                } else {
                    r.try_get::<_, Option<&str>>(i).map_err(pg)?.map(Cell::Text)
                };
                T::from_cell(c.unwrap_or(Cell::Null)).map_err(bad)
            }
        }
    }
}

/// A PostgreSQL connection with the statements prepared on it.
pub struct PgConn {
    client: postgres::Client,
    prepared: HashMap<(String, Vec<Ty>), postgres::Statement>,
    /// Between BEGIN and a successful COMMIT or ROLLBACK.
    in_tx: bool,
}

/// How the pools open PostgreSQL connections: TLS by rustls when the URL asks for it
/// (`sslmode=prefer`, the default, `require`, libpq's `verify-*`), the certificate
/// always verified, against the Mozilla roots or the URL's `sslrootcert`.
#[derive(Clone)]
pub struct PgManager {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// How long a writer waits for the write lock (and any statement for a row lock)
    /// before the call fails as busy, like SQLite's busy timeout.
    lock_timeout: Duration,
}

impl PgManager {
    pub fn new(url: &str, lock_timeout: Duration) -> Result<PgManager> {
        let (url, root_file) = libpq_tls(url)?;
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Db(format!("database URL: {e}")))?;
        // A server or network that goes silent must end in an error, not a call that
        // never returns (the revocation follower would wait on it for ever): bounds
        // unless the URL sets its own.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(15));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(15));
        }
        let roots = match root_file {
            Some(path) => {
                use rustls_pki_types::pem::PemObject;
                let pem = std::fs::read(&path).map_err(|e| {
                    StoreError::Db(format!("database URL: sslrootcert {path}: {e}"))
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        StoreError::Db(format!("database URL: sslrootcert {path}: {e}"))
                    })?;
                    roots.add(cert).map_err(|e| {
                        StoreError::Db(format!("database URL: sslrootcert {path}: {e}"))
                    })?;
                }
                if roots.is_empty() {
                    return Err(StoreError::Db(format!(
                        "database URL: sslrootcert {path} holds no certificate"
                    )));
                }
                roots
            }
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Db(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(PgManager {
            config,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            lock_timeout,
        })
    }
}

/// Does `url` parse as a PostgreSQL URL (with the libpq TLS parameters below)?
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    let (url, _) = libpq_tls(url).map_err(|e| e.to_string())?;
    url.parse::<postgres::Config>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The URL's TLS parameters as libpq writes them, for rust-postgres, which knows only
/// `sslmode=disable|prefer|require`: `sslrootcert=FILE` (PEM certificates to trust
/// instead of the Mozilla roots) is taken out and returned; `sslmode=verify-ca` and
/// `verify-full` become `require`. The server's certificate is always verified, its
/// name included, whatever the mode (libpq's `require` alone would not verify it).
fn libpq_tls(url: &str) -> Result<(String, Option<String>)> {
    if !url.contains("sslrootcert=") && !url.contains("sslmode=verify-") {
        return Ok((url.to_string(), None));
    }
    let mut u = url::Url::parse(url).map_err(|e| StoreError::Db(format!("database URL: {e}")))?;
    let mut root = None;
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter_map(|(k, v)| match (&*k, &*v) {
            ("sslrootcert", _) => {
                root = Some(v.into_owned());
                None
            }
            ("sslmode", "verify-ca" | "verify-full") => Some((k.into_owned(), "require".into())),
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    u.set_query(None);
    if !pairs.is_empty() {
        u.query_pairs_mut().extend_pairs(pairs);
    }
    Ok((u.to_string(), root))
}

/// A failed connection attempt, with its causes (e.g. "error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer"): what the pool reports and logs.
#[derive(Debug)]
pub struct ConnectError(String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

impl From<postgres::Error> for ConnectError {
    fn from(e: postgres::Error) -> ConnectError {
        let mut text = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let more = c.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            cause = c.source();
        }
        ConnectError(text)
    }
}

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = ConnectError;

    fn connect(&self) -> std::result::Result<PgConn, ConnectError> {
        let mut client = self.config.connect(self.tls.clone())?;
        client.batch_execute(&format!(
            "SET lock_timeout = {}; SET statement_timeout = {}",
            self.lock_timeout.as_millis(),
            STATEMENT_TIMEOUT.as_millis()
        ))?;
        Ok(PgConn {
            client,
            prepared: HashMap::new(),
            in_tx: false,
        })
    }

    fn is_valid(&self, c: &mut PgConn) -> std::result::Result<(), ConnectError> {
        Ok(c.client.batch_execute("")?)
    }

    /// Closed, or still inside a transaction (its rollback failed): not handed out again.
    fn has_broken(&self, c: &mut PgConn) -> bool {
        c.client.is_closed() || c.in_tx
    }
}

impl PgConn {
    fn statement(&mut self, sql: &str, args: &[Arg]) -> Result<postgres::Statement> {
        let types: Vec<Ty> = args.iter().map(Arg::ty).collect();
        let key = (sql.to_string(), types);
        if let Some(s) = self.prepared.get(&key) {
            return Ok(s.clone());
        }
        let pg_types: Vec<Type> = key.1.iter().map(|t| pg_type(*t)).collect();
        let st = self.client.prepare_typed(&pg_sql(sql), &pg_types)?;
        // Statements built at run time (filters with any number of ids) could grow this
        // without end; the store's own fixed statements are about a hundred.
        if self.prepared.len() >= PREPARED_MAX {
            self.prepared.clear();
        }
        self.prepared.insert(key, st.clone());
        Ok(st)
    }

    fn query(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<postgres::Row>> {
        let st = self.statement(sql, args)?;
        let params: Vec<&(dyn PgToSql + Sync)> =
            args.iter().map(|a| a as &(dyn PgToSql + Sync)).collect();
        Ok(self.client.query(&st, &params)?)
    }

    fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<usize> {
        let st = self.statement(sql, args)?;
        let params: Vec<&(dyn PgToSql + Sync)> =
            args.iter().map(|a| a as &(dyn PgToSql + Sync)).collect();
        Ok(self.client.execute(&st, &params)? as usize)
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        if let Some(db) = e.as_db_error() {
            // The message only: PostgreSQL's DETAIL can quote the row (an address).
            let code = db.code();
            if [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::QUERY_CANCELED,
            ]
            .contains(code)
            {
                return StoreError::Busy;
            }
            let message = format!("{} ({})", db.message(), code.code());
            // Connection exceptions (08), an administrator's shutdown or a server that
            // is starting or stopping (57), too many connections (53): the database is
            // not there for us right now, which is a 503, not a bug.
            if ["08", "57", "53"].contains(&&code.code()[..2]) {
                return StoreError::Unavailable(message);
            }
            return StoreError::Db(message);
        }
        if e.is_closed() {
            return StoreError::Unavailable("the connection to PostgreSQL was lost".into());
        }
        // Connecting or talking to the server failed (refused, timed out, reset).
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if io || e.to_string().contains("timeout") {
            return StoreError::Unavailable(format!("PostgreSQL: {e}"));
        }
        // Anything else (a value that does not convert, a malformed statement) is ours.
        StoreError::Db(format!("PostgreSQL: {e}"))
    }
}

/// A PostgreSQL `LISTEN` on a connection and thread of its own, started on first use.
/// Reconnects after a lost connection (and then wakes its waiters once, since a
/// notification may have been missed meanwhile).
pub struct Listener {
    wake: Arc<tokio::sync::Notify>,
    /// Taken (once) when the thread starts.
    connect: std::sync::Mutex<Option<(PgManager, &'static str)>>,
}

impl Listener {
    pub fn new(manager: PgManager, channel: &'static str) -> Arc<Listener> {
        Arc::new(Listener {
            wake: Arc::new(tokio::sync::Notify::new()),
            connect: std::sync::Mutex::new(Some((manager, channel))),
        })
    }

    /// Resolves at the next notification (or reconnection).
    pub async fn notified(&self) {
        {
            let taken = self
                .connect
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some((manager, channel)) = taken {
                let wake = self.wake.clone();
                let spawned = std::thread::Builder::new()
                    .name("authbase-listen".into())
                    .spawn(move || listen(manager, channel, wake));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the PostgreSQL listener; polling only");
                }
            }
        }
        self.wake.notified().await
    }
}

fn listen(manager: PgManager, channel: &str, wake: Arc<tokio::sync::Notify>) {
    use r2d2::ManageConnection;
    let mut failing = false;
    loop {
        let conn = manager.connect().and_then(|mut c| {
            c.client.batch_execute(&format!("LISTEN {channel}"))?;
            Ok(c)
        });
        let mut c = match conn {
            Ok(c) => c,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot LISTEN for revocations; polling only until it works");
                    failing = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        failing = false;
        wake.notify_one();
        use postgres::fallible_iterator::FallibleIterator;
        let mut notes = c.client.notifications();
        let mut it = notes.blocking_iter();
        // Until the connection fails; then reconnect, after a pause.
        while let Ok(Some(_)) = it.next() {
            wake.notify_one();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Run blocking database work that may start on an async worker thread (start-up,
/// the admin CLI): rust-postgres' blocking client runs a small runtime of its own, which
/// must not be entered from one. Elsewhere the store is already on the blocking pool.
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    } else {
        f()
    }
}

/// A PostgreSQL pool, closed off the async workers when the last handle goes (closing a
/// blocking client shuts its runtime down, which an async worker must not do).
pub struct PgPool(Option<r2d2::Pool<PgManager>>);

impl PgPool {
    pub fn new(p: r2d2::Pool<PgManager>) -> Arc<PgPool> {
        Arc::new(PgPool(Some(p)))
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            blocking(move || drop(p));
        }
    }
}

/// A connection pool of either backend.
#[derive(Clone)]
pub enum Pool {
    Lite(r2d2::Pool<SqliteConnectionManager>),
    Pg(Arc<PgPool>),
}

impl Pool {
    pub fn get(&self) -> Result<Db> {
        let conn = match self {
            Pool::Lite(p) => {
                let c = p.get()?;
                // A transaction left open by a failed rollback ends here, not in the
                // next caller's BEGIN.
                if !c.is_autocommit() {
                    c.execute_batch("ROLLBACK")?;
                }
                Conn::Lite(c)
            }
            Pool::Pg(p) => Conn::Pg(RefCell::new(
                p.0.as_ref().expect("open until dropped").get()?,
            )),
        };
        Ok(Db {
            conn,
            depth: std::cell::Cell::new(0),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Pool::Pg(_))
    }
}

// Short-lived, one per call on the blocking pool: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Lite(PooledConnection<SqliteConnectionManager>),
    Pg(RefCell<PooledConnection<PgManager>>),
}

/// A pooled connection of either backend. Queries take `&self`, so helpers take `&Db`
/// whether they run inside a transaction or not.
pub struct Db {
    conn: Conn,
    /// Open transactions: 0 none, 1 a transaction, more: savepoints inside it.
    depth: std::cell::Cell<u32>,
}

impl Db {
    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Pg(_))
    }

    /// The SQLite connection, for what only SQLite has (backup, pragmas).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.conn {
            Conn::Lite(c) => Some(c),
            Conn::Pg(_) => None,
        }
    }

    /// Run a statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, args: &[Arg]) -> Result<usize> {
        match &self.conn {
            Conn::Lite(c) => Ok(c.prepare_cached(sql)?.execute(args_lite(args))?),
            Conn::Pg(c) => c.borrow_mut().execute(sql, args),
        }
    }

    /// Every row, each mapped by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        args: &[Arg],
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        match &self.conn {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(args_lite(args))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Lite(r))?);
                }
                Ok(out)
            }
            Conn::Pg(c) => {
                let rows = c.borrow_mut().query(sql, args)?;
                rows.iter().map(|r| f(&Row::Pg(r))).collect()
            }
        }
    }

    /// The first row, if any, mapped by `f`.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        args: &[Arg],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        match &self.conn {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(args_lite(args))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&Row::Lite(r))?)),
                    None => Ok(None),
                }
            }
            Conn::Pg(c) => {
                let rows = c.borrow_mut().query(sql, args)?;
                rows.first().map(|r| f(&Row::Pg(r))).transpose()
            }
        }
    }

    /// The first row, mapped by `f`; an error when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        args: &[Arg],
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, args, f)?
            .ok_or_else(|| StoreError::Db("query returned no rows".into()))
    }

    /// One column of the first row.
    pub fn query_one<T: FromCell>(&self, sql: &str, args: &[Arg]) -> Result<T> {
        self.query_row(sql, args, |r| r.get(0))
    }

    /// Statements without parameters, separated by semicolons (migrations).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.conn {
            Conn::Lite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(c) => Ok(c.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// A write transaction: rolled back when dropped without `commit`. Inside another
    /// one it is a savepoint, so a nested `commit` keeps its changes for the outer one
    /// and a nested drop undoes only its own.
    pub fn transaction(&self) -> Result<Tx<'_>> {
        let depth = self.depth.get();
        let begin = match (&self.conn, depth) {
            (_, d) if d > 0 => format!("SAVEPOINT sp{d}"),
            (Conn::Lite(_), _) => "BEGIN IMMEDIATE".into(),
            (Conn::Pg(_), _) => format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"),
        };
        if depth == 0 {
            self.set_in_tx(true);
            if let Err(e) = self.execute_batch(&begin) {
                // PostgreSQL: BEGIN went through and the lock did not.
                if self.execute_batch("ROLLBACK").is_ok() {
                    self.set_in_tx(false);
                }
                return Err(e);
            }
        } else {
            self.execute_batch(&begin)?;
        }
        self.depth.set(depth + 1);
        Ok(Tx {
            db: self,
            depth,
            done: false,
        })
    }
}

impl Db {
    /// PostgreSQL: mark the connection as inside a transaction (see `has_broken`).
    fn set_in_tx(&self, on: bool) {
        if let Conn::Pg(c) = &self.conn {
            c.borrow_mut().in_tx = on;
        }
    }
}

fn args_lite<'a>(args: &'a [Arg<'a>]) -> rusqlite::ParamsFromIter<std::slice::Iter<'a, Arg<'a>>> {
    rusqlite::params_from_iter(args.iter())
}

/// An open transaction (or savepoint); see [`Db::transaction`].
pub struct Tx<'a> {
    db: &'a Db,
    depth: u32,
    done: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        let sql = if self.depth > 0 {
            format!("RELEASE sp{}", self.depth)
        } else {
            "COMMIT".into()
        };
        let r = self.db.execute_batch(&sql);
        self.db.depth.set(self.depth);
        if self.depth == 0 {
            let ended = r.is_ok() || self.db.execute_batch("ROLLBACK").is_ok();
            if ended {
                self.db.set_in_tx(false);
            }
        }
        r
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let sql = if self.depth > 0 {
            format!("ROLLBACK TO sp{0}; RELEASE sp{0}", self.depth)
        } else {
            "ROLLBACK".into()
        };
        // A failed rollback leaves a broken connection; PostgreSQL's is then dropped by
        // the pool (`has_broken`), SQLite's rolls back when it is next used or closed.
        if self.db.execute_batch(&sql).is_ok() && self.depth == 0 {
            self.db.set_in_tx(false);
        }
        self.db.depth.set(self.depth);
    }
}

/// The longest a PostgreSQL statement may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Statements kept prepared per PostgreSQL connection, at most.
const PREPARED_MAX: usize = 512;

/// How long a pool waits for a free connection.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_translated() {
        let (u, root) =
            libpq_tls("postgres://a:p@db:5432/x?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=ab")
                .unwrap();
        assert_eq!(
            u,
            "postgres://a:p@db:5432/x?sslmode=require&application_name=ab"
        );
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let plain = "postgres://a@db/x?sslmode=require";
        assert_eq!(libpq_tls(plain).unwrap(), (plain.to_string(), None));
        assert!(PgManager::new(
            "postgres://a@db/x?sslrootcert=/nonexistent/ca.pem",
            Duration::from_secs(1)
        )
        .is_err_and(|e| e.to_string().contains("sslrootcert /nonexistent/ca.pem")));
    }

    #[test]
    fn parameters_are_numbered_for_postgres() {
        assert_eq!(
            pg_sql("SELECT ?1, ?2 WHERE a = ?1 AND b = '?3' AND \"c?\" = ?"),
            "SELECT $1, $2 WHERE a = $1 AND b = '?3' AND \"c?\" = $3"
        );
        assert_eq!(pg_sql("x = ? AND y = ?"), "x = $1 AND y = $2");
        assert_eq!(pg_sql("x = ?10"), "x = $10");
    }
}
