//! Users as the admin CLI manages them (list, invite, remove, block, groups) and the
//! audit trail of those changes.
//!
//! Running servers cache confirmed sessions together with what they know of the user, so
//! every change that could make a cached session wrong (removal, blocking, unblocking,
//! groups) writes a revocation record in the same transaction as the change. Servers
//! evict that user's cached sessions when they read it and acknowledge its number (see
//! `servers.rs`), which is what the CLI waits for.

use super::db::{args, Db};
use super::{Result, Store};

/// Admin changes come from the command line; the audit trail says so.
const ACTOR: &str = "cli";

/// A user as `authbase users list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub created_at: i64,
    pub blocked: bool,
    pub invited: bool,
    pub groups: Vec<String>,
    /// Groups given in `[access.groups]` (filled in by the caller, which has the config).
    pub config_groups: Vec<String>,
    /// The global `[access]` policy, or an admin's invitation, lets them sign in (filled
    /// in by the caller).
    pub allowed: bool,
    /// Confirmed sessions that have not expired.
    pub sessions: i64,
    /// The latest activity of any of the user's confirmed sessions.
    pub last_seen_at: Option<i64>,
}

/// One audit event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub event: String,
    pub email: String,
    pub user_id: Option<i64>,
    pub ip: String,
    pub user_agent: String,
    pub detail: String,
}

/// Which audit events to list (`None`: no filter).
#[derive(Debug, Clone)]
pub struct AuditFilter {
    /// Matched case-insensitively.
    pub email: Option<String>,
    /// Events at or after this time (Unix seconds).
    pub since: Option<i64>,
    pub event: Option<String>,
    /// The newest `limit` events that match.
    pub limit: u32,
}

/// What an admin change did to one user.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub user_id: i64,
    /// The address as stored (its case as first seen).
    pub email: String,
    /// The address was unknown and a user row was created for it.
    pub created: bool,
    /// Sessions ended (remove, block).
    pub sessions: usize,
    /// Pending sign-in requests cancelled (block).
    pub requests: usize,
    /// Queued emails that will not be sent (remove, block).
    pub mails: usize,
    /// Still blocked (add: an invitation does not unblock).
    pub blocked: bool,
    /// The user's groups after the change, sorted.
    pub groups: Vec<String>,
    /// The revocation record running servers must apply, when the change can affect
    /// their cached sessions.
    pub seq: Option<i64>,
}

