//! The keys that sign identity assertions, as stored: sealed private keys (the store
//! never sees them in the clear; see `signing`), which one is active, and until when
//! retired ones stay published.

use std::time::Duration;

use super::db::{args, Db};

use super::{users, Result, Store, StoreError};

/// A signing key as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub created_at: i64,
    /// `None`: the newest key (active, or about to be). Otherwise published until then,
    /// then swept.
    pub retire_at: Option<i64>,
    /// When it starts signing (published before that); `None`: at once.
    pub active_from: Option<i64>,
    /// The order the keys were made in, given by the store (0: before it kept one).
    pub seq: i64,
    /// The private key, sealed under a key derived from the server key file.
    pub wrapped: Vec<u8>,
}

fn all(c: &Db) -> Result<Vec<StoredKey>> {
    let rows = c.query_map(
        "SELECT kid, created_at, retire_at, wrapped, active_from, COALESCE(seq, 0) FROM signing_keys
          ORDER BY retire_at IS NULL, COALESCE(seq, 0), created_at, kid",
        args![],
        |r| {
            Ok(StoredKey {
                kid: r.get(0)?,
                created_at: r.get(1)?,
                retire_at: r.get(2)?,
                wrapped: r.get(3)?,
                active_from: r.get(4)?,
                seq: r.get(5)?,
            })
        },
    )?;
    Ok(rows)
}

impl Store {
    /// Every stored key, oldest first, the active one last.
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>> {
        self.run(all).await
    }

    /// At start-up, before anything is served: store `candidate` as the active key
    /// unless there is one already, then read every key. One immediate transaction, so
    /// two servers starting on a new database agree on one key. Blocks the calling
    /// thread (a few milliseconds, once).
    pub fn ensure_signing_key(&self, candidate: StoredKey) -> Result<Vec<StoredKey>> {
        super::db::blocking(|| self.ensure_signing_key_here(candidate))
    }

    fn ensure_signing_key_here(&self, candidate: StoredKey) -> Result<Vec<StoredKey>> {
        let c = self.pool.get()?;
        let tx = c.transaction()?;
        let active: i64 = tx.query_row(
            "SELECT COUNT(*) FROM signing_keys WHERE retire_at IS NULL",
            args![],
            |r| r.get(0),
        )?;
        if active == 0 {
            tx.execute(
                "INSERT INTO signing_keys (kid, created_at, retire_at, wrapped, seq)
                 VALUES (?1, ?2, NULL, ?3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM signing_keys))",
                args![candidate.kid, candidate.created_at, candidate.wrapped],
            )?;
        }
        let keys = all(&tx)?;
        tx.commit()?;
        Ok(keys)
    }

    /// Add `new`, published at once and signing from `new.active_from`; the key signing
    /// until then (and one still waiting to sign) stays published for `overlap` after
    /// that. With a revocation record of kind `keys` in the same transaction, so running
    /// servers reload their keys; returns its number for `await_servers`.
    pub async fn rotate_signing_key(&self, new: StoredKey, overlap: Duration) -> Result<i64> {
        let now = new.created_at;
        let from = new.active_from.unwrap_or(now);
        self.write(move |c| {
            let tx = c.transaction()?;
            let taken: i64 = tx.query_one(
                "SELECT COUNT(*) FROM signing_keys WHERE kid = ?1",
                args![new.kid],
            )?;
            if taken > 0 {
                return Err(StoreError::Db(format!("key id {} exists already", new.kid)));
            }
            tx.execute(
                "UPDATE signing_keys SET retire_at = ?1 WHERE retire_at IS NULL",
                args![from + overlap.as_secs() as i64],
            )?;
            tx.execute(
                "INSERT INTO signing_keys (kid, created_at, retire_at, wrapped, active_from, seq)
                 VALUES (?1, ?2, NULL, ?3, ?4, (SELECT COALESCE(MAX(seq), 0) + 1 FROM signing_keys))",
                args![new.kid, new.created_at, new.wrapped, new.active_from],
            )?;
            let seq = users::record_revocation_kind(&tx, None, None, now, users::KIND_KEYS)?;
            users::audit_admin(
                &tx,
                now,
                "keys_rotated",
                "",
                None,
                &if from > now {
                    format!("new key {}, signing from {from}", new.kid)
                } else {
                    format!("new key {}", new.kid)
                },
            )?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> StoredKey {
        StoredKey {
            kid: kid.into(),
            created_at: 100,
            retire_at: None,
            wrapped: vec![1, 2, 3],
            active_from: None,
            seq: 0,
        }
    }

    /// `k` as stored: the store numbers the keys in the order they were made.
    fn numbered(k: &StoredKey, seq: i64) -> StoredKey {
        StoredKey { seq, ..k.clone() }
    }

    #[tokio::test]
    async fn one_active_key_and_rotation() {
        let (_db, s) = crate::store::testing::store();
        let first = s.ensure_signing_key(key("a")).unwrap();
        assert_eq!(first, vec![numbered(&key("a"), 1)]);
        // A second start (or a racing server) keeps the existing key.
        assert_eq!(
            s.ensure_signing_key(key("b")).unwrap(),
            vec![numbered(&key("a"), 1)]
        );
        let before = s.last_revocation().await.unwrap();
        let c = StoredKey {
            created_at: 1000,
            ..key("c")
        };
        let seq = s
            .rotate_signing_key(c.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(seq > before);
        let rows = s.revocations_since(before).await.unwrap();
        assert_eq!(rows, vec![(seq, crate::store::Revoked::Keys)]);
        let audit = s
            .list_audit(crate::store::AuditFilter {
                email: None,
                since: None,
                event: Some("keys_rotated".into()),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].detail, "new key c");
        let keys = s.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid, "a");
        assert_eq!(keys[0].retire_at, Some(4600));
        assert_eq!(keys[1], numbered(&c, 2));
        // Retired keys are swept once their overlap has passed; the active one never.
        s.sweep(4599, 0).await.unwrap();
        assert_eq!(s.signing_keys().await.unwrap().len(), 2);
        s.sweep(4600, 0).await.unwrap();
        assert_eq!(s.signing_keys().await.unwrap(), vec![numbered(&c, 2)]);
        // Published ahead: the key it replaces is retired an overlap after it signs.
        let d = StoredKey {
            created_at: 5000,
            active_from: Some(5360),
            ..key("d")
        };
        s.rotate_signing_key(d.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
        let keys = s.signing_keys().await.unwrap();
        assert_eq!(keys[0].retire_at, Some(5360 + 3600));
        assert_eq!(keys[1], numbered(&d, 3));
        // Two more in the same second (and an id that sorts first): still in the order
        // they were made.
        for kid in ["f", "e"] {
            let k = StoredKey {
                created_at: 5000,
                ..key(kid)
            };
            s.rotate_signing_key(k, Duration::from_secs(3600))
                .await
                .unwrap();
        }
        let kids: Vec<(String, i64)> = s
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.kid, k.seq))
            .collect();
        let want = [("c", 2), ("d", 3), ("f", 4), ("e", 5)].map(|(k, n)| (k.to_string(), n));
        assert_eq!(kids, want);
    }
}
