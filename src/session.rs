//! "Who is signed in": the one place a request's session cookie is checked, used by
//! `/me` and by `/verify` on every proxied request.
//!
//! `/verify` runs before every request of every protected app, so known sessions are
//! answered from a bounded in-memory cache and never touch SQLite. Correctness rules:
//! - Expiry (absolute and idle) is checked against the cached times on every hit.
//! - Every change made by this process that ends a session (sign-out, a replaced
//!   session) evicts it before it answers, so the very next request sees it.
//! - A lookup that raced with an eviction does not put its (stale) result in the cache:
//!   evictions bump an epoch, and a miss only fills the cache if the epoch is unchanged.
//! - Entries are re-read from the database after `CACHE_TTL` at the latest, the bound
//!   for changes made by another process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{HeaderMap, HeaderValue};

use crate::app::App;
use crate::secrets::Hash;
use crate::store::{now, Revoked, SessionUser, StoreError};
use crate::web;

/// How long a cached session is trusted before it is read again from the database, at
/// most (see `trusted_for`). A safety net: changes made by this process evict at once,
/// and changes made by the admin CLI arrive through the revocation log within
/// `REVOCATION_POLL` (the CLI waits for running servers to acknowledge them).
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// How often a server looks for revocations made by other processes.
pub const REVOCATION_POLL: Duration = Duration::from_millis(250);
/// How long sessions are answered after the last successful look at the revocation
/// log (and at the database file). Past it the database cannot tell us about
/// revocations (locked, gone, replaced), so `current` fails closed: an error (503), not
/// a cached "signed in", until the log can be read again.
pub const SYNC_GRACE: Duration = Duration::from_secs(3);
const SHARDS: usize = 16;

/// Activity is recorded at most every 2% of the idle timeout (at most hourly), so reads
/// stay reads: 7 days idle -> once an hour per session, 2 s idle -> every request.
fn touch_every(idle: i64) -> i64 {
    (idle / 50).min(3600)
}

/// Queued activity records are written this often, all in one transaction.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(1);
/// Activity records waiting to be written at most; beyond it they are dropped (a lost
/// record can only end an idle session a little early).
pub const ACTIVITY_QUEUE: usize = 65_536;

/// Write queued activity records (`(session_id, seen_at)`) once a second until `stop`,
/// then write what is left.
pub async fn record_activity(
    store: crate::store::Store,
    queue: tokio::sync::mpsc::Receiver<(i64, i64)>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    crate::batch::flush_every(queue, ACTIVITY_FLUSH, stop, |batch| {
        let store = store.clone();
        async move {
            if let Err(e) = store.touch_many(batch).await {
                tracing::warn!(error = %e, "could not record session activity");
            }
        }
    })
    .await
}

/// A signed-in session, with its access facts and identity headers worked out once, so
/// `/verify` only compares.
#[derive(Debug)]
pub struct Signed {
    pub user: SessionUser,
    /// The global policy admits this user (or an admin added them). Re-checked on every
    /// re-read, so a user removed from `[access]` is refused at the next restart.
    pub allowed: bool,
    /// Groups from the database and from config, sorted, without duplicates.
    pub groups: Vec<String>,
    /// `X-User-Id` and `X-User-Email` values; `None` if the stored address could not be
    /// a header value (addresses are validated ASCII, so this would be a bug: fail closed).
    pub headers: Option<(HeaderValue, HeaderValue)>,
    /// `X-User-Groups`, when the user has any.
    pub groups_header: Option<HeaderValue>,
    /// The `sid` claim of its assertions (`assertion::session_ref`).
    pub sid: crate::assertion::SessionRef,
    /// Assertions given to this session, by host, for reuse (see `assertion`).
    pub tokens: crate::assertion::Tokens,
}

impl Signed {
    pub fn new(
        user: SessionUser,
        policy: &crate::access::Policy,
        sid: crate::assertion::SessionRef,
    ) -> Signed {
        let headers = HeaderValue::from_str(&user.email)
            .ok()
            .map(|e| (HeaderValue::from(user.user_id), e));
        let allowed = user.invited || policy.may_sign_in(&user.email);
        // Moved, not copied: a cached session keeps its groups once.
        let mut user = user;
        let mut groups: Vec<String> = std::mem::take(&mut user.groups)
            .into_iter()
            .chain(policy.config_groups(&user.email).iter().cloned())
            .filter(|g| crate::access::valid_group(g))
            .collect();
        groups.sort();
        groups.dedup();
        let groups_header = if groups.is_empty() {
            None
        } else {
            HeaderValue::from_str(&groups.join(",")).ok()
        };
        Signed {
            user,
            allowed,
            groups,
            headers,
            groups_header,
            sid,
            tokens: Default::default(),
        }
    }

