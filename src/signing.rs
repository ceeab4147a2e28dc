//! The Ed25519 keys that sign identity assertions: generation, sealing for the database,
//! the key ring a running server signs with, and the JWKS that publishes it.
//!
//! Storage: the database holds each private key sealed with ChaCha20-Poly1305 under
//! `ServerKey::signing_wrap_key()` (derived from the server key file), with the key id as
//! associated data, so a copy of the database alone neither reveals a key nor lets anyone
//! swap one key's sealed bytes for another's.
//!
//! Rotation publishes before it signs: `keys rotate` adds a key that is in the JWKS at
//! once and signs from `PUBLISH_AHEAD` later, when every verifier's cached copy of the
//! JWKS (`JWKS_MAX_AGE`) has expired and been fetched again with the new key in it. JWT
//! libraries refetch a key set on an unknown `kid` only after a cool-down (30 s for PyJWT
//! and `jose`), so a key that signed at once would be refused by apps for that long.
//! `keys rotate --now` does that anyway, for a key that must stop signing at once. The
//! key signing until the switch stays published for `OVERLAP` after it. At any time the
//! signing key is the newest (last made) whose start has come: `active_from`, or for the
//! first key and `--now` keys (`active_from` NULL) always, so that clocks apart between
//! the host that rotated and the servers cannot delay them. A key published ahead and
//! overtaken by a newer one that starts first never signs; every key stops signing no
//! later than the next key's start, and stays published an `OVERLAP` after that.
//!
//! A running server holds the ring behind a lock and a generation number. Cached
//! assertions (see `assertion`) carry the generation they were signed under; a reload
//! that changes the key signing now (`keys rotate --now`) makes every cached token stale
//! at once, without touching the session cache. At a scheduled switch, cached tokens
//! stay valid (their key is still published) and are replaced as they fall due.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::{Algorithm, Header};
use sha2::{Digest, Sha256};

use crate::secrets::{self, ServerKey};
use crate::store::StoredKey;

/// How long a retired key stays in the JWKS: longer than the longest assertion lifetime
/// (`assertion.ttl` ≤ 10 min) plus the JWKS cache time (`JWKS_MAX_AGE`), so every token
/// signed with it expires, and every verifier has refetched, before it disappears.
pub const OVERLAP: Duration = Duration::from_secs(3600);
/// `Cache-Control: max-age` of `/.well-known/jwks.json`.
pub const JWKS_MAX_AGE: u64 = 300;
/// How long `keys rotate` publishes a new key before it signs: the JWKS cache time and a
/// minute for the verifiers' refetch.
pub const PUBLISH_AHEAD: Duration = Duration::from_secs(JWKS_MAX_AGE + 60);

const NONCE: usize = 12;

/// A fresh key pair. The seed is the private key (RFC 8032).
pub struct KeyPair {
    pub kid: String,
    seed: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.kid)
    }
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        KeyPair::from_seed(secrets::random::<32>())
    }

    fn from_seed(seed: [u8; 32]) -> KeyPair {
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        KeyPair {
            kid: thumbprint(&public),
            seed,
            public,
        }
    }

    /// The row to store: the newest key, signing from `now`, sealed under `key`.
    pub fn stored(&self, key: &ServerKey, now: i64) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            created_at: now,
            retire_at: None,
            wrapped: seal(&key.signing_wrap_key(), &self.kid, &self.seed),
            active_from: None,
            seq: 0,
        }
    }
}

/// The key id: the RFC 7638 JWK thumbprint (SHA-256, base64url), so it names the public
/// key itself and any verifier can recompute it.
fn thumbprint(public: &[u8; 32]) -> String {
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// `nonce || ChaCha20-Poly1305(seed)`, the key id bound as associated data.
fn seal(wrap: &[u8; 32], kid: &str, seed: &[u8; 32]) -> Vec<u8> {
    let nonce = secrets::random::<NONCE>();
    let sealed = ChaCha20Poly1305::new(wrap.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: seed,
                aad: kid.as_bytes(),
            },
        )
        .expect("sealing 32 bytes cannot fail");
    [&nonce[..], &sealed].concat()
}

