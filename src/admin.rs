//! Admin commands that work on the database directly, while servers run:
//! `authbase users …`, `authbase sessions list|revoke`, `authbase keys list|rotate` and
//! `authbase audit`.
//!
//! Changes that running servers must see are written with a revocation record (see
//! `store::users`); each command then waits until every running server has acknowledged
//! it (`Store::await_servers`), so when it returns, the servers already answer
//! accordingly. A server that does not confirm in time still re-reads every cached
//! session within `session::CACHE_TTL`.

pub mod outbox;

use std::time::Duration;

use crate::config::{Config, Dur};
use crate::email_addr;
use crate::pages::utc;
use crate::session::CACHE_TTL;
use crate::store::{now, AuditFilter, Store, StoreError, UserChange};

/// How long a command waits for running servers to apply its change.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// An admin command that failed, with the message for stderr.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input: an invalid address or group name, an unknown user (exit 65).
    #[error("{0}")]
    Input(String),
    /// The database cannot be opened or used (exit 69).
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Unavailable(e.to_string())
    }
}

/// What a successful command prints: `out` on stdout, `warning` on stderr.
#[derive(Debug, Default)]
pub struct Report {
    pub out: String,
    pub warning: Option<String>,
}

impl From<String> for Report {
    fn from(out: String) -> Report {
        Report { out, warning: None }
    }
}

pub(crate) fn open(cfg: &Config) -> Result<Store, AdminError> {
    // A typo in `database` must not quietly create an empty database and "succeed".
    if !crate::store::db::is_postgres(&cfg.database)
        && !std::path::Path::new(&*cfg.database).exists()
    {
        return Err(AdminError::Unavailable(format!(
            "database {} does not exist: check `database` in the config (or start the server once to create it)",
            cfg.database
        )));
    }
    Store::open(cfg.database_target(), Duration::from_secs(5)).map_err(|e| {
        AdminError::Unavailable(format!(
            "database {}: {e}",
            crate::store::db::shown(&cfg.database)
        ))
    })
}

/// A normalised address; `what` names the argument in the error.
fn addr(what: &str, input: &str) -> Result<String, AdminError> {
    email_addr::normalise(input).map_err(|e| AdminError::Input(format!("{what} {input:?}: {e}")))
}

fn address(user: Option<&str>) -> Result<Option<String>, AdminError> {
    user.map(|u| addr("--user", u)).transpose()
}

fn no_user(email: &str) -> AdminError {
    AdminError::Input(format!("no user {email}"))
}

/// Group names end up in a comma-separated `X-User-Groups` header.
pub fn check_group(name: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::Input(format!(
            "invalid group name {name:?}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )))
    }
}

pub(crate) fn json<T: serde::Serialize>(rows: &T) -> Result<Report, AdminError> {
    serde_json::to_string_pretty(rows)
        .map(|s| Report::from(s + "\n"))
        .map_err(|e| AdminError::Unavailable(e.to_string()))
}

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Wait for running servers to apply revocation `seq` and say how that went. The change
/// is committed already, so nothing here fails the command.
async fn applied(store: &Store, seq: Option<i64>, mut report: Report) -> Report {
    let Some(seq) = seq else {
        return report;
    };
    let minutes = CACHE_TTL.as_secs() / 60;
    match store.await_servers(seq, ACK_TIMEOUT).await {
        Ok((0, 0)) => report.out.push_str("no running server to notify\n"),
        Ok((done, waiting)) => {
            report.out.push_str(&format!(
                "{} applied it\n",
                plural(done, "running server", "running servers")
            ));
            if waiting > 0 {
                let (it, applies, reads, rereads) = if waiting == 1 {
                    ("it", "applies", "reads", "re-reads")
                } else {
                    ("they", "apply", "read", "re-read")
                };
                report.warning = Some(format!(
                    "{} did not confirm within {} s; {it} {applies} the change when {it} next {reads} \
                     the revocation log, and {rereads} cached sessions within {minutes} minutes at the latest",
                    plural(waiting, "running server", "running servers"),
                    ACK_TIMEOUT.as_secs(),
                ));
            }
        }
        Err(e) => {
            report.warning = Some(format!(
                "could not check that running servers applied the change ({e}); they re-read \
                 cached sessions within {minutes} minutes at the latest"
            ))
        }
    }
    report
}

/// Database groups, then config groups marked as such: `ops,admins(config)`.
fn all_groups(db: &[String], config: &[String]) -> String {
    let mut v: Vec<String> = db.to_vec();
    v.extend(config.iter().map(|g| format!("{g}(config)")));
    groups_text(&v)
}

fn groups_text(groups: &[String]) -> String {
    if groups.is_empty() {
        "-".into()
    } else {
        groups.join(",")
    }
}

// ---------------------------------------------------------------- users

/// `authbase users list [--user EMAIL] [--json]`.
pub async fn users_list(
    cfg: &Config,
    user: Option<&str>,
    json_out: bool,
) -> Result<Report, AdminError> {
    let who = address(user)?;
    let store = open(cfg)?;
    let mut rows = store.list_users(who.clone(), now()).await?;
    let policy = &cfg.derived.access;
    for r in &mut rows {
        r.config_groups = policy.config_groups(&r.email).to_vec();
        r.allowed = r.invited || policy.may_sign_in(&r.email);
    }
    if let (Some(w), true) = (&who, rows.is_empty()) {
        return Err(no_user(w));
    }
    if json_out {
        return json(&rows);
    }
    let mut out = format!(
        "{:<8} {:<32} {:<8} {:<8} {:<9} {:<22} {:<22} {}\n",
        "ID", "EMAIL", "STATUS", "INVITED", "SESSIONS", "LAST SEEN", "CREATED", "GROUPS"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<8} {:<32} {:<8} {:<8} {:<9} {:<22} {:<22} {}\n",
            r.id,
            r.email,
            if r.blocked {
                "blocked"
            } else if !r.allowed {
                "denied"
            } else {
                "active"
            },
            if r.invited { "yes" } else { "no" },
            r.sessions,
            r.last_seen_at.map(utc).unwrap_or_else(|| "-".into()),
            utc(r.created_at),
            all_groups(&r.groups, &r.config_groups),
        ));
    }
    out.push_str(&format!("{} user(s)\n", rows.len()));
    Ok(out.into())
}

