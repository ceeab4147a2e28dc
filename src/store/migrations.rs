//! Schema migrations: one ladder of versioned steps for both backends. Each step runs
//! once, in order, inside a transaction, so a database written by an older release is
//! upgraded on start.
//!
//! The steps are written in SQLite's dialect; PostgreSQL runs the same steps translated
//! by [`postgres_ddl`] (64-bit integers, `bytea`, identity keys), with the version in a
//! table, `authbase_schema`, where SQLite keeps it in `PRAGMA user_version`. `nocase`
//! is SQLite's built-in ASCII case-insensitive collation; on PostgreSQL it is an ICU
//! collation of that name (case-insensitive, accent-sensitive) created by the first
//! migration, so the same `COLLATE NOCASE` in a column or a query means the same there.

use rusqlite::Connection;

use super::db::{args, Db};
use super::{Result, StoreError};

/// Index `i` upgrades the schema from version `i` to `i + 1`. Append; never edit.
const STEPS: &[&str] = &[
    // 1: users, sessions, sign-in requests, the mail outbox.
    r#"
    CREATE TABLE users (
        id          INTEGER PRIMARY KEY,
        email       TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created_at  INTEGER NOT NULL,
        blocked     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE sessions (
        id            INTEGER PRIMARY KEY,
        token_hash    BLOB NOT NULL UNIQUE,
        user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        confirmed     INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL,
        last_seen_at  INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        ip            TEXT NOT NULL DEFAULT '',
        user_agent    TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_expires ON sessions(expires_at);
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE sign_in_requests (
        id              INTEGER PRIMARY KEY,
        session_id      INTEGER REFERENCES sessions(id) ON DELETE SET NULL,
        user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        salt            BLOB NOT NULL,
        link_hash       BLOB NOT NULL UNIQUE,
        match_number    TEXT NOT NULL,
        state           TEXT NOT NULL DEFAULT 'pending',
        code_attempts   INTEGER NOT NULL DEFAULT 0,
        match_attempts  INTEGER NOT NULL DEFAULT 0,
        return_to       TEXT,
        ip              TEXT NOT NULL DEFAULT '',
        user_agent      TEXT NOT NULL DEFAULT '',
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL
    );
    CREATE INDEX sign_in_requests_expires ON sign_in_requests(expires_at);
    CREATE INDEX sign_in_requests_session ON sign_in_requests(session_id);
    CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY,
        kind             TEXT NOT NULL,
        request_id       INTEGER,
        recipient        TEXT NOT NULL,
        subject          TEXT NOT NULL DEFAULT '',
        text_body        TEXT NOT NULL DEFAULT '',
        html_body        TEXT NOT NULL DEFAULT '',
        state            TEXT NOT NULL DEFAULT 'queued',
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  INTEGER NOT NULL,
        last_error       TEXT,
        created_at       INTEGER NOT NULL,
        sent_at          INTEGER
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    "#,
    // 2: wrong one-time codes per address, across all of its sign-in requests.
    r#"
    ALTER TABLE users ADD COLUMN code_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN code_window_start INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: sessions ended by another process (the admin CLI), for running servers to
    // evict from their caches. user_id NULL = every session.
    r#"
    CREATE TABLE revocations (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id  INTEGER,
        at       INTEGER NOT NULL
    );
    "#,
    // 4: access control and the audit trail.
    // - users.invited: added by an admin (`authbase users add`), so allowed to sign in
    //   whatever [access] allowed_domains / allowed_emails say.
    // - user_groups: group membership managed from the CLI (config groups live in config).
    // - audit: security events, newest last.
    // - servers: running servers and the last revocation record each has applied, so
    //   the admin CLI can wait until every running server has evicted what it revoked.
    r#"
    ALTER TABLE users ADD COLUMN invited INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE user_groups (
        user_id  INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name     TEXT NOT NULL,
        PRIMARY KEY (user_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        event       TEXT NOT NULL,
        email       TEXT NOT NULL DEFAULT '',
        user_id     INTEGER,
        ip          TEXT NOT NULL DEFAULT '',
        user_agent  TEXT NOT NULL DEFAULT '',
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_email ON audit(email COLLATE NOCASE, at);
    CREATE TABLE servers (
        id            TEXT PRIMARY KEY,
        pid           INTEGER NOT NULL,
        started_at    INTEGER NOT NULL,
        seen_seq      INTEGER NOT NULL,
        heartbeat_at  INTEGER NOT NULL
    );
    "#,
    // 5: refused sign-ins (an address [access] does not admit, a blocked user) are
    // stored like any other, flagged silent: no mail, never confirmable, so they behave
    // exactly like a real one to whoever asked. users.confirmed_at: first sign-in, so
    // users that never signed in can be swept (existing users count as signed in).
    r#"
    ALTER TABLE sign_in_requests ADD COLUMN silent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN confirmed_at INTEGER;
    UPDATE users SET confirmed_at = created_at;
    "#,
    // 6: keys that sign identity assertions (see `signing`). `wrapped`: the Ed25519
    // private key sealed with a key derived from the server key file, so the database
    // alone does not give it away. retire_at NULL: the active key (exactly one); set:
    // still published in the JWKS until then, then swept.
    // revocations.kind: 'sessions' evicts cached sessions (user_id NULL: all of them);
    // 'keys' tells running servers to reload the signing keys.
    r#"
    CREATE TABLE signing_keys (
        kid         TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL,
        retire_at   INTEGER,
        wrapped     BLOB NOT NULL
    );
    CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys((retire_at IS NULL)) WHERE retire_at IS NULL;
    ALTER TABLE revocations ADD COLUMN kind TEXT NOT NULL DEFAULT 'sessions';
    "#,
    // 7: the email API (kind 'api') on the same outbox as sign-in mail.
    // - raw: the whole message, composed and checked when it was accepted, so every
    //   attempt sends the same bytes (same Message-ID); sender: its envelope MAIL FROM.
    // - deadline: given up on (failed) after this; NULL for older rows (max_attempts only).
    // - claimed_by: the server sending it right now (see `servers`); its lease is
    //   next_attempt_at, and a claim of a server that stopped heartbeating is released.
    // - idempotency_key: the API's Idempotency-Key, so a retried POST queues it once.
    // - users.api_created: created by the API's create_user, kept by the sweep.
    // The due index leads with kind: sign-in mail and API mail are separate lanes.
    r#"
    ALTER TABLE outbox ADD COLUMN raw BLOB;
    ALTER TABLE outbox ADD COLUMN sender TEXT;
    ALTER TABLE outbox ADD COLUMN message_id TEXT;
    ALTER TABLE outbox ADD COLUMN user_id INTEGER;
    ALTER TABLE outbox ADD COLUMN deadline INTEGER;
    ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
    ALTER TABLE outbox ADD COLUMN idempotency_key TEXT;
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox(state, kind, next_attempt_at);
    CREATE INDEX outbox_claimed ON outbox(claimed_by) WHERE claimed_by IS NOT NULL;
    CREATE UNIQUE INDEX outbox_idempotency ON outbox(idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX outbox_api_recipient ON outbox(recipient COLLATE NOCASE, created_at) WHERE kind = 'api';
    CREATE INDEX outbox_api_created ON outbox(created_at) WHERE kind = 'api';
    ALTER TABLE users ADD COLUMN api_created INTEGER NOT NULL DEFAULT 0;
    "#,
    // 8: the SHA-256 of the request that used an Idempotency-Key, so the key cannot
    // replay another request's answer.
    r#"
    ALTER TABLE outbox ADD COLUMN request_hash BLOB;
    "#,
    // 9: a session ended (signed out) on one server, for the others to evict: kind
    // 'session' with the token's hash (servers on one PostgreSQL database, or several
    // processes on one SQLite file).
    // limit_windows: rate-limit windows shared by the servers of one PostgreSQL database
    // (see `limits::SharedHit`); the key is an HMAC, under the server key, of the limited
    // value (an address's mailbox, an IP), times in Unix milliseconds.
    r#"
    ALTER TABLE revocations ADD COLUMN token_hash BLOB;
    CREATE TABLE limit_windows (
        name        TEXT NOT NULL,
        key         BLOB NOT NULL,
        start_ms    INTEGER NOT NULL,
        count       INTEGER NOT NULL,
        last_ms     INTEGER NOT NULL,
        expires_ms  INTEGER NOT NULL,
        PRIMARY KEY (name, key)
    );
    CREATE INDEX limit_windows_expires ON limit_windows(expires_ms);
    "#,
    // 10: `keys rotate` publishes a new signing key before it signs (see `signing`):
    // active_from is when it starts signing (NULL: at once, whatever the clocks); seq the
    // order the keys were made in (created_at has whole seconds; NULL: before this step).
    r#"
    ALTER TABLE signing_keys ADD COLUMN active_from INTEGER;
    ALTER TABLE signing_keys ADD COLUMN seq INTEGER;
    "#,
];

pub const LATEST: i64 = STEPS.len() as i64;

/// Migrate a SQLite file (on a connection of its own, before the pool opens).
pub fn run_sqlite(conn: &mut Connection) -> Result<i64> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    too_new(current)?;
    for (i, sql) in STEPS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if v > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(LATEST)
}

fn too_new(current: i64) -> Result<()> {
    if current > LATEST {
        return Err(StoreError::Db(format!(
            "database schema version {current} is newer than this authbase ({LATEST}); upgrade authbase"
        )));
    }
    Ok(())
}

/// Migrate a PostgreSQL database. Each step in a write transaction, which holds the
/// write lock, so replicas starting together migrate once.
pub fn run(db: &Db) -> Result<i64> {
    // A current schema (every start but the first after an upgrade) takes no lock.
    if existing_version(db)? == Some(LATEST) {
        return Ok(LATEST);
    }
    // Under the write lock too: replicas starting together would race to create it.
    let tx = db.transaction()?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS authbase_schema (version BIGINT NOT NULL)")?;
    tx.commit()?;
    for (i, sql) in STEPS.iter().enumerate() {
        let tx = db.transaction()?;
        let v = version(&tx)?;
        too_new(v)?;
        if v > i as i64 {
            continue;
        }
        if i == 0 {
            tx.execute_batch(
                "CREATE COLLATION IF NOT EXISTS nocase
                   (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
            )?;
        }
        tx.execute_batch(&postgres_ddl(sql))?;
        tx.execute("DELETE FROM authbase_schema", args![])?;
        tx.execute(
            "INSERT INTO authbase_schema (version) VALUES (?1)",
            args![i as i64 + 1],
        )?;
        tx.commit()?;
    }
    Ok(LATEST)
}

/// The schema version of a migrated database.
pub fn version(db: &Db) -> Result<i64> {
    if let Some(c) = db.sqlite() {
        return Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?);
    }
    db.query_one(
        "SELECT COALESCE(MAX(version), 0) FROM authbase_schema",
        args![],
    )
}

/// The schema version of a PostgreSQL database, `None` when authbase never migrated it.
pub fn existing_version(db: &Db) -> Result<Option<i64>> {
    let known: bool = db.query_one("SELECT to_regclass('authbase_schema') IS NOT NULL", args![])?;
    if !known {
        return Ok(None);
    }
    version(db).map(Some)
}

/// A step in SQLite's dialect as PostgreSQL runs it.
pub fn postgres_ddl(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace(
        "INTEGER PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
    .replace(") WITHOUT ROWID;", ");")
}