fn unseal(wrap: &[u8; 32], kid: &str, wrapped: &[u8]) -> Option<[u8; 32]> {
    if wrapped.len() < NONCE {
        return None;
    }
    let (nonce, sealed) = wrapped.split_at(NONCE);
    ChaCha20Poly1305::new(wrap.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: kid.as_bytes(),
            },
        )
        .ok()?
        .try_into()
        .ok()
}

/// When a stored key signs from, for the rule below: `active_from`, or, for a key made to
/// sign at once (`None`: the first key, `keys rotate --now`), from the beginning, whatever
/// the clocks of the host that made it and of the servers say.
fn signs_from(k: &StoredKey) -> i64 {
    k.active_from.unwrap_or(i64::MIN)
}

/// When a stored key signs, or signed, from, for people (`keys list`).
pub fn shown_start(k: &StoredKey) -> i64 {
    k.active_from.unwrap_or(k.created_at)
}

/// Keys in the order they were made: the newest (the one row without `retire_at`) last,
/// then by the store's numbering (`created_at` has whole seconds, and two keys can share
/// one).
fn creation_order(k: &StoredKey) -> (bool, i64, i64, String) {
    (k.retire_at.is_none(), k.seq, k.created_at, k.kid.clone())
}

/// The item signing at `now`, of `items` in the order they were made: the newest whose
/// start has come (a key published ahead and then overtaken by a newer one that started
/// first never signs), else (clocks apart) the oldest.
fn signing_at<T>(items: &[T], start: impl Fn(&T) -> i64, now: i64) -> Option<&T> {
    items
        .iter()
        .rev()
        .find(|i| start(i) <= now)
        .or(items.first())
}

/// The stored keys in the order they were made, for `keys list`.
pub fn in_creation_order(keys: &[StoredKey]) -> Vec<&StoredKey> {
    let mut sorted: Vec<&StoredKey> = keys.iter().collect();
    sorted.sort_by_key(|k| creation_order(k));
    sorted
}

/// The stored key signing at `now` (see the module doc), for `keys list`.
pub fn signing_key_at(keys: &[StoredKey], now: i64) -> Option<&StoredKey> {
    signing_at(&in_creation_order(keys), |k| signs_from(k), now).copied()
}

/// Whether `keys[i]` (in creation order) will sign at some time after `now`: it has not
/// started, and no newer key starts before (or with) it.
pub fn will_sign(keys: &[&StoredKey], i: usize, now: i64) -> bool {
    let start = signs_from(keys[i]);
    start > now && keys[i + 1..].iter().all(|k| signs_from(k) > start)
}

/// A key of the ring: it signs from `from` (while it is the newest that has started), and
/// is published until `retire_at`.
struct KeyInRing {
    kid: String,
    /// Expanded once (zeroed on drop).
    key: SigningKey,
    /// Its JOSE header, `{"typ":"JWT","alg":"EdDSA","kid":…}`, serialized by
    /// `jsonwebtoken` and base64url-encoded once.
    header: String,
    /// When it signs from (see `signs_from`).
    from: i64,
    /// The public key, base64url, for the JWKS.
    x: String,
    retire_at: Option<i64>,
}

/// The keys a server signs with and publishes.
pub struct Ring {
    /// Every key that can be opened, in the order they were made: the one signing at a
    /// time is chosen by `signing_at`; the JWKS lists those not past `retire_at`.
    keys: Vec<KeyInRing>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        write!(f, "Ring({kids:?})")
    }
}

