//! Secrets: generation from the OS CSPRNG, the hashes that are all the database ever
//! stores, constant-time comparison, and the server key from which sign-in link secrets
//! and one-time codes are derived.
//!
//! Why derive link secrets instead of storing them: the mail outbox must survive a
//! restart, yet nothing in the database may let anyone rebuild a link. So a sign-in
//! request stores only a random salt and `SHA-256(secret)`; the mail sender re-derives
//! `secret = HMAC(server_key, salt)` when it renders the message. The server key lives in
//! its own file (`secret_key_file`), never in the database. The same goes for the keys that
//! sign identity assertions: the database holds them sealed under a key derived from it.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub type Hash = [u8; 32];

/// Fill a fixed-size array from the OS CSPRNG.
/// Create a file that must not exist yet, readable and writable by its owner only
/// (0600 on Unix): the key file, and a new SQLite database.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is not a recoverable condition for an auth server.
    getrandom::fill(&mut b).expect("OS random number generator unavailable");
    b
}

/// A new session token: 256 random bits, URL-safe, and the hash to store.
pub fn new_token() -> (String, Hash) {
    let t = URL_SAFE_NO_PAD.encode(random::<32>());
    let h = hash(&t);
    (t, h)
}

pub fn hash(token: &str) -> Hash {
    hash_bytes(token.as_bytes())
}

/// Lowercase hex, for ids built from random or hashed bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hash_bytes(b: &[u8]) -> Hash {
    Sha256::digest(b).into()
}

/// A share in `0..=n` taken from 8 bytes of a digest (uniform, since the digest is), to
/// spread periodic work over many keys: each key keeps its share, keys differ.
pub fn share(digest8: [u8; 8], n: u64) -> u64 {
    u64::from_le_bytes(digest8) % (n + 1)
}

/// A token from a client is only worth hashing when it has the shape we issue; this keeps
/// garbage, huge and non-ASCII cookies away from the database.
pub fn well_formed(token: &str) -> bool {
    // A table and no early exit: a few instructions per byte (every /verify checks one).
    token.len() == 43 && token.bytes().fold(true, |ok, b| ok & BASE64URL[b as usize])
}

/// The bytes of unpadded base64url.
static BASE64URL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    t
};

pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The server key (256 bits), loaded from `secret_key_file` or created there on first start.
#[derive(Clone)]
pub struct ServerKey([u8; 32]);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    pub fn load_or_create(path: &Path) -> Result<ServerKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let raw = URL_SAFE_NO_PAD
                    .decode(text.trim())
                    .map_err(|_| format!("{} is not an authbase key file", path.display()))?;
                let key: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| format!("{} does not hold a 256-bit key", path.display()))?;
                Ok(ServerKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random::<32>();
                // Written in full under a temporary name, then linked into place, which
                // fails if the file exists: replicas starting together on a shared
                // volume agree on one key, and none reads a half-written file.
                let tmp = path.with_file_name(format!(
                    ".{}.{}",
                    path.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    hex(&random::<8>())
                ));
                let written = create_private(&tmp)
                    .and_then(|mut f| {
                        writeln!(f, "{}", URL_SAFE_NO_PAD.encode(key))?;
                        f.sync_all()
                    })
                    .map_err(|e| format!("cannot create {}: {e}", path.display()));
                let linked = written.and_then(|()| {
                    std::fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => String::new(),
                        _ => format!("cannot create {}: {e}", path.display()),
                    })
                });
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(ServerKey(key)),
                    // Another process made it first: use theirs.
                    Err(e) if e.is_empty() => ServerKey::load_or_create(path),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    #[cfg(test)]
    pub fn from_bytes(b: [u8; 32]) -> ServerKey {
        ServerKey(b)
    }

    /// What a rate limit shared through the database is counted under for `value` (an
    /// address's mailbox, an IP): keyed, so the table gives no address or IP away.
    pub fn limit_key(&self, value: &[u8]) -> [u8; 32] {
        self.mac(b"rate limit", value)
    }

    fn mac(&self, purpose: &[u8], salt: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(purpose);
        m.update(&[0]);
        m.update(salt);
        m.finalize().into_bytes().into()
    }

    /// The secret in a sign-in link for the request with this salt.
    pub fn link_secret(&self, salt: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(b"authbase link", salt))
    }

    /// The key that seals the assertion signing keys stored in the database (see
    /// `signing`): HMAC-SHA256(server key, "authbase signing-key wrap v1" || 0).
    pub fn signing_wrap_key(&self) -> [u8; 32] {
        self.mac(b"authbase signing-key wrap v1", b"")
    }

    /// The 6-digit one-time code for the request with this salt.
    pub fn code(&self, salt: &[u8]) -> String {
        let m = self.mac(b"authbase code", salt);
        let n = u64::from_be_bytes(m[..8].try_into().expect("8 bytes")) % 1_000_000;
        format!("{n:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (t, h) = new_token();
            assert!(well_formed(&t), "{t}");
            assert_eq!(hash(&t), h);
            assert!(seen.insert(t));
        }
        assert!(!well_formed("short"));
        assert!(!well_formed(&"a".repeat(42).to_string().replace('a', "ä")));
        // Every byte value in every position: only base64url's 64 letters pass.
        for c in 0..=255u8 {
            let ok = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
            for pos in [0, 21, 42] {
                let mut b = *b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
                b[pos] = c;
                if let Ok(t) = std::str::from_utf8(&b) {
                    assert_eq!(well_formed(t), ok, "{c:#x} at {pos}");
                } else {
                    assert!(!ok);
                }
            }
        }
    }

    #[test]
    fn derived_secrets_depend_on_key_and_salt() {
        let k1 = ServerKey::from_bytes([1; 32]);
        let k2 = ServerKey::from_bytes([2; 32]);
        assert_ne!(k1.link_secret(b"s"), k2.link_secret(b"s"));
        assert_ne!(k1.link_secret(b"s"), k1.link_secret(b"t"));
        assert_eq!(k1.link_secret(b"s"), k1.link_secret(b"s"));
        assert!(well_formed(&k1.link_secret(b"s")));
        let c = k1.code(b"s");
        assert_eq!(c.len(), 6);
        assert!(c.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn key_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = ServerKey::load_or_create(&p).unwrap();
        let b = ServerKey::load_or_create(&p).unwrap();
        assert_eq!(a.0, b.0);
        std::fs::write(&p, "garbage").unwrap();
        assert!(ServerKey::load_or_create(&p).is_err());
    }

    /// Replicas starting together on a shared volume: every one ends up with the same
    /// key, none fails or reads a half-written file, no temporary file is left.
    #[test]
    fn servers_creating_the_key_at_once_agree_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ServerKey::load_or_create(&p).unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
