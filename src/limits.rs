//! Abuse protection: rate limits held in memory, bounded in size.
//!
//! Each [`Limiter`] counts hits per key (an address, a client IP, or one global key) in
//! a fixed window that starts with the key's first hit: at most `count` hits in it,
//! optionally at least `gap` between two hits. A refused hit is not counted and says
//! when to retry.
//!
//! Keys are hashed with a per-process random SipHash key (callers cannot aim collisions)
//! and stored as 64-bit digests, about 60 bytes an entry. Each limiter keeps at most
//! `tracked_keys` entries: when full it forgets expired windows first and then, under a
//! flood of distinct keys, arbitrary ones. Forgetting can only let a forgotten key start
//! afresh; the global ceiling still bounds the mail sent.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{LimitsConfig, Rate};

const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Slot {
    start: Instant,
    count: u32,
    last: Instant,
}

/// Keys are already SipHash digests: hash them no further.
#[derive(Default)]
struct Identity(u64);
impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
type Map = HashMap<u64, Slot, std::hash::BuildHasherDefault<Identity>>;

pub struct Limiter {
    pub name: &'static str,
    rate: Option<(u32, Duration)>,
    gap: Duration,
    hasher: RandomState,
    shards: Vec<Mutex<Map>>,
    per_shard: usize,
}

/// A refused hit: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: &'static str,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

impl Limiter {
    pub fn new(name: &'static str, rate: Rate, gap: Duration, capacity: usize) -> Limiter {
        Limiter {
            name,
            rate: rate.0,
            gap,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn off(&self) -> bool {
        self.rate.is_none() && self.gap.is_zero()
    }

    fn window(&self) -> Duration {
        self.rate
            .map(|(_, w)| w)
            .unwrap_or(Duration::ZERO)
            .max(self.gap)
    }

    fn verdict(&self, s: &Slot, now: Instant) -> Result<(), Limited> {
        let wait = wait_for(
            self.rate,
            self.gap,
            now.saturating_duration_since(s.start),
            s.count,
            now.saturating_duration_since(s.last),
        );
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Limited {
                limit: self.name,
                retry_after: wait,
            })
        }
    }

    fn with_slot<T>(&self, key: &[u8], f: impl FnOnce(&mut Map, u64) -> T) -> T {
        let h = self.hasher.hash_one(key);
        let mut m = self.shards[(h >> 32) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut m, h)
    }

    /// Would a hit for `key` be refused now? Counts nothing.
    pub fn check(&self, key: &[u8], now: Instant) -> Result<(), Limited> {
        if self.off() {
            return Ok(());
        }
        self.with_slot(key, |m, h| match m.get(&h) {
            Some(s) => self.verdict(s, now),
            None => Ok(()),
        })
    }

    /// Count a hit for `key`, or refuse it (not counted) when over the limit.
    pub fn hit(&self, key: &[u8], now: Instant) -> Result<(), Limited> {
        if self.off() {
            return Ok(());
        }
        let window = self.window();
        self.with_slot(key, |m, h| {
            if let Some(s) = m.get_mut(&h) {
                self.verdict(s, now)?;
                if now >= s.start + window.max(Duration::from_nanos(1)) {
                    *s = Slot {
                        start: now,
                        count: 0,
                        last: now,
                    };
                }
                s.count += 1;
                s.last = now;
                return Ok(());
            }
            if m.len() >= self.per_shard {
                m.retain(|_, s| now < s.start + window);
                // Still full: a flood of distinct keys. Forget a tenth at once, so this
                // scan runs once per many inserts, not on every one.
                if m.len() * 10 >= self.per_shard * 9 {
                    let drop: Vec<u64> = m.keys().take(self.per_shard / 10 + 1).copied().collect();
                    for k in drop {
                        m.remove(&k);
                    }
                }
            }
            m.insert(
                h,
                Slot {
                    start: now,
                    count: 1,
                    last: now,
                },
            );
            Ok(())
        })
    }