/// `authbase users add EMAIL [--group G]...`.
pub async fn users_add(cfg: &Config, email: &str, groups: &[String]) -> Result<Report, AdminError> {
    let email = addr("EMAIL", email)?;
    groups.iter().try_for_each(|g| check_group(g))?;
    let store = open(cfg)?;
    let c = store.add_user(email, groups.to_vec(), now()).await?;
    let mut out = if c.created {
        format!("added {} (invited)\n", c.email)
    } else {
        format!("{} already existed; now invited\n", c.email)
    };
    if c.blocked {
        out.push_str("note: the user is blocked; `authbase users unblock` lets them sign in\n");
    }
    if !c.groups.is_empty() {
        out.push_str(&format!("groups: {}\n", c.groups.join(", ")));
    }
    Ok(applied(&store, c.seq, out.into()).await)
}

/// `authbase users remove EMAIL`.
pub async fn users_remove(cfg: &Config, email: &str) -> Result<Report, AdminError> {
    let email = addr("EMAIL", email)?;
    let store = open(cfg)?;
    let c = store
        .remove_user(email.clone(), now())
        .await?
        .ok_or_else(|| no_user(&email))?;
    let out = format!(
        "removed {} ({} ended)\n",
        c.email,
        plural(c.sessions, "session", "sessions")
    );
    Ok(applied(&store, c.seq, out.into()).await)
}

/// `authbase users block EMAIL`.
pub async fn users_block(cfg: &Config, email: &str) -> Result<Report, AdminError> {
    let email = addr("EMAIL", email)?;
    let store = open(cfg)?;
    let c = store.block_user(email, now()).await?;
    let out = if c.created {
        format!("blocked {} (a new address: it cannot sign up)\n", c.email)
    } else {
        blocked_text(&c)
    };
    Ok(applied(&store, c.seq, out.into()).await)
}

fn blocked_text(c: &UserChange) -> String {
    format!(
        "blocked {}: {} ended, {} cancelled, {} dropped\n",
        c.email,
        plural(c.sessions, "session", "sessions"),
        plural(c.requests, "sign-in request", "sign-in requests"),
        plural(c.mails, "queued email", "queued emails"),
    )
}

/// `authbase users unblock EMAIL`.
pub async fn users_unblock(cfg: &Config, email: &str) -> Result<Report, AdminError> {
    let email = addr("EMAIL", email)?;
    let store = open(cfg)?;
    let c = store
        .unblock_user(email.clone(), now())
        .await?
        .ok_or_else(|| no_user(&email))?;
    let out = format!("unblocked {}; they can sign in again\n", c.email);
    Ok(applied(&store, c.seq, out.into()).await)
}