    /// Take over the assertions `old` (the same session, read earlier) was given, if
    /// their claims still hold: same user, address and groups. A periodic re-read then
    /// does not make the whole working set sign again; a changed identity signs anew.
    pub fn adopt_tokens(&self, old: &Signed) {
        if old.sid == self.sid
            && old.user.user_id == self.user.user_id
            && old.user.email == self.user.email
            && old.groups == self.groups
        {
            self.tokens.copy_from(&old.tokens);
        }
    }
}

/// Keys are SHA-256 digests of session tokens, already uniformly distributed, and only
/// confirmed sessions are ever inserted, so nobody can choose keys to make collisions:
/// their first bytes serve as the hash instead of running SipHash on every lookup.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if let Some(chunk) = bytes.chunks(8).next() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

type Shard = HashMap<Hash, Entry, std::hash::BuildHasherDefault<DigestHasher>>;

/// How long one session is trusted after it was read: between 3/4 and all of
/// `CACHE_TTL`, by a share taken from its key (a digest, so spread evenly over sessions;
/// bytes the shard and map hash do not use). A working set cached at once — every
/// active session, minutes after a restart — is then read again over 75 s rather than
/// in the same second, and stays spread: each entry keeps its own period.
fn trusted_for(h: &Hash) -> Duration {
    let last8 = h[24..32].try_into().expect("8 of 32 bytes");
    let spread = CACHE_TTL.as_millis() as u64 / 4;
    CACHE_TTL - Duration::from_millis(crate::secrets::share(last8, spread))
}

#[derive(Clone)]
struct Entry {
    user: Arc<Signed>,
    /// Read again from the database from then on (`trusted_for`).
    stale_at: Instant,
    last_seen_at: i64,
}

pub struct SessionCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    epoch: AtomicU64,
    /// When the revocation log was last read successfully: milliseconds since `base`,
    /// plus one (0: never).
    synced: AtomicU64,
    base: Instant,
}

impl SessionCache {
    /// A cache holding at most `capacity` sessions (0 disables it).
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            epoch: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// The revocation log (and the database file) were checked just now.
    pub fn mark_synced(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.synced.store(ms, Ordering::Release);
    }

    /// Whether the last successful check is recent enough (see `SYNC_GRACE`) at `at`.
    pub fn in_sync(&self, at: Instant) -> bool {
        let synced = self.synced.load(Ordering::Acquire);
        synced != 0
            && at.saturating_duration_since(self.base).as_millis() as u64
                <= synced - 1 + SYNC_GRACE.as_millis() as u64
    }

    fn shard(&self, h: &Hash) -> std::sync::MutexGuard<'_, Shard> {
        // A poisoned shard only means another request panicked mid-insert; the map
        // itself is still consistent.
        self.shards[h[0] as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, h: &Hash) -> Option<Entry> {
        if self.per_shard == 0 {
            return None;
        }
        self.shard(h).get(h).cloned()
    }