/// `(id, stored email, blocked)` of the user with this address (case-insensitive).
pub(crate) fn find_user(c: &Db, email: &str) -> Result<Option<(i64, String, bool)>> {
    c.query_opt(
        "SELECT id, email, blocked FROM users WHERE email = ?1",
        args![email],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// Tell running servers to evict the cached sessions of `user_id` (`None`: of everyone);
/// returns the record's number.
pub(crate) fn record_revocation(c: &Db, user_id: Option<i64>, now: i64) -> Result<i64> {
    record_revocation_kind(c, user_id, None, now, KIND_SESSIONS)
}

/// Kinds of revocation record (see `record_revocation_kind`).
pub(crate) const KIND_SESSIONS: &str = "sessions";
pub(crate) const KIND_SESSION: &str = "session";
pub(crate) const KIND_ONE_SESSION: &str = "one_session";
pub(crate) const KIND_KEYS: &str = "keys";

/// A session ended here (signed out): other servers evict it by its token's hash.
pub(crate) fn record_session_end(c: &Db, hash: &[u8], now: i64) -> Result<i64> {
    record_revocation_kind(c, None, Some(hash), now, KIND_SESSION)
}

/// A session revoked by an admin command (`sessions revoke --id`): servers evict it by
/// its token's hash and acknowledge at once, since the command waits. With the user's
/// id: a server of an older release, which knows no such kind, reads it as "the
/// sessions of this user" and evicts them all, which is safe.
pub(crate) fn record_session_revoked(c: &Db, user_id: i64, hash: &[u8], now: i64) -> Result<i64> {
    record_revocation_kind(c, Some(user_id), Some(hash), now, KIND_ONE_SESSION)
}

/// A record in the revocation log: `sessions` (evict the user's cached sessions, or all
/// with `None`), `session` (evict the one with this token hash), `one_session` (the
/// same, awaited by the admin command that wrote it) or `keys` (reload the signing
/// keys). On PostgreSQL it also wakes the servers listening (the notification
/// is delivered when the transaction commits); they read the log itself, so a lost
/// notification only delays them to their next poll.
pub(crate) fn record_revocation_kind(
    c: &Db,
    user_id: Option<i64>,
    token_hash: Option<&[u8]>,
    now: i64,
    kind: &str,
) -> Result<i64> {
    let seq = c.query_one(
        "INSERT INTO revocations (user_id, at, kind, token_hash) VALUES (?1, ?2, ?3, ?4)
         RETURNING seq",
        args![user_id, now, kind, token_hash],
    )?;
    if c.is_postgres() {
        c.execute(
            &format!("SELECT pg_notify('{}', '')", super::db::REVOCATIONS_CHANNEL),
            args![],
        )?;
    }
    Ok(seq)
}

/// An admin change in the audit trail.
pub(crate) fn audit_admin(
    c: &Db,
    now: i64,
    event: &str,
    email: &str,
    user_id: Option<i64>,
    detail: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO audit (at, event, email, user_id, ip, user_agent, detail)
         VALUES (?1, ?2, ?3, ?4, '', ?5, ?6)",
        args![now, event, email, user_id, ACTOR, detail],
    )?;
    Ok(())
}

fn groups_of(c: &Db, user_id: i64) -> Result<Vec<String>> {
    let rows = c.query_map(
        "SELECT name FROM user_groups WHERE user_id = ?1 ORDER BY name",
        args![user_id],
        |r| r.get(0),
    )?;
    Ok(rows)
}

/// Add and remove group names; returns the changes made, as `+name` / `-name`.
fn change_groups(c: &Db, user_id: i64, add: &[String], remove: &[String]) -> Result<Vec<String>> {
    let mut changes = Vec::new();
    for g in add {
        if c.execute(
            "INSERT INTO user_groups (user_id, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            args![user_id, g],
        )? > 0
        {
            changes.push(format!("+{g}"));
        }
    }
    for g in remove {
        if c.execute(
            "DELETE FROM user_groups WHERE user_id = ?1 AND name = ?2",
            args![user_id, g],
        )? > 0
        {
            changes.push(format!("-{g}"));
        }
    }
    Ok(changes)
}

/// Queued mail to this user that must not go out any more: sign-in mail of their
/// requests, and anything else addressed to them.
fn drop_queued_mail(c: &Db, user_id: i64, email: &str, why: &str) -> Result<usize> {
    c.execute(
        "UPDATE outbox SET state = 'failed', last_error = ?3
          WHERE state = 'queued'
            AND (request_id IN (SELECT id FROM sign_in_requests WHERE user_id = ?1)
                 OR recipient = ?2 COLLATE NOCASE)",
        args![user_id, email, why],
    )
}

impl Store {
    /// Users in the order they were created, optionally only the one with this address.
    pub async fn list_users(&self, email: Option<String>, now: i64) -> Result<Vec<UserRow>> {
        self.run(move |c| {
            let mut users = c.query_map(
                "SELECT u.id, u.email, u.created_at, u.blocked, u.invited,
                        (SELECT COUNT(*) FROM sessions s
                          WHERE s.user_id = u.id AND s.confirmed = 1 AND s.expires_at > ?1),
                        (SELECT MAX(s.last_seen_at) FROM sessions s
                          WHERE s.user_id = u.id AND s.confirmed = 1)
                   FROM users u WHERE ?2 IS NULL OR u.email = ?2
                  ORDER BY u.id",
                args![now, email],
                |r| {
                    Ok(UserRow {
                        id: r.get(0)?,
                        email: r.get(1)?,
                        created_at: r.get(2)?,
                        blocked: r.get(3)?,
                        invited: r.get(4)?,
                        groups: Vec::new(),
                        config_groups: Vec::new(),
                        allowed: true,
                        sessions: r.get(5)?,
                        last_seen_at: r.get(6)?,
                    })
                },
            )?;
            let rows: Vec<(i64, String)> = c.query_map(
                "SELECT g.user_id, g.name FROM user_groups g JOIN users u ON u.id = g.user_id
                  WHERE ?1 IS NULL OR u.email = ?1
                  ORDER BY g.user_id, g.name",
                args![email],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut i = 0;
            for (id, name) in rows {
                // Both lists are ordered by user id.
                while i < users.len() && users[i].id < id {
                    i += 1;
                }
                if let Some(u) = users.get_mut(i).filter(|u| u.id == id) {
                    u.groups.push(name);
                }
            }
            Ok(users)
        })
        .await
    }

    /// Invite an address (`authbase users add`): create the user, or mark an existing one
    /// invited, and add it to `groups`.
    pub async fn add_user(
        &self,
        email: String,
        groups: Vec<String>,
        now: i64,
    ) -> Result<UserChange> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let (user_id, stored, created, blocked, detail) = match find_user(&tx, &email)? {
                Some((id, stored, blocked)) => {
                    let was: bool =
                        tx.query_row("SELECT invited FROM users WHERE id = ?1", args![id], |r| {
                            r.get(0)
                        })?;
                    tx.execute("UPDATE users SET invited = 1 WHERE id = ?1", args![id])?;
                    let detail = if was {
                        "already invited"
                    } else {
                        "existing user invited"
                    };
                    (id, stored, false, blocked, detail)
                }
                None => {
                    let id: i64 = tx.query_row(
                        "INSERT INTO users (email, created_at, invited) VALUES (?1, ?2, 1)
                         RETURNING id",
                        args![email, now],
                        |r| r.get(0),
                    )?;
                    (id, email, true, false, "new user")
                }
            };
            audit_admin(&tx, now, "user_added", &stored, Some(user_id), detail)?;
            let changes = change_groups(&tx, user_id, &groups, &[])?;
            if !changes.is_empty() {
                audit_admin(
                    &tx,
                    now,
                    "groups_changed",
                    &stored,
                    Some(user_id),
                    &changes.join(" "),
                )?;
            }
            // New groups, or newly invited (a user the [access] lists no longer admit is
            // admitted again): running servers must re-read the user's sessions.
            let newly_invited = detail == "existing user invited";
            let seq = if !created && (newly_invited || !changes.is_empty()) {
                Some(record_revocation(&tx, Some(user_id), now)?)
            } else {
                None
            };
            let groups = groups_of(&tx, user_id)?;
            tx.commit()?;
            Ok(UserChange {
                user_id,
                email: stored,
                created,
                blocked,
                groups,
                seq,
                ..UserChange::default()
            })
        })
        .await
    }

    /// Delete a user with their sessions and sign-in requests. `None` for an unknown
    /// address. The address can sign up again later (block it to prevent that).
    pub async fn remove_user(&self, email: String, now: i64) -> Result<Option<UserChange>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some((user_id, stored, _)) = find_user(&tx, &email)? else {
                return Ok(None);
            };
            let sessions: i64 = tx.query_row(
                "SELECT COUNT(*) FROM sessions WHERE user_id = ?1 AND confirmed = 1",
                args![user_id],
                |r| r.get(0),
            )?;
            // Before the delete: it finds the mail through the requests the delete removes.
            let mails = drop_queued_mail(&tx, user_id, &stored, "user removed")?;
            tx.execute("DELETE FROM users WHERE id = ?1", args![user_id])?;
            let detail = format!("{sessions} session(s) ended");
            audit_admin(&tx, now, "user_removed", &stored, Some(user_id), &detail)?;
            let seq = record_revocation(&tx, Some(user_id), now)?;
            tx.commit()?;
            Ok(Some(UserChange {
                user_id,
                email: stored,
                sessions: sessions as usize,
                mails,
                seq: Some(seq),
                ..UserChange::default()
            }))
        })
        .await
    }

    /// Block an address: end its sessions, cancel its pending sign-in requests, drop its
    /// queued mail. An unknown address gets a blocked user row, so it cannot sign up.
    pub async fn block_user(&self, email: String, now: i64) -> Result<UserChange> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let (user_id, stored, created) = match find_user(&tx, &email)? {
                Some((id, stored, _)) => {
                    tx.execute("UPDATE users SET blocked = 1 WHERE id = ?1", args![id])?;
                    (id, stored, false)
                }
                None => {
                    let id: i64 = tx.query_row(
                        "INSERT INTO users (email, created_at, blocked) VALUES (?1, ?2, 1)
                         RETURNING id",
                        args![email, now],
                        |r| r.get(0),
                    )?;
                    (id, email, true)
                }
            };
            let sessions = tx.execute(
                "DELETE FROM sessions WHERE user_id = ?1 AND confirmed = 1",
                args![user_id],
            )?;
            let requests = tx.execute(
                "UPDATE sign_in_requests SET state = 'cancelled'
                  WHERE user_id = ?1 AND state IN ('pending', 'approved')",
                args![user_id],
            )?;
            // Waiting browsers' pending sessions go too: they see no sign-in in progress.
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", args![user_id])?;
            let mails = drop_queued_mail(&tx, user_id, &stored, "user blocked")?;
            let detail = if created {
                "new address".to_string()
            } else {
                format!("{sessions} session(s) ended, {requests} sign-in request(s) cancelled, {mails} queued email(s) dropped")
            };
            audit_admin(&tx, now, "user_blocked", &stored, Some(user_id), &detail)?;
            // A user created just now has no sessions for servers to evict.
            let seq = if created {
                None
            } else {
                Some(record_revocation(&tx, Some(user_id), now)?)
            };
            let groups = groups_of(&tx, user_id)?;
            tx.commit()?;
            Ok(UserChange {
                user_id,
                email: stored,
                created,
                sessions,
                requests,
                mails,
                blocked: true,
                groups,
                seq,
            })
        })
        .await
    }

    /// Let a blocked user sign in again. `None` for an unknown address.
    pub async fn unblock_user(&self, email: String, now: i64) -> Result<Option<UserChange>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some((user_id, stored, was)) = find_user(&tx, &email)? else {
                return Ok(None);
            };
            tx.execute("UPDATE users SET blocked = 0 WHERE id = ?1", args![user_id])?;
            let detail = if was { "" } else { "was not blocked" };
            audit_admin(&tx, now, "user_unblocked", &stored, Some(user_id), detail)?;
            let seq = record_revocation(&tx, Some(user_id), now)?;
            let groups = groups_of(&tx, user_id)?;
            tx.commit()?;
            Ok(Some(UserChange {
                user_id,
                email: stored,
                groups,
                seq: Some(seq),
                ..UserChange::default()
            }))
        })
        .await
    }

    /// Add and remove group names (names are validated by the caller). `None` for an
    /// unknown address. Only an actual change is audited and sent to running servers.
    pub async fn set_user_groups(
        &self,
        email: String,
        add: Vec<String>,
        remove: Vec<String>,
        now: i64,
    ) -> Result<Option<UserChange>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some((user_id, stored, blocked)) = find_user(&tx, &email)? else {
                return Ok(None);
            };
            let changes = change_groups(&tx, user_id, &add, &remove)?;
            let mut seq = None;
            if !changes.is_empty() {
                audit_admin(
                    &tx,
                    now,
                    "groups_changed",
                    &stored,
                    Some(user_id),
                    &changes.join(" "),
                )?;
                seq = Some(record_revocation(&tx, Some(user_id), now)?);
            }
            let groups = groups_of(&tx, user_id)?;
            tx.commit()?;
            Ok(Some(UserChange {
                user_id,
                email: stored,
                blocked,
                groups,
                seq,
                ..UserChange::default()
            }))
        })
        .await
    }

    /// The newest `filter.limit` matching audit events, returned oldest first.
    pub async fn list_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRow>> {
        self.run(move |c| {
            let mut rows = c.query_map(
                "SELECT id, at, event, email, user_id, ip, user_agent, detail FROM audit
                  WHERE (?1 IS NULL OR email = ?1 COLLATE NOCASE)
                    AND (?2 IS NULL OR at >= ?2)
                    AND (?3 IS NULL OR event = ?3)
                  ORDER BY at DESC, id DESC LIMIT ?4",
                args![filter.email, filter.since, filter.event, filter.limit],
                |r| {
                    Ok(AuditRow {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        event: r.get(2)?,
                        email: r.get(3)?,
                        user_id: r.get(4)?,
                        ip: r.get(5)?,
                        user_agent: r.get(6)?,
                        detail: r.get(7)?,
                    })
                },
            )?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::secrets;
    use crate::store::{now, NewSignIn};

    use crate::store::testing::store;

    /// A sign-in for `email` as the handler builds it (allowed by the policy).
    fn sign_in(email: &str) -> NewSignIn {
        NewSignIn {
            email: email.into(),
            replaces: None,
            session_hash: secrets::random(),
            salt: secrets::random(),
            link_hash: secrets::random(),
            match_number: "42".into(),
            return_to: None,
            ip: "192.0.2.1".into(),
            user_agent: "test".into(),
            now: now(),
            link_ttl: 600,
            allowed: true,
        }
    }

    /// A sign-in request with its queued mail; returns (session hash, link hash).
    pub(crate) async fn request(s: &Store, email: &str) -> (secrets::Hash, secrets::Hash) {
        let (session_hash, link_hash) = (secrets::random::<32>(), secrets::random::<32>());
        let started = s
            .start_sign_in(NewSignIn {
                session_hash,
                link_hash,
                ..sign_in(email)
            })
            .await
            .unwrap();
        assert!(started.is_ok(), "sign-in of {email} refused");
        (session_hash, link_hash)
    }

    /// A confirmed session; returns its token hash.
    async fn signed_in(s: &Store, email: &str) -> secrets::Hash {
        let (session, link) = request(s, email).await;
        let done = s
            .confirm_same_browser(link, session, now(), 3600)
            .await
            .unwrap()
            .unwrap();
        secrets::hash(&done.token)
    }

    /// A sign-out is in the revocation log with the token's hash (other servers evict
    /// it); ending a session that is not there writes nothing.
    #[tokio::test]
    async fn a_sign_out_is_logged_for_the_other_servers() {
        let (_db, s) = store();
        let token = signed_in(&s, "una@example.com").await;
        let before = s.last_revocation().await.unwrap();
        assert!(s.delete_session(token, now()).await.unwrap());
        let rows = s.revocations_since(before).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].1,
            crate::store::Revoked::Session {
                hash: token,
                awaited: false
            }
        );
        assert!(!s.delete_session(token, now()).await.unwrap());
        assert_eq!(s.revocations_since(before).await.unwrap().len(), 1);
    }

    /// `sessions revoke --id` logs the one session by its hash, awaited, and only a
    /// session that is listed (confirmed, not expired) can be revoked so; the user's other
    /// session stays.
    #[tokio::test]
    async fn one_session_revoked_by_id_is_logged_by_its_hash_and_awaited() {
        let (_db, s) = store();
        let keep = signed_in(&s, "ona@example.com").await;
        let gone = signed_in(&s, "ona@example.com").await;
        let (pending, _) = request(&s, "ona@example.com").await;
        let id_of = |h: secrets::Hash| {
            let s = s.clone();
            async move { s.session(h, now(), 0).await.unwrap().unwrap().session_id }
        };
        let (keep_id, gone_id, pending_id) =
            (id_of(keep).await, id_of(gone).await, id_of(pending).await);
        let before = s.last_revocation().await.unwrap();
        assert_eq!(
            s.revoke_session(pending_id, now()).await.unwrap(),
            None,
            "pending"
        );
        let (email, seq) = s.revoke_session(gone_id, now()).await.unwrap().unwrap();
        assert_eq!(email, "ona@example.com");
        let rows = s.revocations_since(before).await.unwrap();
        assert_eq!(
            rows,
            vec![(
                seq,
                crate::store::Revoked::Session {
                    hash: gone,
                    awaited: true
                }
            )]
        );
        assert!(s.session(gone, now(), 0).await.unwrap().is_none());
        assert_eq!(
            s.session(keep, now(), 0).await.unwrap().unwrap().session_id,
            keep_id
        );
        assert_eq!(
            s.revoke_session(gone_id, now()).await.unwrap(),
            None,
            "already gone"
        );
    }

    #[tokio::test]
    async fn users_who_never_signed_in_are_swept_once_their_requests_are_gone() {
        let (_d, s) = store();
        signed_in(&s, "kept@example.com").await;
        request(&s, "never@example.com").await;
        s.add_user("invited@example.com".into(), vec![], now())
            .await
            .unwrap();
        s.sweep(now(), 0).await.unwrap();
        assert_eq!(s.list_users(None, now()).await.unwrap().len(), 3);
        // Two days on, sessions and requests have expired; the next sweeps remove them,
        // then the user who never signed in. The others stay (ids apps may have stored).
        let later = now() + 2 * 86400;
        s.sweep(later, 0).await.unwrap();
        s.sweep(later, 0).await.unwrap();
        let mut left: Vec<String> = s
            .list_users(None, later)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.email)
            .collect();
        left.sort();
        assert_eq!(left, ["invited@example.com", "kept@example.com"]);
    }

    /// The admin events (sign-in requests are audited too, by the sign-in writer).
    fn events(rows: &[AuditRow]) -> Vec<(&str, &str, &str)> {
        rows.iter()
            .filter(|r| !r.event.starts_with("sign_in_"))
            .map(|r| (r.event.as_str(), r.email.as_str(), r.detail.as_str()))
            .collect()
    }

    fn all(limit: u32) -> AuditFilter {
        AuditFilter {
            email: None,
            since: None,
            event: None,
            limit,
        }
    }

    #[tokio::test]
    async fn block_ends_everything_and_refuses_sign_ins() {
        let (_d, s) = store();
        let token = signed_in(&s, "Vera@example.com").await;
        let (pending, _) = request(&s, "vera@example.com").await;
        let other = signed_in(&s, "walt@example.com").await;
        let before = s.last_revocation().await.unwrap();

        let c = s
            .block_user("VERA@example.com".into(), now())
            .await
            .unwrap();
        assert_eq!(c.email, "Vera@example.com", "stored spelling");
        assert!(!c.created);
        assert_eq!((c.sessions, c.requests, c.mails), (1, 1, 2));
        let seq = c.seq.expect("a revocation record");
        assert!(seq > before);
        assert_eq!(
            s.revocations_since(before).await.unwrap(),
            vec![(seq, crate::store::Revoked::Sessions(Some(c.user_id)))]
        );
        assert!(s.session(token, now(), 0).await.unwrap().is_none());
        assert!(s.session(pending, now(), 0).await.unwrap().is_none());
        assert!(s.session(other, now(), 0).await.unwrap().is_some());
        // Nothing of Vera's is left to send; Walt's mail is.
        let due = s
            .claim_mail(
                crate::store::Lane::SignIn,
                "test".into(),
                now() + 1,
                now() + 60,
                100,
            )
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].recipient, "walt@example.com");
        // No new sign-in either.
        let refused = s.start_sign_in(sign_in("vera@example.com")).await.unwrap();
        assert_eq!(refused.unwrap_err(), super::super::NotStarted::Blocked);
        let u = s
            .list_users(Some("vera@example.com".into()), now())
            .await
            .unwrap();
        assert_eq!(u.len(), 1);
        assert!(u[0].blocked);
        assert_eq!(u[0].sessions, 0);
        let a = s.list_audit(all(10)).await.unwrap();
        assert_eq!(
            events(&a),
            vec![(
                "user_blocked",
                "Vera@example.com",
                "1 session(s) ended, 1 sign-in request(s) cancelled, 2 queued email(s) dropped"
            )]
        );
        let blocked = a.iter().find(|r| r.event == "user_blocked").unwrap();
        assert_eq!(
            (blocked.ip.as_str(), blocked.user_agent.as_str()),
            ("", "cli")
        );
        assert_eq!(blocked.user_id, Some(c.user_id));

        // Unblocked: signs in again.
        let c2 = s
            .unblock_user("vera@example.com".into(), now())
            .await
            .unwrap()
            .unwrap();
        assert!(c2.seq.unwrap() > seq);
        signed_in(&s, "vera@example.com").await;
        assert!(s
            .unblock_user("nobody@example.com".into(), now())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn blocking_an_unknown_address_keeps_it_from_signing_up() {
        let (_d, s) = store();
        let c = s.block_user("new@example.com".into(), now()).await.unwrap();
        assert!(c.created && c.blocked);
        assert_eq!(c.seq, None, "nothing cached to evict");
        let u = s.list_users(None, now()).await.unwrap();
        assert_eq!((u.len(), u[0].blocked, u[0].invited), (1, true, false));
        let r = s.start_sign_in(sign_in("NEW@example.com")).await.unwrap();
        assert_eq!(r.unwrap_err(), super::super::NotStarted::Blocked);
    }

    #[tokio::test]
    async fn add_groups_remove_are_audited_and_revoked() {
        let (_d, s) = store();
        let t = now();
        let c = s
            .add_user(
                "ann@example.com".into(),
                vec!["ops".into(), "admins".into()],
                t,
            )
            .await
            .unwrap();
        assert!(c.created);
        assert_eq!(c.groups, ["admins", "ops"]);
        assert_eq!(c.seq, None, "a new user has no sessions");
        // An existing user: invited, and the group change reaches running servers.
        signed_in(&s, "bob@example.com").await;
        let c = s
            .add_user("bob@example.com".into(), vec![], t)
            .await
            .unwrap();
        // Newly invited: running servers re-read the user (the [access] lists may not
        // admit them, an invitation does).
        assert!(!c.created && c.seq.is_some() && c.groups.is_empty());
        let again = s
            .add_user("bob@example.com".into(), vec![], t)
            .await
            .unwrap();
        assert!(again.seq.is_none(), "already invited: nothing to re-read");
        let c = s
            .add_user("bob@example.com".into(), vec!["dev".into()], t)
            .await
            .unwrap();
        assert!(c.seq.is_some());

        let c = s
            .set_user_groups(
                "ann@example.com".into(),
                vec!["dev".into(), "ops".into()],
                vec!["admins".into(), "never".into()],
                t,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.groups, ["dev", "ops"]);
        let seq = c.seq.unwrap();
        // No actual change: nothing audited, nothing for servers.
        let c = s
            .set_user_groups("ann@example.com".into(), vec!["dev".into()], vec![], t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.seq, None);
        assert!(s
            .set_user_groups("x@example.com".into(), vec![], vec![], t)
            .await
            .unwrap()
            .is_none());

        let users = s.list_users(None, now()).await.unwrap();
        let view: Vec<_> = users
            .iter()
            .map(|u| (u.email.as_str(), u.invited, u.groups.clone(), u.sessions))
            .collect();
        assert_eq!(
            view,
            vec![
                (
                    "ann@example.com",
                    true,
                    vec!["dev".to_string(), "ops".into()],
                    0
                ),
                ("bob@example.com", true, vec!["dev".to_string()], 1),
            ]
        );
        assert!(users[1].last_seen_at.is_some() && users[0].last_seen_at.is_none());

        let r = s
            .remove_user("BOB@example.com".into(), t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.sessions, 1);
        assert!(r.seq.unwrap() > seq);
        assert!(s
            .remove_user("bob@example.com".into(), t)
            .await
            .unwrap()
            .is_none());
        assert_eq!(s.list_users(None, now()).await.unwrap().len(), 1);

        let a = s.list_audit(all(100)).await.unwrap();
        assert_eq!(
            events(&a),
            vec![
                ("user_added", "ann@example.com", "new user"),
                ("groups_changed", "ann@example.com", "+ops +admins"),
                ("user_added", "bob@example.com", "existing user invited"),
                ("user_added", "bob@example.com", "already invited"),
                ("user_added", "bob@example.com", "already invited"),
                ("groups_changed", "bob@example.com", "+dev"),
                ("groups_changed", "ann@example.com", "+dev -admins"),
                ("user_removed", "bob@example.com", "1 session(s) ended"),
            ]
        );
    }

    #[tokio::test]
    async fn audit_filters_and_order() {
        let (_d, s) = store();
        let t = now();
        s.add_user("ann@example.com".into(), vec![], t - 100)
            .await
            .unwrap();
        s.add_user("Bob@example.com".into(), vec![], t - 50)
            .await
            .unwrap();
        s.block_user("bob@example.com".into(), t - 10)
            .await
            .unwrap();
        let (n, _) = s.revoke(None, t).await.unwrap().unwrap();
        assert_eq!(n, 0);
        let pick =
            |email: Option<&str>, since: Option<i64>, event: Option<&str>, limit| AuditFilter {
                email: email.map(str::to_string),
                since,
                event: event.map(str::to_string),
                limit,
            };
        let ev = |rows: Vec<AuditRow>| rows.into_iter().map(|r| r.event).collect::<Vec<_>>();
        assert_eq!(
            ev(s.list_audit(all(100)).await.unwrap()),
            [
                "user_added",
                "user_added",
                "user_blocked",
                "sessions_revoked"
            ]
        );
        // The newest two, still oldest first.
        assert_eq!(
            ev(s.list_audit(all(2)).await.unwrap()),
            ["user_blocked", "sessions_revoked"]
        );
        assert_eq!(
            ev(s.list_audit(pick(Some("BOB@example.com"), None, None, 100))
                .await
                .unwrap()),
            ["user_added", "user_blocked"]
        );
        assert_eq!(
            ev(s.list_audit(pick(None, Some(t - 50), None, 100))
                .await
                .unwrap()),
            ["user_added", "user_blocked", "sessions_revoked"]
        );
        assert_eq!(
            ev(s.list_audit(pick(None, None, Some("user_added"), 100))
                .await
                .unwrap()),
            ["user_added", "user_added"]
        );
        assert!(s
            .list_audit(pick(Some("ann@example.com"), Some(t - 99), None, 100))
            .await
            .unwrap()
            .is_empty());
        let a = s
            .list_audit(pick(None, None, Some("sessions_revoked"), 1))
            .await
            .unwrap();
        assert_eq!(
            (a[0].email.as_str(), a[0].user_id, a[0].detail.as_str()),
            ("", None, "0")
        );
    }
}