/// `authbase users groups EMAIL [--add G]... [--remove G]...`: prints the resulting groups.
pub async fn users_groups(
    cfg: &Config,
    email: &str,
    add: &[String],
    remove: &[String],
) -> Result<Report, AdminError> {
    let email = addr("EMAIL", email)?;
    add.iter().chain(remove).try_for_each(|g| check_group(g))?;
    if let Some(g) = add.iter().find(|g| remove.contains(g)) {
        return Err(AdminError::Input(format!(
            "group {g:?} is both added and removed"
        )));
    }
    let store = open(cfg)?;
    let c = store
        .set_user_groups(email.clone(), add.to_vec(), remove.to_vec(), now())
        .await?
        .ok_or_else(|| no_user(&email))?;
    let mut out = if c.groups.is_empty() {
        format!("{}: no groups\n", c.email)
    } else {
        format!("{}: {}\n", c.email, c.groups.join(", "))
    };
    let from_config = cfg.derived.access.config_groups(&c.email);
    if !from_config.is_empty() {
        out.push_str(&format!(
            "also from [access.groups] in the config: {}\n",
            from_config.join(", ")
        ));
    }
    Ok(applied(&store, c.seq, out.into()).await)
}

// ---------------------------------------------------------------- sessions

/// `authbase sessions list [--user EMAIL] [--json]`.
pub async fn sessions_list(
    cfg: &Config,
    user: Option<&str>,
    json_out: bool,
) -> Result<Report, AdminError> {
    let who = address(user)?;
    let store = open(cfg)?;
    let rows = store.list_sessions(who, now()).await?;
    if json_out {
        return json(&rows);
    }
    let mut out = format!(
        "{:<8} {:<32} {:<22} {:<22} {:<22} {}\n",
        "ID", "EMAIL", "SIGNED IN", "LAST SEEN", "EXPIRES", "FROM"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<8} {:<32} {:<22} {:<22} {:<22} {}\n",
            r.id,
            r.email,
            utc(r.created_at),
            utc(r.last_seen_at),
            utc(r.expires_at),
            crate::pages::requester(&r.user_agent, &r.ip)
        ));
    }
    out.push_str(&format!("{} session(s)\n", rows.len()));
    Ok(out.into())
}

/// `authbase sessions revoke --id N`: one session, by the id `sessions list` shows.
pub async fn session_revoke(cfg: &Config, id: i64) -> Result<Report, AdminError> {
    let store = open(cfg)?;
    let Some((email, seq)) = store.revoke_session(id, now()).await? else {
        return Err(AdminError::Input(format!(
            "no session {id} (see `authbase sessions list`)"
        )));
    };
    Ok(applied(
        &store,
        Some(seq),
        format!("revoked session {id} of {email}\n").into(),
    )
    .await)
}

/// `authbase sessions revoke (--user EMAIL | --all)`.
pub async fn sessions_revoke(cfg: &Config, user: Option<&str>) -> Result<Report, AdminError> {
    let who = address(user)?;
    let store = open(cfg)?;
    let Some((n, seq)) = store.revoke(who.clone(), now()).await? else {
        return Err(no_user(who.as_deref().unwrap_or_default()));
    };
    let out = match who {
        Some(w) => format!("revoked {n} session(s) of {w}\n"),
        None => format!("revoked all {n} session(s)\n"),
    };
    Ok(applied(&store, Some(seq), out.into()).await)
}

// ---------------------------------------------------------------- signing keys

/// A signing key as `keys list --json` shows it (the public part only).
#[derive(Debug, serde::Serialize)]
pub struct KeyRow {
    pub kid: String,
    pub created_at: i64,
    /// The key signing now.
    pub active: bool,
    /// When it signs, or signed, from.
    pub active_from: i64,
    /// Published ahead: it starts signing at `active_from`.
    pub next: bool,
    /// Published until then (retired keys).
    pub retire_at: Option<i64>,
}