impl Ring {
    /// The ring from the stored keys. A retired key that the server key cannot open is
    /// left out with a warning; the newest key (the row without `retire_at`) is an error
    /// (the server key file was replaced or the row altered).
    pub fn from_stored(keys: &[StoredKey], key: &ServerKey) -> Result<Ring, String> {
        let wrap = key.signing_wrap_key();
        let mut ring = Vec::new();
        for k in in_creation_order(keys) {
            let Some(seed) = unseal(&wrap, &k.kid, &k.wrapped) else {
                if k.retire_at.is_none() {
                    return Err(format!(
                        "the active signing key {} cannot be opened with the server key: was \
                         secret_key_file replaced? `authbase keys rotate --now` starts a new key",
                        k.kid
                    ));
                }
                tracing::warn!(kid = %k.kid, "a retired signing key cannot be opened with the server key; not published");
                continue;
            };
            let pair = KeyPair::from_seed(seed);
            if pair.kid != k.kid {
                return Err(format!("signing key {} does not match its id", k.kid));
            }
            let mut h = Header::new(Algorithm::EdDSA);
            h.kid = Some(pair.kid.clone());
            let header = serde_json::to_vec(&h).map_err(|e| format!("JOSE header: {e}"))?;
            ring.push(KeyInRing {
                key: SigningKey::from_bytes(&pair.seed),
                header: URL_SAFE_NO_PAD.encode(header),
                x: URL_SAFE_NO_PAD.encode(pair.public),
                kid: pair.kid.clone(),
                from: signs_from(k),
                retire_at: k.retire_at,
            });
        }
        if !keys.iter().any(|k| k.retire_at.is_none()) {
            return Err("no active signing key".into());
        }
        Ok(Ring { keys: ring })
    }

    fn signer(&self, now: i64) -> &KeyInRing {
        signing_at(&self.keys, |k| k.from, now).expect("a ring has a key")
    }

    /// The id of the key signing at `now`.
    pub fn kid(&self, now: i64) -> &str {
        &self.signer(now).kid
    }

    /// A compact JWS of `claims`, signed with the key signing at `now`:
    /// `{"typ":"JWT","alg":"EdDSA","kid":…}`.
    ///
    /// Byte for byte what `jsonwebtoken::encode` makes (Ed25519 signatures are
    /// deterministic; a unit test compares the two), without its per-call cost:
    /// `encode` parses the PKCS#8 key and derives the public key — a second scalar
    /// multiplication — on every call, which doubled the cost of each assertion.
    pub fn sign<T: serde::Serialize>(&self, claims: &T, now: i64) -> Result<String, String> {
        let signer = self.signer(now);
        let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = String::with_capacity(signer.header.len() + claims.len() * 4 / 3 + 92);
        token.push_str(&signer.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = signer.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(token)
    }

    /// `/.well-known/jwks.json` at `now`: every key not past its overlap (one published
    /// ahead of signing included), newest (last made) first.
    pub fn jwks(&self, now: i64) -> serde_json::Value {
        // `keys` is in the order they were made.
        let keys: Vec<&KeyInRing> = self
            .keys
            .iter()
            .rev()
            .filter(|p| p.retire_at.is_none_or(|t| t > now))
            .collect();
        serde_json::json!({
            "keys": keys.iter().map(|p| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": p.x,
                "kid": p.kid,
                "use": "sig",
                "alg": "EdDSA",
            })).collect::<Vec<_>>()
        })
    }
}

/// The ring of a running server, replaced when the keys change.
pub struct Keys {
    ring: RwLock<Arc<Ring>>,
    generation: AtomicU64,
}

impl Keys {
    pub fn new(ring: Ring) -> Keys {
        Keys {
            ring: RwLock::new(Arc::new(ring)),
            generation: AtomicU64::new(0),
        }
    }

