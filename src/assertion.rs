//! `X-User-Assertion`: a signed statement of who is signed in, for which host, until
//! when — a compact JWS (EdDSA) that an app verifies with the keys at
//! `/.well-known/jwks.json`, so it need not trust the network path the way it must for
//! `X-User-Email`.
//!
//! Claims: `iss` (public_url, no trailing slash), `aud` (the protected host: see
//! `audience`), `sub` (user id, as a string), `email`, `groups` (only when any), `iat`,
//! `exp` (`iat + assertion.ttl`) and `sid` (a session reference that is not the
//! secret). No `jti`: a token is reused for many requests by design (below), so a token
//! id would name no single request; `sid` + `iat` tell tokens apart.
//!
//! Signing costs tens of microseconds, `/verify` answers in a few: each cached session
//! keeps the tokens it was given for up to `PER_HOST` hosts and reuses one until between
//! half and three quarters of its lifetime have passed (or the keys change; see
//! `reuse_for`), so a busy session signs about once per host per `5/8 ttl`, and an app
//! always gets a token with a quarter of its lifetime left at least. A hit clones a
//! prebuilt header value: no signing, no allocation.

use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::error::AppError;
use crate::forwarded::Original;
use crate::secrets::Hash;
use crate::session::Signed;

/// Hosts whose token one session keeps at most; beyond it the oldest is replaced.
pub const PER_HOST: usize = 8;

/// The `sid` claim of a session: the first 16 bytes of SHA-256 over a domain tag and the
/// stored token hash, base64url. Stable for the session's life and the same on every
/// server, but neither the cookie nor the stored hash: it names a session in logs and
/// lets an app tell sessions apart, and gives nothing to sign in with.
pub fn session_ref(token_hash: &Hash) -> SessionRef {
    let mut h = Sha256::new();
    h.update(b"authbase assertion sid v1\0");
    h.update(token_hash);
    let mut r = [0u8; 16];
    r.copy_from_slice(&h.finalize()[..16]);
    SessionRef(r)
}

/// A `sid` kept as its 16 bytes (in every cached session: 16 bytes instead of a
/// 22-character string on the heap), encoded when a token is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRef([u8; 16]);

impl SessionRef {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// How long (seconds) a token signed for this session is reused: `ttl / 2` plus a share
/// of `ttl / 4` taken from the session reference (a hash, so spread evenly over
/// sessions). Sessions cached together — every active one, minutes after a restart —
/// then do not all sign again in the same second but over `ttl / 4` (a wave still,
/// ~3,000 signatures a second for 100,000 busy sessions at the default ttl, which evens
/// out over a few lifetimes as their periods differ). (Ed25519 signing costs ~25 µs
/// here, a hit ~2 µs.)
fn reuse_for(sid: &SessionRef, ttl: i64) -> i64 {
    let first8 = sid.0[..8].try_into().expect("8 of 16 bytes");
    ttl / 2 + crate::secrets::share(first8, (ttl / 4) as u64) as i64
}

/// The `aud` claim for a request: its host as the proxy forwarded it, lowercase, without
/// a trailing dot (IPv6 literals in brackets), plus `:port` when the port is not the
/// default of the request's scheme (80 for http, 443 for https).
pub fn audience(o: &Original) -> String {
    match o.port {
        Some(p) => format!("{}:{p}", o.host),
        None => o.host.to_string(),
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    email: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
    iat: i64,
    exp: i64,
    sid: String,
}

fn claims<'a>(signed: &'a Signed, iss: &'a str, aud: &'a str, now: i64, ttl: i64) -> Claims<'a> {
    Claims {
        iss,
        aud,
        sub: signed.user.user_id.to_string(),
        email: &signed.user.email,
        groups: &signed.groups,
        iat: now,
        exp: now + ttl,
        sid: signed.sid.encode(),
    }
}

#[derive(Clone)]
struct Cached {
    host: Box<str>,
    port: Option<u16>,
    /// `signing::Keys::generation` when signed: a key change makes it stale.
    generation: u64,
    /// Signed at `iat`; reused until `iat + reuse_for(sid, ttl)`.
    refresh_at: i64,
    value: HeaderValue,
}