/// `authbase keys list [--json]`: the assertion signing keys, oldest first.
pub async fn keys_list(cfg: &Config, json_out: bool) -> Result<Report, AdminError> {
    let store = open(cfg)?;
    let t = now();
    let keys = store.signing_keys().await?;
    let signing = crate::signing::signing_key_at(&keys, t).map(|k| k.kid.clone());
    let ordered = crate::signing::in_creation_order(&keys);
    let rows: Vec<KeyRow> = ordered
        .iter()
        .enumerate()
        .map(|(i, k)| KeyRow {
            active: signing.as_deref() == Some(k.kid.as_str()),
            active_from: crate::signing::shown_start(k),
            next: crate::signing::will_sign(&ordered, i, t),
            kid: k.kid.clone(),
            created_at: k.created_at,
            retire_at: k.retire_at,
        })
        .collect();
    if json_out {
        return json(&rows);
    }
    let mut out = format!("{:<44} {:<22} {}\n", "KID", "CREATED", "STATUS");
    let until = |at: Option<i64>| at.map(|at| format!(", published until {}", utc(at)));
    for r in &rows {
        let status = if r.active {
            match r.retire_at {
                Some(at) => format!(
                    "active until the next key signs, then published until {}",
                    utc(at)
                ),
                None => "active".to_string(),
            }
        } else if r.next {
            format!(
                "next: published, signs from {}{}",
                utc(r.active_from),
                until(r.retire_at).unwrap_or_default()
            )
        } else {
            match r.retire_at {
                Some(at) if at > t && r.active_from > t => format!(
                    "superseded before it signed (never signs), published until {}",
                    utc(at)
                ),
                Some(at) if at > t => format!("retiring, published until {}", utc(at)),
                Some(_) => "retired (deleted at the next sweep)".to_string(),
                None => "published".to_string(),
            }
        };
        out.push_str(&format!(
            "{:<44} {:<22} {status}\n",
            r.kid,
            utc(r.created_at)
        ));
    }
    if rows.is_empty() {
        out.push_str("no signing key yet: the server creates one when it starts\n");
    }
    Ok(out.into())
}

/// `authbase keys rotate [--now | --delay D]`: a new signing key, published at once and
/// signing after `delay` (default `signing::PUBLISH_AHEAD`, so that verifiers have it
/// before they meet it); the key signing until then stays published for
/// `signing::OVERLAP` after the switch, so tokens it signed still verify. Waits until
/// running servers have the new key.
pub async fn keys_rotate(cfg: &Config, delay: Option<&str>) -> Result<Report, AdminError> {
    let ahead = match delay {
        None => crate::signing::PUBLISH_AHEAD,
        Some(d) => {
            crate::config::Dur::parse(d)
                .map_err(|e| AdminError::Input(format!("--delay: {e}")))?
                .0
        }
    };
    if ahead > Duration::from_secs(86400) {
        return Err(AdminError::Input("--delay: at most 1d".into()));
    }
    let store = open(cfg)?;
    let path = cfg.secret_key_path();
    // The server's own key file, never a new one: a key sealed under another key would
    // stop the servers from starting.
    if !path.exists() {
        return Err(AdminError::Unavailable(format!(
            "server key {} does not exist: check `secret_key_file` in the config",
            path.display()
        )));
    }
    let key = crate::secrets::ServerKey::load_or_create(&path).map_err(AdminError::Unavailable)?;
    let t = now();
    let from = t + ahead.as_secs() as i64;
    let pair = crate::signing::KeyPair::generate();
    let mut stored = pair.stored(&key, t);
    stored.active_from = (from > t).then_some(from);
    let seq = store
        .rotate_signing_key(stored, crate::signing::OVERLAP)
        .await?;
    let until = utc(from + crate::signing::OVERLAP.as_secs() as i64);
    let out = if from > t {
        format!(
            "new signing key {} is published now and signs from {} (in {}), when apps' cached key sets have expired; the key it replaces signs until then and stays published until {until}\n",
            pair.kid,
            utc(from),
            crate::config::Dur(ahead),
        )
    } else {
        format!(
            "new signing key {} signs now; the previous key stays published until {until}\n\
             apps that fetched the key set in the last minutes may refuse new tokens until they fetch it again\n",
            pair.kid,
        )
    };
    Ok(applied(&store, Some(seq), out.into()).await)
}

// ---------------------------------------------------------------- database