    /// Bumped by every `replace`; read it before `current` so that a token signed with
    /// the ring read after it is never tagged newer than it is.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys read again. Cached tokens go stale only if the key signing at `now`
    /// changes (`keys rotate --now`); a key published ahead changes nothing yet.
    pub fn replace(&self, ring: Ring, now: i64) {
        let mut current = self.ring.write().unwrap_or_else(|e| e.into_inner());
        let changed = current.kid(now) != ring.kid(now);
        *current = Arc::new(ring);
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Load the keys at start-up, creating the first one if the database has none.
pub fn load_or_create(store: &crate::store::Store, key: &ServerKey) -> Result<Ring, String> {
    let candidate = KeyPair::generate().stored(key, crate::store::now());
    let keys = store
        .ensure_signing_key(candidate)
        .map_err(|e| format!("signing keys: {e}"))?;
    Ring::from_stored(&keys, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, EncodingKey, Validation};

    /// `Ring::sign` makes exactly the token `jsonwebtoken::encode` makes for the same key,
    /// header and claims.
    #[test]
    fn signing_matches_jsonwebtoken_byte_for_byte() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        for b in 1..=4u8 {
            let pair = KeyPair::from_seed([b; 32]);
            let ring =
                Ring::from_stored(&[pair.stored(&server_key(1), 1)], &server_key(1)).unwrap();
            let der = SigningKey::from_bytes(&[b; 32]).to_pkcs8_der().unwrap();
            let key = EncodingKey::from_ed_der(der.as_bytes());
            let mut h = Header::new(Algorithm::EdDSA);
            h.kid = Some(pair.kid.clone());
            for claims in [
                serde_json::json!({"sub": "1", "email": "a@example.com", "iat": 1, "exp": 121}),
                serde_json::json!({"iss": "https://auth.example.com", "aud": "app.example.com:8443",
                                   "groups": ["admins", "ops"], "sid": "x".repeat(b as usize * 40)}),
            ] {
                assert_eq!(
                    ring.sign(&claims, 1).unwrap(),
                    jsonwebtoken::encode(&h, &claims, &key).unwrap()
                );
            }
        }
    }

    /// The key ids a JWKS lists, in its order.
    fn kids(jwks: &serde_json::Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["kid"].as_str().unwrap().to_string())
            .collect()
    }

    fn server_key(b: u8) -> ServerKey {
        ServerKey::from_bytes([b; 32])
    }

    #[test]
    fn the_wrap_opens_only_with_the_same_server_key_and_kid() {
        let pair = KeyPair::generate();
        let stored = pair.stored(&server_key(1), 5);
        assert_eq!(stored.kid, pair.kid);
        assert!(!stored.wrapped.windows(32).any(|w| w == pair.seed));
        let wrap = server_key(1).signing_wrap_key();
        assert_eq!(unseal(&wrap, &pair.kid, &stored.wrapped), Some(pair.seed));
        assert_eq!(
            unseal(
                &server_key(2).signing_wrap_key(),
                &pair.kid,
                &stored.wrapped
            ),
            None
        );
        assert_eq!(unseal(&wrap, "another kid", &stored.wrapped), None);
        let mut tampered = stored.wrapped.clone();
        tampered[20] ^= 1;
        assert_eq!(unseal(&wrap, &pair.kid, &tampered), None);
        assert_eq!(unseal(&wrap, &pair.kid, &[1, 2]), None);
        // Every seal uses a fresh nonce.
        assert_ne!(pair.stored(&server_key(1), 5).wrapped, stored.wrapped);
    }

    #[test]
    fn an_unopenable_active_key_is_an_error_a_retired_one_is_skipped() {
        let a = KeyPair::generate().stored(&server_key(1), 1);
        let mut old = KeyPair::generate().stored(&server_key(2), 0);
        old.retire_at = Some(i64::MAX);
        let ring = Ring::from_stored(&[old.clone(), a.clone()], &server_key(1)).unwrap();
        assert_eq!(ring.kid(1), a.kid);
        assert_eq!(ring.jwks(0)["keys"].as_array().unwrap().len(), 1);
        assert!(Ring::from_stored(&[a], &server_key(2)).is_err());
        assert!(Ring::from_stored(&[old], &server_key(2)).is_err());
    }