    fn insert(&self, h: Hash, user: Arc<Signed>, epoch: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut s = self.shard(&h);
        // Checked under the shard lock, which evictions of this key also take.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if s.len() >= self.per_shard && !s.contains_key(&h) {
            if let Some(k) = s.keys().next().copied() {
                s.remove(&k);
            }
        }
        let last_seen_at = user.user.last_seen_at;
        s.insert(
            h,
            Entry {
                user,
                stale_at: Instant::now() + trusted_for(&h),
                last_seen_at,
            },
        );
    }

    fn set_last_seen(&self, h: &Hash, t: i64) {
        if let Some(e) = self.shard(h).get_mut(h) {
            e.last_seen_at = t;
        }
    }

    /// Forget a session; the next request reads the database.
    pub fn evict(&self, h: &Hash) {
        let mut s = self.shard(h);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        s.remove(h);
    }

    /// Forget every cached session of one user (`None`: of everyone).
    pub fn evict_user(&self, user_id: Option<i64>) {
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            self.epoch.fetch_add(1, Ordering::AcqRel);
            match user_id {
                Some(id) => s.retain(|_, e| e.user.user.user_id != id),
                None => s.clear(),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The confirmed, live session of these request headers, if any; records activity for
/// the idle timeout. Pending sessions (link not yet confirmed) never count.
pub async fn current(app: &App, headers: &HeaderMap) -> Result<Option<Arc<Signed>>, StoreError> {
    current_at(app, headers, now(), Instant::now()).await
}

/// `current` at a given time: `t` in Unix seconds for expiry, `at` for the cache's
/// clock (`/verify` reads the clocks once and uses them for the assertion too).
pub async fn current_at(
    app: &App,
    headers: &HeaderMap,
    t: i64,
    at: Instant,
) -> Result<Option<Arc<Signed>>, StoreError> {
    let (hash, stale) = match cached_at(app, headers, t, at) {
        Lookup::Done(r) => return r,
        Lookup::Read { hash, stale } => (hash, stale),
    };
    let idle = app.cfg.session.idle_timeout.secs();
    let cache = &app.sessions;
    let epoch = cache.epoch.load(Ordering::Acquire);
    let Some(mut s) = app.store.session(hash, t, idle).await? else {
        cache.evict(&hash);
        return Ok(None);
    };
    if !s.confirmed {
        return Ok(None);
    }
    if idle > 0 && t - s.last_seen_at >= touch_every(idle) {
        let _ = app.activity.try_send((s.session_id, t));
        s.last_seen_at = t;
    }
    let signed = Signed::new(
        s,
        &app.cfg.derived.access,
        crate::assertion::session_ref(&hash),
    );
    if let Some(old) = stale {
        signed.adopt_tokens(&old);
    }
    let signed = Arc::new(signed);
    cache.insert(hash, signed.clone(), epoch);
    Ok(Some(signed))
}

/// What the session cache alone says about a request's session (`cached_at`).
pub enum Lookup {
    /// The answer, without the database: no session cookie, a cached session (live; or
    /// expired, and now evicted), or the cache is out of step with the revocation log.
    Done(Result<Option<Arc<Signed>>, StoreError>),
    /// The database has to be read: the session is not cached, is due to be read again
    /// (`stale`: its assertions may carry over), or is idle by this server's count.
    Read {
        hash: Hash,
        stale: Option<Arc<Signed>>,
    },
}

/// The first half of `current_at`, which never waits: `/verify` answers a cached session
/// without an async handler at all (see `server::Answer`). Side effects only with an
/// answer (activity recorded, an expired entry evicted), so a `Read` can be followed by
/// `current_at` for the same request.
pub fn cached_at(app: &App, headers: &HeaderMap, t: i64, at: Instant) -> Lookup {
    let Some(hash) = web::session_hash(headers, &app.cfg.cookie.name) else {
        return Lookup::Done(Ok(None));
    };
    let idle = app.cfg.session.idle_timeout.secs();
    let cache = &app.sessions;
    // Fail closed while revocations cannot be followed (see `SYNC_GRACE`).
    if !cache.in_sync(at) {
        return Lookup::Done(Err(StoreError::Unavailable(
            "the revocation log has not been readable for a while".into(),
        )));
    }
    // A cached session due to be read again: its assertions carry over if the database
    // says the same (see `Signed::adopt_tokens`).
    let mut stale = None;
    if let Some(e) = cache.get(&hash) {
        if e.user.user.expires_at <= t {
            cache.evict(&hash);
            return Lookup::Done(Ok(None));
        }
        // Idle by what this server saw: the database decides, since the session may have
        // been in use on another server meanwhile.
        let idle_here = idle > 0 && e.last_seen_at + idle <= t;
        if at < e.stale_at && !idle_here {
            if idle > 0 && t - e.last_seen_at >= touch_every(idle) {
                cache.set_last_seen(&hash, t);
                // Off the request path, written in batches.
                let _ = app.activity.try_send((e.user.user.session_id, t));
            }
            return Lookup::Done(Ok(Some(e.user)));
        }
        if !idle_here {
            stale = Some(e.user);
        }
    }
    Lookup::Read { hash, stale }
}

/// Where a server stands in the revocation log, and its id in the store's list of
/// running servers.
pub struct LogPosition {
    id: String,
    /// The newest record when the server started; `None` if it could not be read.
    seen: Option<i64>,
    registered: bool,
}

/// Read the end of the revocation log and register this server as having applied all of
/// it. Called before the first request is served, so the cache holds nothing older and
/// an admin command that commits a record after this waits for the server's
/// acknowledgement. Database errors are logged; `follow_revocations` then tries again.
pub async fn join_revocations(app: &App) -> LogPosition {
    let id = app.server_id.clone();
    let seen = match app.store.last_revocation().await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "revocation log unavailable; retrying");
            None
        }
    };
    let registered = match seen {
        Some(n) => {
            if app.store.check_file().await.is_ok() {
                app.sessions.mark_synced();
            }
            register(app, &id, n).await
        }
        None => false,
    };
    LogPosition {
        id,
        seen,
        registered,
    }
}