/// The tokens one session has been given, by host. Lives in the session cache entry, so
/// it goes when the session is evicted.
#[derive(Default)]
pub struct Tokens(Mutex<Vec<Cached>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

impl Tokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cached>> {
        // Entries are replaced whole; a panic elsewhere cannot leave one half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, o: &Original, generation: u64, now: i64) -> Option<HeaderValue> {
        self.lock()
            .iter()
            .find(|c| {
                c.port == o.port
                    && *c.host == *o.host
                    && c.generation == generation
                    && now < c.refresh_at
            })
            .map(|c| c.value.clone())
    }

    fn put(&self, c: Cached) {
        let mut v = self.lock();
        if let Some(i) = v.iter().position(|e| e.host == c.host && e.port == c.port) {
            v[i] = c;
        } else if v.len() < PER_HOST {
            // Most sessions visit one host: grow one slot at a time (a plain push would
            // reserve four, ~250 bytes per cached session for nothing).
            v.reserve_exact(1);
            v.push(c);
        } else if let Some(oldest) = v.iter_mut().min_by_key(|e| e.refresh_at) {
            *oldest = c;
        }
    }

    /// Replace these tokens with a copy of `other`'s (a session read again; the caller
    /// checked the claims are the same).
    pub fn copy_from(&self, other: &Tokens) {
        let copy = other.lock().clone();
        *self.lock() = copy;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The `X-User-Assertion` value for this signed-in session and request at `now` (Unix
/// seconds, the time the session was checked at).
pub fn header(app: &App, signed: &Signed, o: &Original, now: i64) -> Result<HeaderValue, AppError> {
    // Before the ring: a token is never tagged with a newer generation than its key.
    let generation = app.signing.generation();
    if let Some(v) = signed.tokens.get(o, generation, now) {
        return Ok(v);
    }
    let ttl = app.cfg.assertion.ttl.secs();
    let aud = audience(o);
    let ring = app.signing.current();
    let token = ring
        .sign(&claims(signed, app.cfg.public_base(), &aud, now, ttl), now)
        .map_err(|e| AppError::Internal(format!("cannot sign an assertion: {e}")))?;
    app.metrics.assertion_signed();
    // Shrunk to fit: the cache keeps one per session and host, and the signer's string
    // may carry spare capacity.
    let value =
        HeaderValue::from_maybe_shared(bytes::Bytes::from(token.into_bytes().into_boxed_slice()))
            .map_err(|_| AppError::Internal("an assertion is not a header value".into()))?;
    signed.tokens.put(Cached {
        host: o.host.as_ref().into(),
        port: o.port,
        generation,
        refresh_at: now + reuse_for(&signed.sid, ttl),
        value: value.clone(),
    });
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Reuse lasts from half to three quarters of the lifetime, spread over sessions.
    #[test]
    fn reuse_is_spread_between_a_half_and_three_quarters_of_the_lifetime() {
        for ttl in [30, 120, 600] {
            let mut seen = std::collections::BTreeSet::new();
            for i in 0u32..2000 {
                let sid = session_ref(&crate::secrets::hash_bytes(&i.to_le_bytes()));
                let r = reuse_for(&sid, ttl);
                assert!((ttl / 2..=ttl / 2 + ttl / 4).contains(&r), "{ttl}: {r}");
                seen.insert(r);
            }
            // Every second of the window is used by some session.
            assert_eq!(seen.len() as i64, ttl / 4 + 1, "{ttl}");
        }
    }

    use crate::store::SessionUser;

    fn signed(groups: &[&str]) -> Signed {
        let user = SessionUser {
            session_id: 9,
            user_id: 42,
            email: "ada@example.com".into(),
            confirmed: true,
            last_seen_at: 0,
            expires_at: i64::MAX,
            invited: false,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        Signed::new(user, &Default::default(), session_ref(&[7; 32]))
    }

    fn original(host: &str, port: Option<u16>) -> Original<'static> {
        Original {
            https: true,
            host: Cow::Owned(host.into()),
            port,
            path: "/",
            method: "GET",
        }
    }

    /// A session read again from the database keeps its tokens only while their claims
    /// still hold.
    #[test]
    fn a_re_read_session_keeps_its_tokens_only_if_its_claims_are_unchanged() {
        let a = original("a.example", None);
        let with_token = || {
            let s = signed(&["ops"]);
            s.tokens.put(Cached {
                host: "a.example".into(),
                port: None,
                generation: 0,
                refresh_at: 100,
                value: HeaderValue::from_static("token"),
            });
            s
        };
        let same = signed(&["ops"]);
        same.adopt_tokens(&with_token());
        assert_eq!(same.tokens.get(&a, 0, 99).unwrap(), "token");

        let regrouped = signed(&["ops", "admins"]);
        regrouped.adopt_tokens(&with_token());
        assert!(regrouped.tokens.get(&a, 0, 99).is_none(), "groups changed");

        let mut readdressed = signed(&["ops"]);
        readdressed.user.email = "ada@example.org".into();
        readdressed.adopt_tokens(&with_token());
        assert!(
            readdressed.tokens.get(&a, 0, 99).is_none(),
            "address changed"
        );

        let other = Signed::new(
            SessionUser {
                user_id: 43,
                groups: vec!["ops".into()],
                ..signed(&[]).user
            },
            &Default::default(),
            session_ref(&[7; 32]),
        );
        other.adopt_tokens(&with_token());
        assert!(other.tokens.get(&a, 0, 99).is_none(), "another user");

        let other_session = Signed::new(
            SessionUser {
                groups: vec!["ops".into()],
                ..signed(&[]).user
            },
            &Default::default(),
            session_ref(&[8; 32]),
        );
        other_session.adopt_tokens(&with_token());
        assert!(
            other_session.tokens.get(&a, 0, 99).is_none(),
            "another session"
        );
    }

    #[test]
    fn claims_are_as_documented() {
        let s = signed(&["ops", "admins"]);
        let c = serde_json::to_value(claims(
            &s,
            "https://auth.example.com",
            "app.example.com",
            1000,
            120,
        ))
        .unwrap();
        let o = c.as_object().unwrap();
        assert_eq!(
            o.keys().map(String::as_str).collect::<Vec<_>>(),
            ["iss", "aud", "sub", "email", "groups", "iat", "exp", "sid"]
        );
        assert_eq!(c["iss"], "https://auth.example.com");
        assert_eq!(c["aud"], "app.example.com");
        assert_eq!(c["sub"], "42");
        assert_eq!(c["email"], "ada@example.com");
        assert_eq!(c["groups"], serde_json::json!(["admins", "ops"]));
        assert_eq!(c["iat"], 1000);
        assert_eq!(c["exp"], 1120);
        assert_eq!(c["sid"], session_ref(&[7; 32]).encode());
        // No groups: no claim.
        let s = signed(&[]);
        let c = serde_json::to_value(claims(&s, "i", "a", 0, 1)).unwrap();
        assert!(c.get("groups").is_none());
    }

    #[test]
    fn the_session_reference_is_not_the_hash() {
        let h = [7u8; 32];
        let r = session_ref(&h).encode();
        assert_eq!(r.len(), 22);
        assert_eq!(r, session_ref(&h).encode());
        assert_ne!(r, session_ref(&[8; 32]).encode());
        assert_ne!(URL_SAFE_NO_PAD.decode(&r).unwrap(), h[..16]);
    }

    #[test]
    fn audience_adds_only_a_non_default_port() {
        assert_eq!(
            audience(&original("app.example.com", None)),
            "app.example.com"
        );
        assert_eq!(
            audience(&original("app.example.com", Some(8443))),
            "app.example.com:8443"
        );
        assert_eq!(audience(&original("[::1]", Some(8080))), "[::1]:8080");
    }

    #[test]
    fn tokens_are_reused_per_host_until_refresh_or_new_keys() {
        let t = Tokens::default();
        let a = original("a.example", None);
        let a8 = original("a.example", Some(8080));
        let put = |host: &str, port, generation, refresh_at, v: &'static str| Cached {
            host: host.into(),
            port,
            generation,
            refresh_at,
            value: HeaderValue::from_static(v),
        };
        t.put(put("a.example", None, 0, 100, "one"));
        assert_eq!(t.get(&a, 0, 99).unwrap(), "one");
        assert!(t.get(&a, 0, 100).is_none(), "due for refresh");
        assert!(t.get(&a, 1, 99).is_none(), "keys changed");
        assert!(
            t.get(&a8, 0, 99).is_none(),
            "another port is another audience"
        );
        t.put(put("a.example", None, 1, 200, "two"));
        assert_eq!(t.get(&a, 1, 99).unwrap(), "two");
        assert_eq!(t.len(), 1);
        for i in 0..20 {
            t.put(put(&format!("h{i}.example"), None, 1, 300 + i, "x"));
        }
        assert_eq!(t.len(), PER_HOST);
        // The newest stay.
        assert!(t.get(&original("h19.example", None), 1, 0).is_some());
        assert!(t.get(&a, 1, 99).is_none());
    }
}