    /// Keys remembered now.
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

/// How long a hit must wait: for a key whose window started `since_start` ago and holds
/// `count` hits, the last `since_last` ago. Zero: it may go ahead. The one rule of both
/// the in-memory limiters and the shared ones.
fn wait_for(
    rate: Option<(u32, Duration)>,
    gap: Duration,
    since_start: Duration,
    count: u32,
    since_last: Duration,
) -> Duration {
    let mut wait = Duration::ZERO;
    if let Some((n, w)) = rate {
        if since_start < w && count >= n {
            wait = w - since_start;
        }
    }
    if since_last < gap {
        wait = wait.max(gap - since_last);
    }
    wait
}

/// A limiter's window for one key as the database keeps it when several servers share
/// the limits (PostgreSQL): times in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredWindow {
    pub start: i64,
    pub count: u32,
    pub last: i64,
}

/// One hit (or check) against a limiter shared through the database. `key` is stored as
/// given: callers pass a keyed digest (`ServerKey::limit_key`), not the address or IP.
#[derive(Debug, Clone)]
pub struct SharedHit {
    pub limit: &'static str,
    pub key: Vec<u8>,
    rate: Option<(u32, Duration)>,
    gap: Duration,
    /// Count the hit (`false`: only check it).
    counts: bool,
}

impl SharedHit {
    pub(crate) fn new(l: &Limiter, key: &[u8], counts: bool) -> SharedHit {
        SharedHit {
            limit: l.name,
            key: key.to_vec(),
            rate: l.rate,
            gap: l.gap,
            counts,
        }
    }

    pub fn off(&self) -> bool {
        self.rate.is_none() && self.gap.is_zero()
    }

    /// How long a stored window lasts past its start and last hit, in milliseconds.
    pub fn keep_ms(&self, w: &StoredWindow) -> i64 {
        let window = self.rate.map(|(_, w)| w).unwrap_or(Duration::ZERO);
        (w.start + window.as_millis() as i64).max(w.last + self.gap.as_millis() as i64)
    }

    /// This hit at `now` against the stored window `w`: the window to store (`None`:
    /// unchanged), or how long to wait (refused, not counted).
    pub fn apply(
        &self,
        w: Option<StoredWindow>,
        now: i64,
    ) -> Result<Option<StoredWindow>, Duration> {
        let ago = |t: i64| Duration::from_millis(now.saturating_sub(t).max(0) as u64);
        if let Some(w) = w {
            let wait = wait_for(self.rate, self.gap, ago(w.start), w.count, ago(w.last));
            if !wait.is_zero() {
                return Err(wait);
            }
        }
        if !self.counts {
            return Ok(None);
        }
        let window = self
            .rate
            .map(|(_, w)| w)
            .unwrap_or(Duration::ZERO)
            .max(self.gap)
            .max(Duration::from_millis(1));
        Ok(Some(match w {
            Some(w) if ago(w.start) < window => StoredWindow {
                start: w.start,
                count: w.count + 1,
                last: now,
            },
            _ => StoredWindow {
                start: now,
                count: 1,
                last: now,
            },
        }))
    }
}

/// The key for an address's mailbox: lower case, without a `+tag`, so `victim+1@`,
/// `victim+2@` … share one allowance.
pub fn mailbox_key(email: &str) -> String {
    let lower = email.to_ascii_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split('+').next().unwrap_or(local);
            format!("{local}@{domain}")
        }
        None => lower,
    }
}

/// The key for a client IP: the address, or its /64 for IPv6 (one subscriber's range).
pub fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

/// Every limit of a running server.
pub struct Limits {
    pub sign_in_address: Limiter,
    pub sign_in_ip: Limiter,
    pub sign_in_global: Limiter,
    pub codes_ip: Limiter,
    pub unknown_links_ip: Limiter,
    /// Not a limit users see: at most one audit record a minute per (limit, key) or
    /// (user, host), so a flood cannot flood the audit table.
    pub audit_echo: Limiter,
    /// Repeatable events recorded overall: a flood from many addresses cannot fill the
    /// disk with audit rows (see `AUDIT_BUDGET`).
    pub audit_budget: Limiter,
    /// Repeatable events not recorded because of `audit_budget`.
    pub audit_suppressed: std::sync::atomic::AtomicU64,
}