    /// A key published ahead signs from its start on; until then the key it replaces
    /// does. The JWKS has both from the start, newest first. Replacing the ring makes
    /// cached tokens stale only when the key signing now changes.
    #[test]
    fn a_key_published_ahead_signs_from_its_start() {
        let k = server_key(4);
        let mut old = KeyPair::generate().stored(&k, 10);
        let mut next = KeyPair::generate().stored(&k, 100);
        next.active_from = Some(460);
        old.retire_at = Some(460 + 3600);
        let keys = [old.clone(), next.clone()];
        let ring = Ring::from_stored(&keys, &k).unwrap();
        let kid_of = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        for (now, want) in [(100, &old), (459, &old), (460, &next), (5000, &next)] {
            assert_eq!(ring.kid(now), want.kid, "at {now}");
            assert_eq!(kid_of(&ring.sign(&1, now).unwrap()), want.kid, "at {now}");
            assert_eq!(
                signing_key_at(&keys, now).unwrap().kid,
                want.kid,
                "at {now}"
            );
        }
        let published = |now| kids(&ring.jwks(now));
        assert_eq!(published(100), vec![next.kid.clone(), old.kid.clone()]);
        assert_eq!(published(460 + 3600), vec![next.kid.clone()]);
        // The first key signs from the beginning, whatever the clock says.
        assert_eq!(ring.kid(i64::MIN + 1), old.kid);

        let only_old = Ring::from_stored(&[KeyPair::generate().stored(&k, 10)], &k).unwrap();
        let keys_now = Keys::new(only_old);
        let g = keys_now.generation();
        keys_now.replace(Ring::from_stored(&keys, &k).unwrap(), 100);
        assert_eq!(
            keys_now.generation(),
            g + 1,
            "the key signing at 100 changed"
        );
        keys_now.replace(Ring::from_stored(&keys, &k).unwrap(), 100);
        assert_eq!(
            keys_now.generation(),
            g + 1,
            "published ahead: nothing changes yet"
        );
    }

    /// Two rotations before the first switch: the newest key that has started signs. A
    /// key published ahead and overtaken (`--now`, or a shorter delay) never signs, so it
    /// cannot sign after it has left the JWKS. And a `--now` key signs at once even for a
    /// server whose clock is behind the host that made it.
    #[test]
    fn a_key_overtaken_before_it_signs_never_signs() {
        let k = server_key(5);
        let at = |created: i64, from: Option<i64>| {
            let mut s = KeyPair::generate().stored(&k, created);
            s.active_from = from;
            s
        };
        let kid_at = |keys: &[StoredKey], now: i64| {
            let ring = Ring::from_stored(keys, &k).unwrap();
            assert_eq!(signing_key_at(keys, now).unwrap().kid, ring.kid(now));
            ring.kid(now).to_string()
        };
        let published =
            |keys: &[StoredKey], now: i64| kids(&Ring::from_stored(keys, &k).unwrap().jwks(now));
        // At 100 `keys rotate` (B from 460), at 200 `keys rotate --now` (C, stamped by a
        // CLI whose clock runs 50 s ahead of the server's).
        let (mut a, mut b, c) = (at(0, None), at(100, Some(460)), at(250, None));
        a.retire_at = Some(460 + 3600);
        b.retire_at = Some(250 + 3600);
        // Before C existed, A signed: B had not started.
        let pending = StoredKey {
            retire_at: None,
            ..b.clone()
        };
        assert_eq!(kid_at(&[a.clone(), pending], 150), a.kid);
        let keys = [a.clone(), b.clone(), c.clone()];
        for (now, want) in [(200, &c), (460, &c), (3850, &c), (99_999, &c)] {
            assert_eq!(kid_at(&keys, now), want.kid, "at {now}");
            assert!(published(&keys, now).contains(&want.kid), "at {now}");
        }
        assert_eq!(
            published(&keys, 300),
            vec![c.kid.clone(), b.kid.clone(), a.kid.clone()]
        );
        let ordered = in_creation_order(&keys);
        assert!(!will_sign(&ordered, 1, 300), "B is overtaken");
        // `keys rotate --delay 1h` at 100, then a plain `keys rotate` at 200 (from 560):
        // the second signs from 560 on, the first never.
        let (mut a, mut b, c) = (at(0, None), at(100, Some(3700)), at(200, Some(560)));
        a.retire_at = Some(3700 + 3600);
        b.retire_at = Some(560 + 3600);
        let keys = [a.clone(), b.clone(), c.clone()];
        for (now, want) in [(300, &a), (560, &c), (3700, &c), (10_000, &c)] {
            assert_eq!(kid_at(&keys, now), want.kid, "at {now}");
        }
        let ordered = in_creation_order(&keys);
        assert!(!will_sign(&ordered, 1, 300) && will_sign(&ordered, 2, 300));
    }