/// `authbase migrate`: create the database if needed and bring its schema up to date
/// (servers do this on start too; this is for deployment steps and checks).
pub async fn migrate(cfg: &Config) -> Result<Report, AdminError> {
    let shown = crate::store::db::shown(&cfg.database);
    let before = Store::schema_version(cfg.database_target())
        .map_err(|e| AdminError::Unavailable(format!("database {shown}: {e}")))?;
    Store::open(cfg.database_target(), Duration::from_secs(5))
        .map_err(|e| AdminError::Unavailable(format!("database {shown}: {e}")))?;
    let latest = Store::latest_schema();
    Ok(match before {
        None => format!("created {shown} at schema version {latest}\n"),
        Some(v) if v == latest => format!("{shown} is at schema version {latest}, the latest\n"),
        Some(v) => format!("migrated {shown} from schema version {v} to {latest}\n"),
    }
    .into())
}

/// `authbase copy --from DB [--to DB]`: every row of one database into another (by
/// default the configured one), e.g. from the SQLite file to PostgreSQL. Stop the
/// servers first: what they write during the copy would not be in it.
pub async fn copy(cfg: &Config, from: &str, to: Option<&str>) -> Result<Report, AdminError> {
    use crate::store::db::{is_postgres, shown};
    let to = to.unwrap_or(cfg.database_target());
    if !is_postgres(from) && !std::path::Path::new(from).exists() {
        return Err(AdminError::Input(format!("{from} does not exist")));
    }
    if shown(from) == shown(to) {
        return Err(AdminError::Input(
            "--from and --to name the same database".into(),
        ));
    }
    let open = |db: &str| {
        Store::open(db, Duration::from_secs(5))
            .map_err(|e| AdminError::Unavailable(format!("database {}: {e}", shown(db))))
    };
    let (source, dest) = (open(from)?, open(to)?);
    let copied = source
        .copy_into(&dest)
        .await
        .map_err(|e| AdminError::Unavailable(format!("copy into {}: {e}", shown(to))))?;
    let mut out = format!("copied {} into {}:\n", shown(from), shown(to));
    for (table, n) in copied {
        out.push_str(&format!("  {table:<17} {n:>9} rows\n"));
    }
    out.push_str(
        "start the servers on the new database, with the same server key file (links, codes and signing keys depend on it)\n",
    );
    Ok(out.into())
}

/// `authbase backup PATH`: an online copy of the database (servers keep running).
pub async fn backup(cfg: &Config, dest: &std::path::Path) -> Result<Report, AdminError> {
    if dest.exists() {
        return Err(AdminError::Input(format!(
            "{} exists; back up to a new file",
            dest.display()
        )));
    }
    let store = open(cfg)?;
    // Written under a temporary name and renamed when complete and checked, so a
    // failed or interrupted backup never leaves a file that looks like one.
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let pages = match store.backup(partial.clone()).await {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(AdminError::Unavailable(format!(
                "backup to {}: {e}",
                dest.display()
            )));
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&partial, dest).map_err(|e| {
        AdminError::Unavailable(format!(
            "cannot move the backup into {}: {e}",
            dest.display()
        ))
    })?;
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(format!(
        "backed up {} to {} ({pages} pages, {bytes} bytes, integrity ok)\n\
         the server key ({}) is not in it: keep a copy of that file too\n",
        cfg.database,
        dest.display(),
        cfg.secret_key_file
    )
    .into())
}

// ---------------------------------------------------------------- audit