/// At most this many repeatable events of each kind (refusals, rate limits, denied
/// access) a minute go to the audit table and log; the rest are counted in a warning.
pub const AUDIT_BUDGET: u32 = 600;

impl Limits {
    pub fn new(c: &LimitsConfig) -> Limits {
        let n = c.tracked_keys;
        let none = Duration::ZERO;
        Limits {
            sign_in_address: Limiter::new(
                "sign_in_per_address",
                c.sign_in_per_address,
                c.sign_in_address_gap.0,
                n,
            ),
            sign_in_ip: Limiter::new("sign_in_per_ip", c.sign_in_per_ip, none, n),
            sign_in_global: Limiter::new("sign_in_global", c.sign_in_global, none, 16),
            codes_ip: Limiter::new("codes_per_ip", c.codes_per_ip, none, n),
            unknown_links_ip: Limiter::new("unknown_links_per_ip", c.unknown_links_per_ip, none, n),
            audit_echo: Limiter::new("audit", Rate(Some((1, Duration::from_secs(60)))), none, n),
            audit_budget: Limiter::new(
                "audit",
                Rate(Some((AUDIT_BUDGET, Duration::from_secs(60)))),
                none,
                16,
            ),
            audit_suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `POST /auth`: per IP (every attempt), then per mailbox, then the global ceiling
    /// (looked at before the mailbox is counted, so a full ceiling costs nobody their
    /// per-address allowance).
    /// The limits of one `POST /auth`: in memory on SQLite (one server), through the
    /// database on PostgreSQL, which several replicas share: there a bot spreading its
    /// requests over them meets the same limits as on one (see `sign_in`).
    pub async fn sign_in_checked(
        &self,
        store: &crate::store::Store,
        key: &crate::secrets::ServerKey,
        ip: IpAddr,
        email: &str,
    ) -> Result<Result<(), Limited>, crate::store::StoreError> {
        if !store.is_postgres() {
            return Ok(self.sign_in(ip, email, Instant::now()));
        }
        let (ip, mailbox) = (
            key.limit_key(&ip_key(ip)),
            key.limit_key(mailbox_key(email).as_bytes()),
        );
        let hits = vec![
            SharedHit::new(&self.sign_in_ip, &ip, true),
            SharedHit::new(&self.sign_in_global, b"", false),
            SharedHit::new(&self.sign_in_address, &mailbox, true),
            SharedHit::new(&self.sign_in_global, b"", true),
        ];
        Ok(store
            .shared_limits(hits, crate::store::now_ms())
            .await?
            .map_err(|(limit, retry_after)| Limited { limit, retry_after }))
    }

    /// The limits of one `POST /auth`, in memory: per IP, the global ceiling (checked),
    /// per address, then the global ceiling counted.
    pub fn sign_in(&self, ip: IpAddr, email: &str, now: Instant) -> Result<(), Limited> {
        self.sign_in_ip.hit(&ip_key(ip), now)?;
        self.sign_in_global.check(b"", now)?;
        self.sign_in_address
            .hit(mailbox_key(email).as_bytes(), now)?;
        self.sign_in_global.hit(b"", now)
    }

    /// Remembered keys over all limits (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.sign_in_address.len()
            + self.sign_in_ip.len()
            + self.codes_ip.len()
            + self.unknown_links_ip.len()
            + self.audit_echo.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        Rate::parse(s).unwrap()
    }

    #[test]
    fn counts_then_refuses_then_resets() {
        let l = Limiter::new("t", rate("3/1m"), Duration::ZERO, 100);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.hit(b"k", t0 + Duration::from_secs(i)).is_ok());
        }
        let e = l.hit(b"k", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.retry_secs(), 50);
        assert!(l.hit(b"other", t0).is_ok());
        assert!(l.check(b"k", t0 + Duration::from_secs(59)).is_err());
        assert!(l.hit(b"k", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn minimum_gap() {
        let l = Limiter::new("t", rate("10/1h"), Duration::from_secs(30), 100);
        let t0 = Instant::now();
        assert!(l.hit(b"k", t0).is_ok());
        let e = l.hit(b"k", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.retry_secs(), 20);
        assert!(l.hit(b"k", t0 + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn bounded_under_a_flood_of_distinct_keys() {
        let l = Limiter::new("t", rate("5/1h"), Duration::ZERO, 1000);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            assert!(l.hit(&i.to_be_bytes(), t0).is_ok());
        }
        assert!(l.len() <= 1008, "{}", l.len());
    }

    /// The shared form keeps the in-memory rules: count, refuse (uncounted) with the
    /// wait, start a new window after it, and a minimum gap.
    #[test]
    fn shared_hits_follow_the_same_rules() {
        let l = Limiter::new("t", rate("3/1m"), Duration::from_secs(2), 100);
        let hit = SharedHit::new(&l, b"k", true);
        let mut w = None;
        for i in 0..3 {
            w = hit.apply(w, i * 10_000).unwrap().or(w);
        }
        assert_eq!(w.map(|w| w.count), Some(3));
        assert_eq!(hit.apply(w, 30_000), Err(Duration::from_secs(30)));
        assert_eq!(
            SharedHit::new(&l, b"k", false).apply(w, 59_000),
            Err(Duration::from_secs(1))
        );
        let fresh = hit.apply(w, 60_000).unwrap().unwrap();
        assert_eq!((fresh.start, fresh.count), (60_000, 1));
        assert_eq!(hit.apply(Some(fresh), 61_000), Err(Duration::from_secs(1)));
        assert_eq!(hit.keep_ms(&fresh), 120_000);
        let off = Limiter::new("t", rate("off"), Duration::ZERO, 16);
        assert!(SharedHit::new(&off, b"k", true).off());
    }

    /// Through a real database (either backend): a refused hit stops the run and says
    /// which limit; the hits before it stay counted; windows are per name and key.
    #[tokio::test]
    async fn shared_limits_in_the_database() {
        let (_db, s) = crate::store::testing::store();
        let ip = Limiter::new("per_ip", rate("5/1h"), Duration::ZERO, 16);
        let addr = Limiter::new("per_address", rate("2/1h"), Duration::ZERO, 16);
        let run = |key: &'static [u8]| {
            vec![
                SharedHit::new(&ip, b"1.2.3.4", true),
                SharedHit::new(&addr, key, true),
            ]
        };
        let t = 1_000_000;
        assert_eq!(s.shared_limits(run(b"a"), t).await.unwrap(), Ok(()));
        assert_eq!(s.shared_limits(run(b"a"), t + 1).await.unwrap(), Ok(()));
        assert_eq!(
            s.shared_limits(run(b"a"), t + 2).await.unwrap(),
            Err(("per_address", Duration::from_millis(3_600_000 - 2)))
        );
        // The IP hit before the refusal counted: 3 so far; 2 more, then refused.
        assert_eq!(s.shared_limits(run(b"b"), t + 3).await.unwrap(), Ok(()));
        assert_eq!(s.shared_limits(run(b"b"), t + 4).await.unwrap(), Ok(()));
        assert_eq!(
            s.shared_limits(run(b"c"), t + 5)
                .await
                .unwrap()
                .unwrap_err()
                .0,
            "per_ip"
        );
        // A new window an hour later.
        assert_eq!(
            s.shared_limits(run(b"a"), t + 3_600_001).await.unwrap(),
            Ok(())
        );
    }

    #[test]
    fn off_limits_nothing() {
        let l = Limiter::new("t", rate("off"), Duration::ZERO, 16);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.hit(b"k", t0).is_ok());
        }
        assert!(l.is_empty());
    }

    #[test]
    fn plus_tags_share_a_mailbox() {
        assert_eq!(mailbox_key("Victim+1@Example.com"), "victim@example.com");
        assert_eq!(mailbox_key("victim@example.com"), "victim@example.com");
        assert_eq!(mailbox_key("+x@example.com"), "@example.com");
    }

    #[test]
    fn ipv6_by_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(m), vec![192, 0, 2, 1]);
    }
}