    /// Keys made in one second are told apart by the store's numbering, not by their
    /// random ids: the newest started key signs, and the JWKS lists the newest first.
    #[test]
    fn keys_made_in_one_second_keep_their_order() {
        let k = server_key(6);
        let mut keys: Vec<StoredKey> = (1..=3)
            .map(|seq| StoredKey {
                seq,
                ..KeyPair::generate().stored(&k, 100)
            })
            .collect();
        keys[0].retire_at = Some(100 + 3600);
        keys[1].retire_at = Some(100 + 3600);
        keys[2].active_from = Some(103);
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let shuffled: Vec<StoredKey> = order.iter().map(|&i| keys[i].clone()).collect();
            let ring = Ring::from_stored(&shuffled, &k).unwrap();
            assert_eq!(ring.kid(101), keys[1].kid, "{order:?}");
            assert_eq!(ring.kid(103), keys[2].kid, "{order:?}");
            let listed = kids(&ring.jwks(101));
            let newest_first: Vec<String> = keys.iter().rev().map(|k| k.kid.clone()).collect();
            assert_eq!(listed, newest_first, "{order:?}");
        }
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
        let public: [u8; 32] = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            thumbprint(&public),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // And the key pair of its private key has that public key.
        let seed: [u8; 32] = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(KeyPair::from_seed(seed).public, public);
    }

    #[test]
    fn jwks_publishes_live_keys_that_verify_tokens() {
        let k = server_key(3);
        let mut old = KeyPair::generate().stored(&k, 0);
        old.retire_at = Some(100);
        let active = KeyPair::generate().stored(&k, 1);
        let ring = Ring::from_stored(&[old.clone(), active.clone()], &k).unwrap();
        let jwks = ring.jwks(99);
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], active.kid.as_str());
        assert_eq!(keys[1]["kid"], old.kid.as_str());
        for j in keys {
            assert_eq!(j["kty"], "OKP");
            assert_eq!(j["crv"], "Ed25519");
            assert_eq!(j["use"], "sig");
            assert_eq!(j["alg"], "EdDSA");
            assert_eq!(j.as_object().unwrap().len(), 6);
        }
        // Past its overlap, a retired key is no longer published.
        assert_eq!(ring.jwks(100)["keys"].as_array().unwrap().len(), 1);

        // A token signed by the ring verifies with the published JWK (parsed by the
        // JOSE crate, not by us), and its header names the key.
        let token = ring
            .sign(&serde_json::json!({ "sub": "1", "exp": i64::MAX / 2 }), 99)
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(active.kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
        let jwk = set.find(&active.kid).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims.clear();
        v.validate_aud = false;
        let data =
            decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v).unwrap();
        assert_eq!(data.claims["sub"], "1");
        // The other key does not verify it.
        let other = set.find(&old.kid).unwrap();
        assert!(
            decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(other).unwrap(), &v)
                .is_err()
        );
    }
}