/// Follow the revocation log written by other processes (the admin CLI) from `start`
/// and evict what it names, until `stop` is set.
///
/// The server acknowledges each record in the store right after evicting, heartbeats at
/// least every `store::HEARTBEAT`, and unregisters when it stops, so an admin command
/// can wait until every running server has applied its change. Database errors are
/// logged and retried; a server that cannot read the log stops heartbeating, and is
/// soon no longer waited for.
pub async fn follow_revocations(
    app: std::sync::Arc<App>,
    start: LogPosition,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let LogPosition {
        id,
        seen,
        mut registered,
    } = start;
    let mut seen = match seen {
        Some(n) => n,
        None => {
            let n = loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(REVOCATION_POLL) => {}
                }
                match app.store.last_revocation().await {
                    Ok(n) => break n,
                    Err(e) => tracing::warn!(error = %e, "revocation log unavailable; retrying"),
                }
            };
            // Requests were answered meanwhile and may have cached sessions that a record
            // at or before `n` revoked; this loop never replays those, so start empty.
            app.sessions.evict_user(None);
            n
        }
    };
    // The newest record this server has told the store it applied, and the newest it
    // applied that a command may be waiting on (a sign-out's record waits for no one:
    // it is acknowledged with the next heartbeat, not with a write of its own).
    let mut acked = seen;
    let mut awaited = seen;
    let mut reported = Instant::now();
    // Logged once when the database becomes unavailable, once when it is back.
    let mut down = false;
    let mut ack: Option<tokio::task::JoinHandle<(bool, bool, i64)>> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(REVOCATION_POLL) => {}
            // PostgreSQL: another server wrote a record (or the listener reconnected).
            _ = app.store.revocation_posted() => {}
        }
        // The file first: open connections would go on reading a file moved away.
        let polled = match app.store.check_file().await {
            Ok(()) => app.store.revocations_since(seen).await,
            Err(e) => Err(e),
        };
        let rows = match polled {
            Ok(rows) => rows,
            Err(e) => {
                // No heartbeat either: a server that cannot read the log must not look
                // live; and past SYNC_GRACE no session is answered from memory.
                if !down {
                    tracing::warn!(error = %e, "revocation log unavailable; after {} s no session is accepted until it is back", SYNC_GRACE.as_secs());
                    down = true;
                }
                continue;
            }
        };
        let mut complete = true;
        for (seq, what) in rows {
            match what {
                Revoked::Keys => {
                    // Not acknowledged until it worked: `keys rotate` waits for it.
                    if let Err(e) = reload_keys(&app).await {
                        tracing::warn!(error = %e, "could not reload the signing keys; retrying");
                        complete = false;
                        break;
                    }
                    tracing::info!(kid = %app.signing.current().kid(now()), "signing keys reloaded");
                    awaited = seq;
                }
                // Signed out on another server (or by this one: evicted already), or
                // revoked by `sessions revoke --id`, which waits for the acknowledgement.
                Revoked::Session {
                    hash,
                    awaited: wait,
                } => {
                    app.sessions.evict(&hash);
                    if wait {
                        tracing::info!("a session revoked by another process");
                        awaited = seq;
                    }
                }
                Revoked::Sessions(user_id) => {
                    app.sessions.evict_user(user_id);
                    tracing::info!(user_id, "sessions revoked by another process");
                    awaited = seq;
                }
            }
            seen = seq;
        }
        if complete {
            app.sessions.mark_synced();
            if down {
                tracing::info!("revocation log readable again");
                down = false;
            }
        }
        // Acknowledgements and heartbeats are writes: they run beside this loop, so a
        // write lock held elsewhere (reads still work in WAL mode) never stalls
        // following the log. One at a time.
        if let Some(h) = ack.take_if(|h| h.is_finished()) {
            if let Ok((ok, reg, at)) = h.await {
                registered = reg;
                if ok {
                    acked = acked.max(at);
                }
            }
        }
        if ack.is_some() {
            continue;
        }
        // The poll interval counts too: the gap between heartbeats stays under HEARTBEAT.
        let due = reported.elapsed() + REVOCATION_POLL >= crate::store::HEARTBEAT;
        if registered && acked >= awaited && !due {
            continue;
        }
        reported = Instant::now();
        let (app2, id2) = (app.clone(), id.clone());
        ack = Some(tokio::spawn(async move {
            if registered {
                match app2.store.ack_server(id2.clone(), seen, now()).await {
                    Ok(true) => (true, true, seen),
                    // Swept or deleted meanwhile: register again.
                    Ok(false) => {
                        let reg = register(&app2, &id2, seen).await;
                        (reg, reg, seen)
                    }
                    // Tried again at the next poll while `acked` lags behind.
                    Err(e) => {
                        tracing::warn!(error = %e, "could not acknowledge revocations");
                        (false, true, seen)
                    }
                }
            } else {
                let reg = register(&app2, &id2, seen).await;
                (reg, reg, seen)
            }
        }));
    }
    if let Some(h) = ack {
        if let Ok((_, reg, _)) = h.await {
            registered = reg;
        }
    }
    if registered {
        if let Err(e) = app.store.unregister_server(id).await {
            tracing::warn!(error = %e, "could not unregister this server");
        }
    }
}

