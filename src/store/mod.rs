//! The store: every read and write of persistent state, behind one narrow API.
//!
//! SQLite (WAL mode, a busy timeout) or PostgreSQL, each through r2d2 pools and the one
//! SQL layer of `db`, migrated on open. Every call runs on tokio's blocking pool
//! (`spawn_blocking`, pool `get()` included) so the async executor never waits on disk
//! or network. Only hashes of tokens and link secrets are stored.

mod copy;
pub mod db;
mod keys;
mod migrations;
mod outbox;
mod servers;
#[cfg(test)]
pub(crate) mod testing;
mod users;

/// For other modules' tests: a sign-in request for an address, as the handler makes it.
#[cfg(test)]
pub(crate) use users::tests::request as test_sign_in_request;

pub use copy::Copied;
pub use keys::StoredKey;
pub use outbox::{
    ApiMailRefusal, Lane, MailFilter, MailOutcome, MailRow, NewApiMail, OutboxItem, Queued,
};
pub use servers::{HEARTBEAT, LIVE_FOR};
pub use users::{AuditFilter, AuditRow, UserChange, UserRow};

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

use db::{args, Db, Pool};

use crate::secrets::{self, Hash, ServerKey};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database busy")]
    Busy,
    #[error("database error: {0}")]
    Db(String),
    /// The database cannot be used right now (file gone, revocations unreadable).
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            _ => StoreError::Db(e.to_string()),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    /// No connection within the pool's wait: the database cannot be reached (a SQLite
    /// file gone, PostgreSQL down), or every connection is busy.
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(format!("no database connection: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch (shared rate-limit windows).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch; all stored times use it.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// One writer at a time inside this process. SQLite allows one writer anyway, and
    /// writers that collide inside SQLite wait in its busy handler, which sleeps for
    /// milliseconds; queueing on a mutex instead costs microseconds.
    writer: Arc<Mutex<()>>,
    sign_ins: std::sync::mpsc::Sender<SignInJob>,
    /// The SQLite database file, and its `(device, inode)` when opened (see
    /// `check_file`); `None` on PostgreSQL.
    file: Option<(Arc<Path>, Option<FileId>)>,
    /// A pool of one connection that `revocations_since` reads the log on.
    follower: Pool,
    /// PostgreSQL: the revocation log's notifications (see `revocation_posted`).
    listener: Option<Arc<db::Listener>>,
    /// How long a write waits for its turn in this process, and then again for the
    /// database's write lock, before it fails as busy.
    busy_timeout: Duration,
    /// SQLite: the checkpointer thread (see `checkpointer`) stops when the last clone of
    /// this is dropped.
    _checkpoints: Option<std::sync::mpsc::Sender<()>>,
}

/// What a revocation record asks running servers to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Evict the cached sessions of this user (`None`: of everyone).
    Sessions(Option<i64>),
    /// Evict the session with this token hash: signed out on another server, or revoked
    /// by `sessions revoke --id`, which waits for the acknowledgement (`awaited`).
    Session { hash: Hash, awaited: bool },
    /// Reload the signing keys.
    Keys,
}

/// A session found by its token hash.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub session_id: i64,
    pub user_id: i64,
    pub email: String,
    pub confirmed: bool,
    pub last_seen_at: i64,
    pub expires_at: i64,
    /// Added by an admin: may sign in whatever the global policy says.
    pub invited: bool,
    /// Groups given with the CLI, sorted (config groups are added by the caller).
    pub groups: Vec<String>,
}

/// A session as the admin CLI lists it (no secret in it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionRow {
    pub id: i64,
    pub email: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
}

/// A sign-in request, as shown on the confirmation page and in the email.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub id: i64,
    pub email: String,
    pub salt: Vec<u8>,
    pub link_hash: Vec<u8>,
    pub state: String,
    pub match_number: String,
    pub return_to: Option<String>,
    pub ip: String,
    pub user_agent: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// A refused sign-in (no mail was sent): never confirmable.
    pub silent: bool,
}

impl RequestInfo {
    pub fn live(&self, now: i64) -> bool {
        self.state == "pending" && self.expires_at > now
    }
}

/// What the caller of `start_sign_in` gets.
#[derive(Debug)]
pub struct Started {
    pub request_id: i64,
    pub outbox_id: i64,
}

/// Why `start_sign_in` sent no email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStarted {
    /// `[access]` does not admit the address and no admin added it.
    NotAllowed,
    /// An admin blocked the user.
    Blocked,
}

impl NotStarted {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStarted::NotAllowed => "not allowed",
            NotStarted::Blocked => "blocked",
        }
    }
}

/// A security event for the audit table.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: i64,
    pub event: &'static str,
    pub email: String,
    pub user_id: Option<i64>,
    pub ip: String,
    pub user_agent: String,
    pub detail: String,
}

/// Why a link, code or approval did not sign anyone in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such link / no pending request for this browser.
    Unknown,
    /// Past its `link_ttl`.
    Expired,
    /// Already used (or already approved).
    Used,
    /// Cancelled ("this wasn't me", or too many wrong codes or numbers).
    Cancelled,
    /// Wrong code or number; attempts remain.
    Wrong,
    /// Wrong code or number, and that was the last attempt: the request is cancelled.
    Locked,
    /// Too many wrong codes for this address recently, across its requests.
    Throttled,
}

/// Limits on wrong one-time codes (see `Store::submit_code`).
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    pub per_request: u32,
    pub per_address: u32,
    pub window: i64,
}

/// A confirmed session ready to be set as a cookie.
#[derive(Debug)]
pub struct SignedIn {
    pub token: String,
    pub return_to: Option<String>,
    pub user_id: i64,
    pub email: String,
}

/// What the waiting browser learns when it asks about its request.
#[derive(Debug)]
pub enum WaitState {
    Waiting {
        email: String,
        match_number: String,
        return_to: Option<String>,
    },
    SignedIn(SignedIn),
    Gone(Refusal),
}

pub struct NewSignIn {
    pub email: String,
    pub replaces: Option<Hash>,
    pub session_hash: Hash,
    pub salt: [u8; 16],
    pub link_hash: Hash,
    pub match_number: String,
    pub return_to: Option<String>,
    pub ip: String,
    pub user_agent: String,
    pub now: i64,
    pub link_ttl: i64,
    /// The global `[access]` policy admits the address (admin-added users pass anyway).
    pub allowed: bool,
}

/// `(device, inode)` of a file.
type FileId = (u64, u64);