/// `authbase audit [--user EMAIL] [--since WHEN] [--event NAME] [--limit N] [--json]`.
pub async fn audit(
    cfg: &Config,
    user: Option<&str>,
    since: Option<&str>,
    event: Option<&str>,
    limit: u32,
    json_out: bool,
) -> Result<Report, AdminError> {
    let email = address(user)?;
    let since = since
        .map(|s| parse_since(s, now()).map_err(|e| AdminError::Input(format!("--since: {e}"))))
        .transpose()?;
    if let Some(e) = event.filter(|e| !crate::audit::EVENTS.contains(e)) {
        return Err(AdminError::Input(format!(
            "--event {e:?} is not an audit event; one of: {}",
            crate::audit::EVENTS.join(", ")
        )));
    }
    let store = open(cfg)?;
    let rows = store
        .list_audit(AuditFilter {
            email,
            since,
            event: event.map(str::to_string),
            limit,
        })
        .await?;
    if json_out {
        return json(&rows);
    }
    let mut out = format!(
        "{:<22} {:<20} {:<32} {:<28} {}\n",
        "TIME", "EVENT", "EMAIL", "FROM", "DETAIL"
    );
    for r in &rows {
        let from = if r.ip.is_empty() {
            r.user_agent.clone()
        } else {
            crate::pages::requester(&r.user_agent, &r.ip)
        };
        let line = format!(
            "{:<22} {:<20} {:<32} {:<28} {}",
            utc(r.at),
            r.event,
            if r.email.is_empty() { "-" } else { &r.email },
            from,
            r.detail
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} event(s)\n", rows.len()));
    Ok(out.into())
}

/// `--since`: a duration back from `now` (`1h`, `7d`, as in the config), a UTC date
/// (`2026-11-28`, midnight) or a UTC time (`2026-11-28T10:00:00Z`). Unix seconds.
pub fn parse_since(s: &str, now: i64) -> Result<i64, String> {
    let bad = || {
        format!("`{s}` is not a duration (1h, 7d), a UTC date (2026-11-28) or a UTC time (2026-11-28T10:00:00Z)")
    };
    if !s.contains('-') {
        return Dur::parse(s).map(|d| now - d.secs()).map_err(|_| bad());
    }
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let shape = match b.len() {
        10 => b[4] == b'-' && b[7] == b'-',
        20 => {
            b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[13] == b':'
                && b[16] == b':'
                && b[19] == b'Z'
        }
        _ => false,
    };
    if !shape {
        return Err(bad());
    }
    let (y, m, d) = match (num(0, 4), num(5, 7), num(8, 10)) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err(bad()),
    };
    let (hh, mm, ss) = if b.len() == 20 {
        match (num(11, 13), num(14, 16), num(17, 19)) {
            (Some(h), Some(mi), Some(se)) => (h, mi, se),
            _ => return Err(bad()),
        }
    } else {
        (0, 0, 0)
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(format!("`{s}`: no month {m}")),
    };
    if y < 1970 || !(1..=month_days).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return Err(format!("`{s}` is not a valid UTC date and time"));
    }
    Ok(days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm, the inverse of `pages::utc`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_durations_count_back_from_now() {
        assert_eq!(parse_since("1h", 10_000), Ok(6_400));
        assert_eq!(parse_since("7d", 1_000_000), Ok(1_000_000 - 7 * 86400));
        assert_eq!(parse_since("0", 5), Ok(5));
        assert!(parse_since("1w", 0)
            .unwrap_err()
            .contains("a UTC date (2026-11-28)"));
        assert!(parse_since("h", 0).is_err());
        assert!(parse_since("", 0).is_err());
    }

    #[test]
    fn since_dates_and_times_are_utc() {
        assert_eq!(parse_since("1970-01-01", 0), Ok(0));
        assert_eq!(parse_since("1970-01-02T00:00:01Z", 0), Ok(86_401));
        assert_eq!(parse_since("2000-03-01", 0), Ok(951_868_800));
        assert_eq!(parse_since("2026-11-28T10:00:00Z", 0), Ok(1_795_860_000));
        assert_eq!(parse_since("2024-02-29", 0), Ok(1_709_164_800));
        // Round trip through the printer.
        let t = parse_since("2026-11-28T10:07:00Z", 0).unwrap();
        assert_eq!(utc(t), "2026-11-28 10:07 UTC");
        assert_eq!(
            utc(parse_since("2099-12-31T23:59:59Z", 0).unwrap()),
            "2099-12-31 23:59 UTC"
        );
    }

    #[test]
    fn since_is_strict() {
        for s in [
            "2026-11-28T10:00:00", // no zone
            "2026-11-28T10:00:00+01:00",
            "2026-11-28 10:00:00Z", // space
            "2026-11-28t10:00:00z",
            "2026-11-28T10:00Z",
            "2026-1-28",
            "26-11-28",
            "2026-11-28 ",
            "2026-13-01",
            "2026-00-10",
            "2026-02-29", // not a leap year
            "1900-02-29",
            "2026-04-31",
            "2026-11-00",
            "2026-11-28T24:00:00Z",
            "2026-11-28T10:60:00Z",
            "2026-11-28T10:00:60Z",
            "1969-12-31",
            "+202-11-28",
            "2026-+1-28",
            "２０２６-11-28",
            "-1d",
        ] {
            assert!(parse_since(s, 0).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn group_names() {
        for g in ["admins", "a", "ops.eu-1", "A_B", &"x".repeat(64)] {
            assert!(check_group(g).is_ok(), "{g}");
        }
        for g in ["", "a,b", "a b", "ä", "a\nb", "a;b", &"x".repeat(65)] {
            let e = check_group(g).unwrap_err().to_string();
            assert!(e.contains(&format!("{g:?}")), "{e}");
        }
    }
}