/// Read the signing keys again (after `keys rotate`): a key published ahead is in the
/// JWKS at once and signs from its start; with `--now`, every assertion from then on is
/// signed with the new key, cached ones included (they carry the generation).
async fn reload_keys(app: &App) -> Result<(), String> {
    let keys = app.store.signing_keys().await.map_err(|e| e.to_string())?;
    app.signing
        .replace(crate::signing::Ring::from_stored(&keys, &app.key)?, now());
    Ok(())
}

/// Record this server as running and up to date with revocation `seen`; false if the
/// database refused (the caller tries again at the next poll).
async fn register(app: &App, id: &str, seen: i64) -> bool {
    match app
        .store
        .register_server(id.to_string(), std::process::id(), now(), seen)
        .await
    {
        Ok(()) => {
            tracing::debug!(
                server_id = id,
                seen,
                "registered for revocation acknowledgements"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not register this server; retrying");
            false
        }
    }
}

/// End a session: delete it, then evict it, so no later request can see it.
pub async fn end(app: &App, hash: Hash) -> Result<bool, StoreError> {
    let r = app.store.delete_session(hash, now()).await;
    app.sessions.evict(&hash);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64) -> SessionUser {
        SessionUser {
            session_id: id,
            user_id: id,
            email: format!("u{id}@example.com"),
            confirmed: true,
            last_seen_at: 0,
            expires_at: i64::MAX,
            invited: false,
            groups: vec![],
        }
    }

    fn signed(id: i64) -> Arc<Signed> {
        Arc::new(Signed::new(
            user(id),
            &Default::default(),
            crate::assertion::session_ref(&[0; 32]),
        ))
    }

    /// Re-reads of sessions cached together are spread over the last quarter of
    /// `CACHE_TTL`, never later than it.
    #[test]
    fn cached_sessions_are_read_again_within_the_last_quarter_of_the_ttl() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0u32..5000 {
            let h = crate::secrets::hash_bytes(&i.to_le_bytes());
            let d = trusted_for(&h);
            assert!(d <= CACHE_TTL && d >= CACHE_TTL * 3 / 4, "{d:?}");
            seen.insert(d.as_secs());
        }
        // Every second of the window is used by some session.
        let window = CACHE_TTL.as_secs() * 3 / 4..CACHE_TTL.as_secs();
        assert!(
            window.clone().all(|s| seen.contains(&s)),
            "{window:?}: {seen:?}"
        );
    }

    /// Pretend the revocation log was read at `at` (the tests move the clock forward).
    fn synced_at(c: &SessionCache, at: Instant) {
        let ms = at.duration_since(c.base).as_millis() as u64 + 1;
        c.synced.store(ms, Ordering::Release);
    }

    /// Through `current_at` and a real database: an entry past its time is read again,
    /// and keeps its assertion (no new signature) unless its claims changed meanwhile.
    #[tokio::test]
    async fn a_session_read_again_keeps_its_assertion_unless_its_claims_changed() {
        let db = crate::store::testing::database();
        let (database, d) = (&db.database, db.dir.path().display());
        let cfg = crate::config::Config::from_toml(
            &format!(
                "database = \"{database}\"\nsecret_key_file = \"{d}/a.key\"\n\
                 public_url = \"https://auth.example.com\"\n\
                 redirect_url = \"https://app.example.com/\"\n\
                 [cookie]\ndomain = \"example.com\"\n[email]\ntransport = \"log\"\n"
            ),
            &crate::config::tests::NoEnv,
        )
        .unwrap();
        let (app, _background) = crate::prepare(cfg).unwrap();
        let (session, link) =
            crate::store::test_sign_in_request(&app.store, "ada@example.com").await;
        let done = app
            .store
            .confirm_same_browser(link, session, now(), 3600)
            .await
            .unwrap()
            .unwrap();
        let mut h = HeaderMap::new();
        let cookie = format!("{}={}", app.cfg.cookie.name, done.token);
        h.insert(
            hyper::header::COOKIE,
            HeaderValue::from_str(&cookie).unwrap(),
        );
        let o = crate::forwarded::Original {
            https: true,
            host: "app.example.com".into(),
            port: None,
            path: "/",
            method: "GET",
        };
        let signatures = || {
            let text = app.metrics.render(&Default::default());
            let line = text
                .lines()
                .find(|l| l.starts_with("authbase_assertions_signed_total "))
                .unwrap()
                .to_string();
            line.split(' ').nth(1).unwrap().parse::<u64>().unwrap()
        };
        let (t, at) = (now(), Instant::now());
        synced_at(&app.sessions, at);
        let first = current_at(&app, &h, t, at).await.unwrap().unwrap();
        let token = crate::assertion::header(&app, &first, &o, t).unwrap();
        assert_eq!(signatures(), 1);

        // Past CACHE_TTL: a new entry from the database, the same token, no signature.
        let later = at + CACHE_TTL + Duration::from_secs(1);
        synced_at(&app.sessions, later);
        let again = current_at(&app, &h, t, later).await.unwrap().unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "not read again");
        assert_eq!(
            crate::assertion::header(&app, &again, &o, t).unwrap(),
            token
        );
        assert_eq!(signatures(), 1, "the token was not carried over");

        // A group added in the database (no eviction here): the next re-read has it,
        // and the token is signed anew with it.
        app.store
            .set_user_groups("ada@example.com".into(), vec!["ops".into()], vec![], t)
            .await
            .unwrap();
        let latest = later + CACHE_TTL + Duration::from_secs(1);
        synced_at(&app.sessions, latest);
        let regrouped = current_at(&app, &h, t, latest).await.unwrap().unwrap();
        assert_eq!(regrouped.groups, ["ops"]);
        let new_token = crate::assertion::header(&app, &regrouped, &o, t).unwrap();
        assert_ne!(new_token, token);
        assert_eq!(signatures(), 2);
    }

    #[test]
    fn bounded() {
        let c = SessionCache::new(160);
        for i in 0..10_000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            h[0] = (i % 256) as u8;
            c.insert(h, signed(i as i64), 0);
        }
        assert!(c.len() <= 160, "{}", c.len());
    }

    #[test]
    fn a_lookup_racing_an_eviction_does_not_fill_the_cache() {
        let c = SessionCache::new(100);
        let h = [7u8; 32];
        let epoch = c.epoch.load(Ordering::Acquire);
        c.evict(&h); // sign-out lands while the lookup is in the database
        c.insert(h, signed(1), epoch);
        assert!(c.get(&h).is_none());
        c.insert(h, signed(1), c.epoch.load(Ordering::Acquire));
        assert!(c.get(&h).is_some());
        c.evict(&h);
        assert!(c.get(&h).is_none());
    }

    #[test]
    fn evict_user_forgets_only_that_user() {
        let c = SessionCache::new(100);
        c.insert([1; 32], signed(1), 0);
        c.insert([2; 32], signed(2), 0);
        c.evict_user(Some(1));
        assert!(c.get(&[1; 32]).is_none());
        assert!(c.get(&[2; 32]).is_some());
        c.evict_user(None);
        assert!(c.is_empty());
    }

    #[test]
    fn zero_capacity_disables() {
        let c = SessionCache::new(0);
        c.insert([1; 32], signed(1), 0);
        assert!(c.is_empty());
    }
}