/// `(device, inode)` of the file at `path`, or why it cannot be seen.
fn file_id(path: &Path) -> std::result::Result<Option<FileId>, std::io::Error> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(Some((m.dev(), m.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        Ok(None)
    }
}

/// How every connection but the first opens the file: read-write, never creating it.
const NO_CREATE: rusqlite::OpenFlags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
    .union(rusqlite::OpenFlags::SQLITE_OPEN_URI)
    .union(rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX);

fn migrate_sqlite(path: &Path, busy_timeout: Duration) -> Result<()> {
    create_private(path)?;
    // Switch to WAL (a persistent setting) and migrate on one connection first, so
    // pool connections opening in parallel never race for that exclusive lock.
    let mut c = Connection::open(path)?;
    c.busy_timeout(busy_timeout)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    migrations::run_sqlite(&mut c)?;
    Ok(())
}

/// Bytes of WAL file left on disk once the WAL starts over (SQLite's
/// `journal_size_limit`; without it the file keeps its largest size for good): the
/// first commit after it starts over cuts it back to this. Above what the WAL reaches in
/// normal use, up to the writers' own checkpoint at 10,000 pages (~41 MB under a
/// sign-in flood), since cutting and growing it again each cycle cost a flood 9 % of its
/// sign-ins at 16 MiB. Past it only while a reader holds the WAL back (a long backup, an
/// `sqlite3` shell left in a transaction) or in very large transactions.
pub const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Create a database file that does not exist yet readable by its owner only
/// (`secrets::create_private`, as the key file is): it holds addresses, the audit trail and hashed session tokens,
/// and SQLite gives the `-wal` and `-shm` files the mode of the database file. An
/// existing file keeps its mode (an operator may have chosen it); SQLite treats the
/// empty file as an empty database. `file:` URIs and `:memory:` are left to SQLite.
fn create_private(path: &Path) -> Result<()> {
    let name = path.to_string_lossy();
    if name.starts_with("file:") || name == ":memory:" {
        return Ok(());
    }
    match crate::secrets::create_private(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Db(format!(
            "cannot create the database {}: {e}",
            path.display()
        ))),
    }
}

/// A pool of `size` on the (migrated) file at `path`.
fn sqlite_pool(
    path: &Path,
    busy_timeout: Duration,
    size: u32,
) -> Result<r2d2::Pool<SqliteConnectionManager>> {
    // Pool connections open the file that now exists, never create one: a connection
    // opened while the file is missing (moved, deleted) must fail (and /readyz say so),
    // not start an empty database that the pool then keeps handing out.
    let manager = SqliteConnectionManager::file(path)
        .with_flags(NO_CREATE)
        .with_init(move |c| {
            c.busy_timeout(busy_timeout)?;
            // 512 KiB of page cache per connection (SQLite's default is 2 MiB): the pool
            // holds up to 8, the operating system caches the file anyway, and the
            // session cache keeps /verify off SQLite; with a large database the default
            // would add ~16 MiB of resident memory for little.
            // Checkpoints run on their own thread (`checkpointer`); a commit checkpoints
            // only past 10,000 pages (40 MB), should that thread fall behind.
            c.execute_batch(&format!(
                "PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA cache_size = -512;
                 PRAGMA wal_autocheckpoint = 10000;
                 PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
            ))
        });
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(db::POOL_WAIT)
        .build(manager)?)
}

/// A pool of `size` PostgreSQL connections (the first one is made now, so a wrong URL,
/// password or unreachable server fails at start).
fn postgres_pool(manager: &db::PgManager, size: u32) -> Result<r2d2::Pool<db::PgManager>> {
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(db::POOL_WAIT)
        // A broken connection is noticed by `has_broken`; a check on every checkout
        // would be a round trip per query.
        .test_on_check_out(false)
        .build(manager.clone())?)
}

impl Store {
    /// Open the database `database` names (a SQLite file path, or a `postgres://` URL),
    /// creating a SQLite file if needed, and migrate it.
    pub fn open(database: &str, busy_timeout: Duration) -> Result<Store> {
        let (pool, follower, file, listener) = if db::is_postgres(database) {
            let manager = db::PgManager::new(database, busy_timeout)?;
            let (pool, follower) = db::blocking(|| -> Result<(Pool, Pool)> {
                let pool = Pool::Pg(db::PgPool::new(postgres_pool(&manager, 8)?));
                migrations::run(&pool.get()?)?;
                let follower = Pool::Pg(db::PgPool::new(postgres_pool(&manager, 1)?));
                Ok((pool, follower))
            })?;
            let listener = db::Listener::new(manager, db::REVOCATIONS_CHANNEL);
            (
                pool,
                follower,
                None::<(Arc<Path>, Option<FileId>)>,
                Some(listener),
            )
        } else {
            let path = Path::new(database);
            migrate_sqlite(path, busy_timeout)?;
            let pool = Pool::Lite(sqlite_pool(path, busy_timeout, 8)?);
            let follower = Pool::Lite(sqlite_pool(path, busy_timeout, 1)?);
            let id = file_id(path).ok().flatten();
            (pool, follower, Some((Arc::from(path), id)), None)
        };
        let writer = Arc::new(Mutex::new(()));
        let checkpoints = match &file {
            Some((path, id)) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let (path, id, writer) = (path.clone(), *id, writer.clone());
                std::thread::Builder::new()
                    .name("authbase-checkpointer".into())
                    .spawn(move || checkpointer(&path, id, &writer, rx))
                    .map_err(|e| StoreError::Db(format!("cannot start the checkpointer: {e}")))?;
                Some(tx)
            }
            None => None,
        };
        let (sign_ins, jobs) = std::sync::mpsc::channel();
        {
            let (pool, writer) = (pool.clone(), writer.clone());
            std::thread::Builder::new()
                .name("authbase-sign-in-writer".into())
                .spawn(move || sign_in_writer(pool, writer, busy_timeout, jobs))
                .map_err(|e| StoreError::Db(format!("cannot start the sign-in writer: {e}")))?;
        }
        Ok(Store {
            pool,
            writer,
            sign_ins,
            file,
            follower,
            listener,
            busy_timeout,
            _checkpoints: checkpoints,
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.pool.is_postgres()
    }

    /// Is the database file still the one the pool reads? Open connections go on
    /// reading a file that was deleted or moved away, so callers must ask: missing, or
    /// replaced by another file, is `Unavailable` (fail closed). A replaced file is not
    /// reopened while running: its old `-wal` would be applied to the new file, so a
    /// restore means stopping authbase, replacing the file and removing the `-wal` and
    /// `-shm` files, and starting it again. The same file back again is fine. Always
    /// fine on PostgreSQL (a lost server shows as errors of the queries themselves).
    pub async fn check_file(&self) -> Result<()> {
        let Some((path, known)) = self.file.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || match file_id(&path) {
            Err(e) => Err(StoreError::Unavailable(format!(
                "database file {} is not there: {e}",
                path.display()
            ))),
            Ok(id) if id != known => Err(StoreError::Unavailable(format!(
                "database file {} was replaced by another file while authbase runs; restart authbase",
                path.display()
            ))),
            Ok(_) => Ok(()),
        })
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }

    /// Run blocking database work off the async executor.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T> + Send + 'static,
    {
        on(&self.pool, f).await
    }

    /// Like `run`, for work that writes: one writer at a time inside this process (see
    /// `writer`). Work that reads before it writes, or writes more than one row that
    /// belong together, opens a transaction (`Db::transaction`), which on PostgreSQL
    /// also serializes it with the writers of other replicas (see `db`). A lone
    /// statement does not: on SQLite it takes the write lock only if it changes a row,
    /// so a no-op does not wait behind a writer elsewhere.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let (writer, busy_timeout) = (self.writer.clone(), self.busy_timeout);
        tokio::task::spawn_blocking(move || {
            // Taken before a connection, so waiting writers do not hold connections that
            // readers need.
            let _guard = lock_writer(&writer, busy_timeout)?;
            f(&pool.get()?)
        })
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }

    pub async fn ready(&self) -> Result<()> {
        self.run(|c| {
            let v = migrations::version(c)?;
            if v == migrations::LATEST {
                Ok(())
            } else {
                Err(StoreError::Db(format!("schema version {v}")))
            }
        })
        .await
    }

    /// The schema version of a database without migrating it; `None` when there is no
    /// such SQLite file (or no schema in the PostgreSQL database).
    pub fn schema_version(database: &str) -> Result<Option<i64>> {
        if db::is_postgres(database) {
            return db::blocking(|| {
                let manager = db::PgManager::new(database, Duration::from_secs(5))?;
                let pool = Pool::Pg(db::PgPool::new(postgres_pool(&manager, 1)?));

                migrations::existing_version(&pool.get()?)
            });
        }
        let path = Path::new(database);
        if !path.exists() {
            return Ok(None);
        }
        let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(Some(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
    }

    /// The latest schema version this binary knows.
    pub fn latest_schema() -> i64 {
        migrations::LATEST
    }

    /// An online, consistent copy of the SQLite database into `dest` (which must not
    /// exist), with SQLite's backup API while servers keep reading and writing; checked
    /// with `PRAGMA integrity_check`. Returns the pages copied.
    pub async fn backup(&self, dest: std::path::PathBuf) -> Result<i64> {
        self.run(move |c| {
            let Some(c) = c.sqlite() else {
                return Err(StoreError::Db(
                    "backup copies a SQLite file; back PostgreSQL up with pg_dump".into(),
                ));
            };
            let mut out = Connection::open(&dest)?;
            {
                let b = rusqlite::backup::Backup::new(c, &mut out)?;
                // 256 pages (1 MiB) a step, pausing between steps so writers get a turn.
                b.run_to_completion(256, Duration::from_millis(5), None)?;
            }
            let ok: String = out.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            if ok != "ok" {
                return Err(StoreError::Db(format!(
                    "the copy fails its integrity check: {ok}"
                )));
            }
            Ok(out.query_row("PRAGMA page_count", [], |r| r.get(0))?)
        })
        .await
    }

    /// For `/metrics`: emails queued, seconds the oldest due one is overdue, confirmed
    /// live sessions, servers with a recent heartbeat.
    pub async fn gauges(&self, now: i64) -> Result<(i64, i64, i64, i64)> {
        self.run(move |c| {
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM outbox WHERE state = 'queued'),
                        (SELECT COALESCE(?1 - MIN(next_attempt_at), 0) FROM outbox
                          WHERE state = 'queued' AND next_attempt_at <= ?1),
                        (SELECT COUNT(*) FROM sessions WHERE confirmed = 1 AND expires_at > ?1),
                        (SELECT COUNT(*) FROM servers WHERE heartbeat_at >= ?2)",
                args![now, now - servers::LIVE_FOR],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
        })
        .await
    }

    /// For `/readyz`: seconds the oldest due sign-in email is overdue (0: none). The
    /// sender reschedules a failed attempt into the future, so a large value means it is
    /// not working through the queue at all, not that the SMTP server is down. API mail
    /// is left out: a backlog of it (a slow provider, the ceilings of a mail service)
    /// must not take a server out of rotation; its lane does not hold sign-ins up.
    pub async fn mail_overdue(&self, now: i64) -> Result<i64> {
        self.run(move |c| {
            c.query_row(
                "SELECT COALESCE(?1 - MIN(next_attempt_at), 0) FROM outbox
                  WHERE state = 'queued' AND kind = 'sign_in' AND next_attempt_at <= ?1",
                args![now],
                |r| r.get(0),
            )
        })
        .await
    }

    /// A live session for this token hash (pending or confirmed), not idle-expired, user
    /// not blocked.
    pub async fn session(&self, hash: Hash, now: i64, idle: i64) -> Result<Option<SessionUser>> {
        self.run(move |c| {
            c.query_opt(
                "SELECT s.id, s.user_id, u.email, s.confirmed, s.last_seen_at, s.expires_at,
                        u.invited,
                        (SELECT string_agg(name, ',' ORDER BY name) FROM user_groups WHERE user_id = u.id)
                   FROM sessions s JOIN users u ON u.id = s.user_id
                  WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND u.blocked = 0
                    AND (?3 = 0 OR s.confirmed = 0 OR s.last_seen_at + ?3 > ?2)",
                args![&hash[..], now, idle], |r| {
                Ok(SessionUser {
                    session_id: r.get(0)?,
                    user_id: r.get(1)?,
                    email: r.get(2)?,
                    confirmed: r.get(3)?,
                    last_seen_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    invited: r.get(6)?,
                    groups: r
                        .get::<Option<String>>(7)?
                        .map(|g| g.split(',').map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            })
        })
        .await
    }

    /// Record activity for the idle timeout, many sessions in one transaction:
    /// `(session_id, seen_at)`. Never moves `expires_at`.
    pub async fn touch_many(&self, seen: Vec<(i64, i64)>) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            for (id, at) in seen {
                tx.execute(
                    "UPDATE sessions SET last_seen_at = CASE WHEN last_seen_at > ?2 THEN last_seen_at ELSE ?2 END WHERE id = ?1",
                    args![id, at])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// End a session (sign-out), with a revocation record so that other servers on the
    /// same database evict it too. False when there was no such session.
    pub async fn delete_session(&self, hash: Hash, now: i64) -> Result<bool> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ended = tx.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                args![&hash[..]],
            )? > 0;
            if ended {
                users::record_session_end(&tx, &hash, now)?;
            }
            tx.commit()?;
            Ok(ended)
        })
        .await
    }

    /// End the sessions of one user (by address) or of everyone, from outside the server
    /// (the admin CLI): the deletion and a revocation record in one transaction, so
    /// running servers evict their cached copies, and an audit record. Returns the
    /// sessions ended and the revocation record's number, or `None` for an unknown address.
    pub async fn revoke(&self, email: Option<String>, now: i64) -> Result<Option<(usize, i64)>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let (user_id, stored) = match &email {
                Some(e) => match users::find_user(&tx, e)? {
                    Some((id, stored, _)) => (Some(id), stored),
                    None => return Ok(None),
                },
                None => (None, String::new()),
            };
            let n = match user_id {
                Some(id) => tx.execute("DELETE FROM sessions WHERE user_id = ?1", args![id])?,
                None => tx.execute("DELETE FROM sessions", args![])?,
            };
            users::audit_admin(
                &tx,
                now,
                "sessions_revoked",
                &stored,
                user_id,
                &n.to_string(),
            )?;
            let seq = users::record_revocation(&tx, user_id, now)?;
            tx.commit()?;
            Ok(Some((n, seq)))
        })
        .await
    }

    /// Sign out one session by its id, one that `list_sessions` shows (confirmed, not
    /// expired; a pending sign-in is not a session to revoke): deleted, audited, and
    /// logged by its token's hash so running servers evict exactly it. Returns the
    /// address it belonged to and the revocation record's number; `None` when there is
    /// no such session.
    pub async fn revoke_session(&self, id: i64, now: i64) -> Result<Option<(String, i64)>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some((hash, user_id, email)) = tx.query_opt(
                "SELECT s.token_hash, s.user_id, u.email FROM sessions s
                   JOIN users u ON u.id = s.user_id
                  WHERE s.id = ?1 AND s.confirmed = 1 AND s.expires_at > ?2",
                args![id, now],
                |r| Ok((r.get::<Vec<u8>>(0)?, r.get::<i64>(1)?, r.get::<String>(2)?)),
            )?
            else {
                return Ok(None);
            };
            tx.execute("DELETE FROM sessions WHERE id = ?1", args![id])?;
            users::audit_admin(
                &tx,
                now,
                "sessions_revoked",
                &email,
                Some(user_id),
                &format!("1 (session {id})"),
            )?;
            let seq = users::record_session_revoked(&tx, user_id, &hash, now)?;
            tx.commit()?;
            Ok(Some((email, seq)))
        })
        .await
    }

    /// The newest revocation record's number (0 when there is none).
    pub async fn last_revocation(&self) -> Result<i64> {
        self.run(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM revocations",
                args![],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Revocations after `seq`, oldest first.
    ///
    /// On a pool of one connection of its own: under a flood of `/verify` cache misses
    /// the main pool's connections are all busy, and the server must keep following the
    /// log (it stops answering sessions when it cannot; see `session::SYNC_GRACE`).
    pub async fn revocations_since(&self, seq: i64) -> Result<Vec<(i64, Revoked)>> {
        on(&self.follower, move |c| {
            c.query_map(
                "SELECT seq, kind, user_id, token_hash FROM revocations WHERE seq > ?1 ORDER BY seq",
                args![seq],
                |r| {
                    let kind: String = r.get(1)?;
                    let what = match kind.as_str() {
                        users::KIND_KEYS => Revoked::Keys,
                        users::KIND_SESSION | users::KIND_ONE_SESSION => {
                            let h: Vec<u8> = r.get(3)?;
                            let hash: Hash = h.try_into().map_err(|_| {
                                StoreError::Db("a revocation with a malformed hash".into())
                            })?;
                            Revoked::Session {
                                hash,
                                awaited: kind == users::KIND_ONE_SESSION,
                            }
                        }
                        _ => Revoked::Sessions(r.get(2)?),
                    };
                    Ok((r.get(0)?, what))
                },
            )
        })
        .await
    }

    /// Resolves when another server may have written to the revocation log: at once on
    /// PostgreSQL, which notifies listeners (`LISTEN`); never on SQLite, where servers
    /// poll. Followers poll as well, so this only makes them faster.
    pub async fn revocation_posted(&self) {
        match &self.listener {
            Some(l) => l.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Confirmed, live sessions, newest first, optionally of one address.
    pub async fn list_sessions(&self, email: Option<String>, now: i64) -> Result<Vec<SessionRow>> {
        self.run(move |c| {
            let rows = c.query_map(
                "SELECT s.id, u.email, s.created_at, s.last_seen_at, s.expires_at, s.ip, s.user_agent
                   FROM sessions s JOIN users u ON u.id = s.user_id
                  WHERE s.confirmed = 1 AND s.expires_at > ?1 AND (?2 IS NULL OR u.email = ?2)
                  ORDER BY s.created_at DESC, s.id DESC",
                args![now, email], |r| {
                    Ok(SessionRow {
                        id: r.get(0)?,
                        email: r.get(1)?,
                        created_at: r.get(2)?,
                        last_seen_at: r.get(3)?,
                        expires_at: r.get(4)?,
                        ip: r.get(5)?,
                        user_agent: r.get(6)?,
                    })
                })?;
            Ok(rows)
        })
        .await
    }

    /// Create the user if new, a pending session for this browser, the sign-in request,
    /// its queued email and the audit record, atomically; or, for an address that
    /// `[access]` does not admit or a blocked user, only the audit record.
    ///
    /// Sign-ins are group-committed: a dedicated writer thread takes every request that
    /// is waiting and writes them in one transaction (each in its own savepoint), because
    /// a SQLite commit costs about the same for one row as for fifty.
    pub async fn start_sign_in(
        &self,
        n: NewSignIn,
    ) -> Result<std::result::Result<Started, NotStarted>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sign_ins
            .send((n, tx))
            .map_err(|_| StoreError::Db("sign-in writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Db("sign-in writer stopped".into()))?
    }

    pub async fn request_by_link(&self, link_hash: Hash) -> Result<Option<RequestInfo>> {
        self.run(move |c| request_where(c, "r.link_hash = ?1", &link_hash[..]))
            .await
    }

    /// The link was opened in the browser that asked: confirm its own pending session,
    /// under a new token. Anything else is a refusal and changes nothing.
    pub async fn confirm_same_browser(
        &self,
        link_hash: Hash,
        session_hash: Hash,
        now: i64,
        lifetime: i64,
    ) -> Result<std::result::Result<SignedIn, Refusal>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(req) = request_where(&tx, "r.link_hash = ?1", &link_hash[..])? else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Err(r) = usable(&req, now) {
                return Ok(Err(r));
            }
            let waiting: Option<Vec<u8>> = tx.query_opt(
                "SELECT s.token_hash FROM sessions s JOIN sign_in_requests r
                    ON r.session_id = s.id WHERE r.id = ?1 AND s.confirmed = 0",
                args![req.id],
                |r| r.get(0),
            )?;
            if !waiting.is_some_and(|h| secrets::ct_eq(&h, &session_hash)) {
                return Ok(Err(Refusal::Unknown));
            }
            let out = consume_and_confirm(&tx, &req, now, lifetime)?;
            tx.commit()?;
            Ok(Ok(out))
        })
        .await
    }

    /// "Sign in on this device": a new confirmed session for the browser holding the link;
    /// the waiting browser's pending session is ended and never gets in.
    pub async fn sign_in_here(
        &self,
        link_hash: Hash,
        now: i64,
        lifetime: i64,
        ip: String,
        user_agent: String,
    ) -> Result<std::result::Result<SignedIn, Refusal>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(req) = request_where(&tx, "r.link_hash = ?1", &link_hash[..])? else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Err(r) = usable(&req, now) {
                return Ok(Err(r));
            }
            if req.silent {
                return Ok(Err(Refusal::Unknown));
            }
            if !set_state(&tx, req.id, "consumed")? {
                return Ok(Err(Refusal::Used));
            }
            tx.execute(
                "DELETE FROM sessions WHERE confirmed = 0 AND id =
                   (SELECT session_id FROM sign_in_requests WHERE id = ?1)",
                args![req.id],
            )?;
            let (token, hash) = secrets::new_token();
            let user_id: i64 = tx.query_row(
                "SELECT user_id FROM sign_in_requests WHERE id = ?1",
                args![req.id],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO sessions (token_hash, user_id, confirmed, created_at, last_seen_at,
                                       expires_at, ip, user_agent)
                 VALUES (?1, ?2, 1, ?3, ?3, ?4, ?5, ?6)",
                args![&hash[..], user_id, now, now + lifetime, ip, user_agent],
            )?;
            first_sign_in(&tx, user_id, now)?;
            tx.commit()?;
            Ok(Ok(SignedIn {
                token,
                return_to: req.return_to,
                user_id,
                email: req.email,
            }))
        })
        .await
    }

    /// "Approve the waiting browser", allowed only with the number that browser shows.
    pub async fn approve(
        &self,
        link_hash: Hash,
        number: String,
        now: i64,
        max_attempts: u32,
    ) -> Result<std::result::Result<RequestInfo, Refusal>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(req) = request_where(&tx, "r.link_hash = ?1", &link_hash[..])? else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Err(r) = usable(&req, now) {
                return Ok(Err(r));
            }
            if req.silent {
                return Ok(Err(Refusal::Unknown));
            }
            let ok = number.len() == req.match_number.len()
                && secrets::ct_eq(number.as_bytes(), req.match_number.as_bytes());
            let out = if ok {
                set_state(&tx, req.id, "approved")?;
                Ok(req)
            } else {
                Err(wrong_attempt(&tx, req.id, "match_attempts", max_attempts)?)
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// "This wasn't me": cancel the request and end the waiting browser's pending session.
    pub async fn cancel(
        &self,
        link_hash: Hash,
        now: i64,
    ) -> Result<std::result::Result<(), Refusal>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(req) = request_where(&tx, "r.link_hash = ?1", &link_hash[..])? else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Err(r) = usable(&req, now) {
                return Ok(Err(r));
            }
            cancel_request(&tx, req.id)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    /// The waiting browser asks about its request; if it was approved elsewhere it is
    /// signed in now, under a new token.
    pub async fn wait_state(
        &self,
        session_hash: Hash,
        now: i64,
        lifetime: i64,
    ) -> Result<WaitState> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(req) = request_for_pending(&tx, &session_hash)? else {
                return Ok(WaitState::Gone(Refusal::Unknown));
            };
            let out = match req.state.as_str() {
                "approved" if req.expires_at > now => {
                    WaitState::SignedIn(consume_and_confirm(&tx, &req, now, lifetime)?)
                }
                "pending" if req.expires_at > now => WaitState::Waiting {
                    email: req.email,
                    match_number: req.match_number,
                    return_to: req.return_to,
                },
                "cancelled" => WaitState::Gone(Refusal::Cancelled),
                "consumed" => WaitState::Gone(Refusal::Used),
                _ => WaitState::Gone(Refusal::Expired),
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// The one-time code from the email, typed into the waiting browser.
    ///
    /// Two limits: `limits.per_request` wrong codes cancel the request, and
    /// `limits.per_address` wrong codes within `limits.window` seconds, across all of an
    /// address's requests, refuse further codes for it (starting new requests to get
    /// fresh attempts does not help an attacker).
    pub async fn submit_code(
        &self,
        session_hash: Hash,
        code: String,
        key: ServerKey,
        now: i64,
        lifetime: i64,
        limits: CodeLimits,
    ) -> Result<std::result::Result<SignedIn, Refusal>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(req) = request_for_pending(&tx, &session_hash)? else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Err(r) = usable(&req, now) {
                return Ok(Err(r));
            }
            let (user_id, failures, window_start): (i64, i64, i64) = tx.query_row(
                "SELECT u.id, u.code_failures, u.code_window_start
                       FROM users u JOIN sign_in_requests r ON r.user_id = u.id WHERE r.id = ?1",
                args![req.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let in_window = window_start + limits.window > now;
            if in_window && failures >= limits.per_address as i64 {
                return Ok(Err(Refusal::Throttled));
            }
            let expected = key.code(&req.salt);
            // A silent (refused) request takes guesses like any other, right or wrong,
            // and never signs anyone in.
            let out = if !req.silent
                && code.len() == expected.len()
                && secrets::ct_eq(code.as_bytes(), expected.as_bytes())
            {
                Ok(consume_and_confirm(&tx, &req, now, lifetime)?)
            } else {
                let (n, start) = if in_window {
                    (failures + 1, window_start)
                } else {
                    (1, now)
                };
                tx.execute(
                    "UPDATE users SET code_failures = ?2, code_window_start = ?3 WHERE id = ?1",
                    args![user_id, n, start],
                )?;
                Err(wrong_attempt(
                    &tx,
                    req.id,
                    "code_attempts",
                    limits.per_request,
                )?)
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Rate limits shared by the servers of one database (keys as given, see
    /// `limits::SharedHit`): each hit in order, in one
    /// transaction (so under the write lock on PostgreSQL, one server at a time), up to
    /// the first refused one, which says its limit and how long to wait. Hits before it
    /// stay counted, as in memory.
    pub async fn shared_limits(
        &self,
        hits: Vec<crate::limits::SharedHit>,
        now_ms: i64,
    ) -> Result<std::result::Result<(), (&'static str, Duration)>> {
        self.write(move |c| {
            let c = c.transaction()?;
            let out = shared_hits(&c, &hits, now_ms)?;
            c.commit()?;
            Ok(out)
        })
        .await
    }

    /// Write audit events, all in one transaction.
    pub async fn record_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            for e in &events {
                insert_audit(&tx, e)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Delete what has expired, and audit events older than `audit_retention` seconds
    /// (0: keep them). Returns the number of rows removed.
    pub async fn sweep(&self, now: i64, audit_retention: i64) -> Result<usize> {
        self.write(move |c| {
            // One transaction (on PostgreSQL under the write lock): the user deletion
            // must not race a sign-in of that user on another replica.
            let tx = c.transaction()?;
            let c = &*tx;
            let mut n = c.execute("DELETE FROM sessions WHERE expires_at <= ?1", args![now])?;
            // Users who never signed in (refused or abandoned sign-ins), once their
            // requests are gone; not invited, blocked or grouped ones.
            n += c.execute(
                "DELETE FROM users WHERE confirmed_at IS NULL AND invited = 0 AND blocked = 0
                   AND api_created = 0 AND created_at <= ?1
                   AND NOT EXISTS (SELECT 1 FROM sign_in_requests r WHERE r.user_id = users.id)
                   AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = users.id)
                   AND NOT EXISTS (SELECT 1 FROM user_groups g WHERE g.user_id = users.id)",
                args![now - 86400],
            )?;
            if audit_retention > 0 {
                n += c.execute(
                    "DELETE FROM audit WHERE at <= ?1",
                    args![now - audit_retention],
                )?;
            }
            // Keep finished requests for a day so a late click gets "expired", not "unknown".
            n += c.execute(
                "DELETE FROM sign_in_requests WHERE expires_at <= ?1",
                args![now - 86400],
            )?;
            n += c.execute(
                "DELETE FROM outbox WHERE state != 'queued' AND created_at <= ?1",
                args![now - 7 * 86400],
            )?;
            // Servers poll every second; a day-old record has been seen by all of them.
            n += c.execute(
                "DELETE FROM revocations WHERE at <= ?1 AND seq < (SELECT MAX(seq) FROM revocations)",
                args![now - 86400],
            )?;
            n += c.execute("DELETE FROM servers WHERE heartbeat_at <= ?1", args![now - 86400])?;
            n += c.execute(
                "DELETE FROM limit_windows WHERE expires_ms <= ?1",
                args![now.saturating_mul(1000)],
            )?;
            // Retired signing keys, once their overlap period is over.
            n += c.execute(
                "DELETE FROM signing_keys WHERE retire_at IS NOT NULL AND retire_at <= ?1",
                args![now],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

/// The hits of `Store::shared_limits`, in its transaction.
fn shared_hits(
    c: &Db,
    hits: &[crate::limits::SharedHit],
    now_ms: i64,
) -> Result<std::result::Result<(), (&'static str, Duration)>> {
    use crate::limits::StoredWindow;
    for h in hits.iter().filter(|h| !h.off()) {
        let key = &h.key;
        let stored = c.query_opt(
            "SELECT start_ms, count, last_ms FROM limit_windows WHERE name = ?1 AND key = ?2",
            args![h.limit, &key[..]],
            |r| {
                Ok(StoredWindow {
                    start: r.get(0)?,
                    count: r.get(1)?,
                    last: r.get(2)?,
                })
            },
        )?;
        match h.apply(stored, now_ms) {
            Err(wait) => return Ok(Err((h.limit, wait))),
            Ok(None) => {}
            Ok(Some(w)) => {
                c.execute(
                    "INSERT INTO limit_windows (name, key, start_ms, count, last_ms, expires_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                             ON CONFLICT (name, key) DO UPDATE SET start_ms = ?3, count = ?4,
                                    last_ms = ?5, expires_ms = ?6",
                    args![h.limit, &key[..], w.start, w.count, w.last, h.keep_ms(&w)],
                )?;
            }
        }
    }
    Ok(Ok(()))
}

/// How often the checkpointer looks at an idle WAL (see `checkpointer`).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Pages a checkpoint copies past which the checkpointer goes again at once.
const CHECKPOINT_AGAIN_AT: i64 = 1_000;
/// WAL size in pages past which the checkpointer, once caught up, finishes holding the
/// write turn (see `checkpointer`): SQLite's own checkpoint threshold.
const CHECKPOINT_RESTART_AT: i64 = 1_000;
/// Pages a checkpoint may have left behind (readers still on them) for the one that
/// holds the write turn to follow: that one then copies little.
const CHECKPOINT_LEFT_AT_MOST: i64 = 256;

/// Checkpoints a SQLite database's WAL on its own thread and connection, until `stop`'s
/// sender is dropped.
///
/// By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages,
/// and that commit then waits for the fsyncs of the WAL and the database file: under a
/// stream of sign-ins the sign-in writer spent about a third of its time so, with the
/// CPU idle. Here a `PASSIVE` checkpoint, which waits for no reader or writer, copies
/// what the WAL holds into the database and syncs it while writers go on; it runs every
/// `CHECKPOINT_EVERY`, and again at once after one that copied more than
/// `CHECKPOINT_AGAIN_AT` pages. The WAL starts over from its beginning only after a
/// checkpoint that left nothing behind, which a WAL written to all the time never gets:
/// once a checkpoint copied little (the pages written during the one before) and left
/// little, a WAL past `CHECKPOINT_RESTART_AT` pages gets one more holding this process's
/// write turn (`writer`). It copies the few pages written meanwhile, and this process's
/// writers wait for its syncs; the next write then usually starts the WAL over (not
/// while a reader is still on its pages, nor against other processes' writes).
/// Writers checkpoint themselves only past 10,000 pages, should this thread fall behind.
///
/// The connection is opened again after an error only while the path still names the
/// file opened at start (`id`, see `Store::check_file`): a replaced file must not get
/// the old one's WAL.
fn checkpointer(
    path: &Path,
    id: Option<FileId>,
    writer: &Mutex<()>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let mut conn: Option<Connection> = None;
    let mut failing = false;
    let mut wait = CHECKPOINT_EVERY;
    // Pages the WAL held, and had been copied, after the last checkpoint.
    let mut last = (0, 0);
    // One warning until the next success.
    let warn = |failing: &mut bool, what: &str, e: &dyn std::fmt::Display| {
        if !std::mem::replace(failing, true) {
            tracing::warn!(error = %e, "checkpointer: {what}");
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        wait = CHECKPOINT_EVERY;
        let c = match conn.take() {
            Some(c) => c,
            None => {
                match file_id(path) {
                    Ok(now) if now == id => {}
                    Ok(_) => {
                        warn(
                            &mut failing,
                            "not reopened",
                            &"the database file was replaced",
                        );
                        continue;
                    }
                    Err(e) => {
                        warn(&mut failing, "not reopened", &e);
                        continue;
                    }
                }
                // Never creates the file: a missing database is `check_file`'s to report.
                match Connection::open_with_flags(path, NO_CREATE) {
                    Ok(c) => c,
                    Err(e) => {
                        warn(&mut failing, "cannot open the database", &e);
                        continue;
                    }
                }
            }
        };
        // `(busy, WAL size in pages, pages of it now in the database)`; busy (1, -1, -1)
        // when another connection is checkpointing.
        let checkpoint = || {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
        };
        let done = checkpoint().and_then(|(busy, pages, copied)| {
            if busy != 0 {
                return Ok(None);
            }
            // A WAL smaller than before was started over: all of it is new.
            let new = if pages >= last.0 {
                copied - last.1
            } else {
                copied
            };
            if pages >= CHECKPOINT_RESTART_AT
                && 0 < new
                && new < CHECKPOINT_AGAIN_AT
                && pages - copied <= CHECKPOINT_LEFT_AT_MOST
            {
                let _turn = writer.lock().unwrap_or_else(|e| e.into_inner());
                let (busy, pages, copied) = checkpoint()?;
                return Ok((busy == 0).then_some(((pages, copied), new)));
            }
            Ok(Some(((pages, copied), new)))
        });
        match done {
            Ok(result) => {
                failing = false;
                conn = Some(c);
                if let Some((now, new)) = result {
                    last = now;
                    if new >= CHECKPOINT_AGAIN_AT {
                        wait = Duration::ZERO;
                    }
                }
            }
            // Dropped, and opened again if the file is still the same (above).
            Err(e) => warn(&mut failing, "checkpoint failed", &e),
        }
    }
}

/// This process's writer lock, waited for at most `timeout` (then `Busy`): a request's
/// write must not queue without bound behind background writers that are themselves
/// waiting out a lock held elsewhere. A panic while holding it leaves nothing half-done
/// in the database (the transaction rolls back), so a poisoned lock is still usable.
fn lock_writer(writer: &Mutex<()>, timeout: Duration) -> Result<std::sync::MutexGuard<'_, ()>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match writer.try_lock() {
            Ok(g) => return Ok(g),
            Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => return Err(StoreError::Busy),
        }
    }
}

/// Run `f` on a connection of `pool`, on tokio's blocking pool.
async fn on<T, F>(pool: &Pool, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Db) -> Result<T> + Send + 'static,
{
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || f(&pool.get()?))
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
}

type SignInResult = Result<std::result::Result<Started, NotStarted>>;
type SignInJob = (NewSignIn, tokio::sync::oneshot::Sender<SignInResult>);

/// The group-commit loop behind `start_sign_in`. Ends when every `Store` is dropped.
fn sign_in_writer(
    pool: Pool,
    writer: Arc<Mutex<()>>,
    busy_timeout: Duration,
    jobs: std::sync::mpsc::Receiver<SignInJob>,
) {
    const BATCH: usize = 64;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = (|| -> Result<Vec<SignInResult>> {
            let _guard = lock_writer(&writer, busy_timeout)?;
            let conn = pool.get()?;
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(batch.len());
            for (n, _) in &batch {
                // One savepoint each: a failing sign-in does not take the others along.
                let sp = tx.transaction()?;
                match insert_sign_in(&sp, n) {
                    Ok(r) => {
                        sp.commit()?;
                        out.push(Ok(r));
                    }
                    Err(e) => out.push(Err(e)),
                }
            }
            tx.commit()?;
            Ok(out)
        })();
        match results {
            Ok(results) => {
                for ((_, reply), r) in batch.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(match &e {
                        StoreError::Busy => StoreError::Busy,
                        StoreError::Db(m) => StoreError::Db(m.clone()),
                        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                    }));
                }
            }
        }
    }
}

fn insert_sign_in(tx: &Db, n: &NewSignIn) -> SignInResult {
    if let Some(old) = n.replaces {
        tx.execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            args![&old[..]],
        )?;
    }
    let known: Option<(i64, bool, bool)> = tx.query_opt(
        "SELECT id, blocked, invited FROM users WHERE email = ?1",
        args![&n.email],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let refused = match known {
        Some((_, true, _)) => Some(NotStarted::Blocked),
        Some((_, _, invited)) if !invited && !n.allowed => Some(NotStarted::NotAllowed),
        None if !n.allowed => Some(NotStarted::NotAllowed),
        _ => None,
    };
    let audit = |event: &'static str, user_id: Option<i64>, detail: &str| {
        insert_audit(
            tx,
            &AuditEvent {
                at: n.now,
                event,
                email: n.email.clone(),
                user_id,
                ip: n.ip.clone(),
                user_agent: n.user_agent.clone(),
                detail: detail.to_string(),
            },
        )
    };
    let (user_id, email): (i64, String) = tx.query_row(
        "INSERT INTO users (email, created_at) VALUES (?1, ?2)
                     ON CONFLICT (email) DO UPDATE SET email = users.email
                     RETURNING id, email",
        args![&n.email, n.now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let session_id: i64 = tx.query_one(
        "INSERT INTO sessions (token_hash, user_id, confirmed, created_at, last_seen_at,
                               expires_at, ip, user_agent)
         VALUES (?1, ?2, 0, ?3, ?3, ?4, ?5, ?6) RETURNING id",
        args![
            &n.session_hash[..],
            user_id,
            n.now,
            n.now + n.link_ttl,
            &n.ip,
            &n.user_agent
        ],
    )?;
    let request_id: i64 = tx.query_one(
        "INSERT INTO sign_in_requests (session_id, user_id, salt, link_hash, match_number,
                     return_to, ip, user_agent, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
        args![
            session_id,
            user_id,
            &n.salt[..],
            &n.link_hash[..],
            &n.match_number,
            &n.return_to,
            &n.ip,
            &n.user_agent,
            n.now,
            n.now + n.link_ttl
        ],
    )?;
    if let Some(why) = refused {
        // Stored like any request, so every later answer about it is the same as for a
        // real one; but silent: no mail, and no code or link can ever confirm it.
        tx.execute(
            "UPDATE sign_in_requests SET silent = 1 WHERE id = ?1",
            args![request_id],
        )?;
        audit("sign_in_refused", Some(user_id), why.as_str())?;
        return Ok(Err(why));
    }
    let outbox_id: i64 = tx.query_one(
        "INSERT INTO outbox (kind, request_id, recipient, next_attempt_at, created_at)
         VALUES ('sign_in', ?1, ?2, ?3, ?3) RETURNING id",
        args![request_id, email, n.now],
    )?;
    audit(
        "sign_in_requested",
        Some(user_id),
        &format!("request {request_id}"),
    )?;
    Ok(Ok(Started {
        request_id,
        outbox_id,
    }))
}

pub(crate) fn insert_audit(c: &Db, e: &AuditEvent) -> Result<()> {
    c.execute(
        "INSERT INTO audit (at, event, email, user_id, ip, user_agent, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            e.at,
            e.event,
            &e.email,
            e.user_id,
            &e.ip,
            &e.user_agent,
            &e.detail
        ],
    )?;
    Ok(())
}

fn request_where(c: &Db, cond: &str, p: &[u8]) -> Result<Option<RequestInfo>> {
    let sql = format!(
        "SELECT r.id, u.email, r.salt, r.link_hash, r.state, r.match_number, r.return_to,
                r.ip, r.user_agent, r.created_at, r.expires_at, r.silent
           FROM sign_in_requests r JOIN users u ON u.id = r.user_id WHERE {cond}"
    );
    c.query_opt(&sql, args![p], |r| {
        Ok(RequestInfo {
            id: r.get(0)?,
            email: r.get(1)?,
            salt: r.get(2)?,
            link_hash: r.get(3)?,
            state: r.get(4)?,
            match_number: r.get(5)?,
            return_to: r.get(6)?,
            ip: r.get(7)?,
            user_agent: r.get(8)?,
            created_at: r.get(9)?,
            expires_at: r.get(10)?,
            silent: r.get(11)?,
        })
    })
}

/// The newest request whose waiting session has this (pending) token.
fn request_for_pending(c: &Db, session_hash: &Hash) -> Result<Option<RequestInfo>> {
    request_where(
        c,
        "r.session_id = (SELECT id FROM sessions WHERE token_hash = ?1 AND confirmed = 0)
         ORDER BY r.id DESC LIMIT 1",
        &session_hash[..],
    )
}

fn usable(req: &RequestInfo, now: i64) -> std::result::Result<(), Refusal> {
    match req.state.as_str() {
        "pending" if req.expires_at > now => Ok(()),
        "pending" => Err(Refusal::Expired),
        "cancelled" => Err(Refusal::Cancelled),
        _ => Err(Refusal::Used),
    }
}

/// Move a request out of `pending`/`approved`; false when another click got there first.
fn set_state(c: &Db, id: i64, state: &str) -> Result<bool> {
    let from = if state == "consumed" {
        "('pending', 'approved')"
    } else {
        "('pending')"
    };
    Ok(c.execute(
        &format!("UPDATE sign_in_requests SET state = ?2 WHERE id = ?1 AND state IN {from}"),
        args![id, state],
    )? == 1)
}

/// Consume the request and turn its waiting session into a confirmed one with a new
/// token: the pre-sign-in cookie value stops working at this moment.
fn consume_and_confirm(c: &Db, req: &RequestInfo, now: i64, lifetime: i64) -> Result<SignedIn> {
    if req.silent {
        return Err(StoreError::Db(
            "a silent request cannot be confirmed".into(),
        ));
    }
    if !set_state(c, req.id, "consumed")? {
        return Err(StoreError::Db(
            "request changed state during confirmation".into(),
        ));
    }
    let (token, hash) = secrets::new_token();
    let user_id: i64 = c.query_row(
        "UPDATE sessions SET token_hash = ?2, confirmed = 1, last_seen_at = ?3, expires_at = ?4
          WHERE id = (SELECT session_id FROM sign_in_requests WHERE id = ?1) AND confirmed = 0
          RETURNING user_id",
        args![req.id, &hash[..], now, now + lifetime],
        |r| r.get(0),
    )?;
    first_sign_in(c, user_id, now)?;
    Ok(SignedIn {
        token,
        return_to: req.return_to.clone(),
        user_id,
        email: req.email.clone(),
    })
}

/// Remember when a user first signed in (users who never did are swept).
fn first_sign_in(c: &Db, user_id: i64, now: i64) -> Result<()> {
    c.execute(
        "UPDATE users SET confirmed_at = ?2 WHERE id = ?1 AND confirmed_at IS NULL",
        args![user_id, now],
    )?;
    Ok(())
}

fn cancel_request(c: &Db, id: i64) -> Result<()> {
    c.execute(
        "UPDATE sign_in_requests SET state = 'cancelled' WHERE id = ?1 AND state IN ('pending', 'approved')",
        args![id],
    )?;
    c.execute(
        "DELETE FROM sessions WHERE confirmed = 0 AND id =
           (SELECT session_id FROM sign_in_requests WHERE id = ?1)",
        args![id],
    )?;
    Ok(())
}

/// Count a wrong code or number; the last allowed one cancels the request.
fn wrong_attempt(c: &Db, id: i64, column: &str, max: u32) -> Result<Refusal> {
    let n: i64 = c.query_row(
        &format!(
            "UPDATE sign_in_requests SET {column} = {column} + 1 WHERE id = ?1 RETURNING {column}"
        ),
        args![id],
        |r| r.get(0),
    )?;
    if n >= max as i64 {
        c.execute(
            "UPDATE sign_in_requests SET state = 'cancelled' WHERE id = ?1",
            args![id],
        )?;
        Ok(Refusal::Locked)
    } else {
        Ok(Refusal::Wrong)
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    /// What was written a moment ago is in the database file itself, not only in its
    /// WAL: the checkpointer copied it (SQLite alone waits for 1,000 pages of WAL, which
    /// these few rows are far from).
    #[test]
    fn recent_writes_reach_the_database_file_soon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(path.to_str().unwrap(), Duration::from_secs(5)).unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (x TEXT)").unwrap();
        for i in 0..10 {
            c.execute("INSERT INTO t VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
        // The file alone (no -wal beside it) opened as a database of its own.
        let copy = dir.path().join("copy.db");
        let rows_in_file = || -> Option<i64> {
            std::fs::copy(&path, &copy).ok()?;
            let c = Connection::open(&copy).ok()?;
            c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).ok()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = rows_in_file();
        while seen != Some(10) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            seen = rows_in_file();
        }
        assert_eq!(seen, Some(10), "the rows are still only in the WAL");
        assert!(
            path.with_extension("db-wal").exists(),
            "the WAL is in use, so the rows were copied from it"
        );
        drop(store);
    }
}
