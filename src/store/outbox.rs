//! The durable mail outbox: sign-in mail and the email API's messages, one table.
//!
//! Two lanes, by `kind`: `sign_in` (rendered at send time, time-critical) and `api`
//! (composed when accepted, stored as the bytes to send). Each lane is claimed and sent
//! separately, so a backlog of API mail never delays a sign-in link.
//!
//! A server claims a batch by writing its id into `claimed_by` and pushing
//! `next_attempt_at` forward by a lease; the outcome clears the claim. Claims of a
//! server that stopped heartbeating (killed) are released by the others, and by its
//! successor on the same database, so a crash loses nothing: at worst a message whose
//! "250 OK" was not recorded yet is sent again, with the same Message-ID.

use super::db::{args, Arg, Db, Row};

use super::{servers, RequestInfo, Result, Store};
use crate::config::Rate;

/// Which messages a sender loop works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    SignIn,
    Api,
}

impl Lane {
    pub fn kind(self) -> &'static str {
        match self {
            Lane::SignIn => "sign_in",
            Lane::Api => "api",
        }
    }
}

/// A message claimed for delivery.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub kind: String,
    pub recipient: String,
    pub attempts: i64,
    pub created_at: i64,
    /// Given up on after this (`None`: only `email.max_attempts` applies).
    pub deadline: Option<i64>,
    /// API mail: the message as composed when accepted, and its envelope sender.
    pub raw: Option<Vec<u8>>,
    pub sender: Option<String>,
    /// API mail to a user who has since been blocked or removed: why it must not go.
    pub refused: Option<String>,
    /// For sign-in mail: its request, read in the same query.
    pub request: Option<RequestInfo>,
}

/// What happened to one delivery attempt.
#[derive(Debug)]
pub enum MailOutcome {
    Sent,
    Retry { error: String, at: i64 },
    Failed { error: String },
}

/// A message for the email API to queue.
#[derive(Debug)]
pub struct NewApiMail {
    /// The normalised recipient address.
    pub recipient: String,
    /// The user it is for; `None` with `create_user`: create one for `recipient`.
    pub user_id: Option<i64>,
    pub create_user: bool,
    pub subject: String,
    pub sender: String,
    pub message_id: String,
    pub raw: Vec<u8>,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request that carried the key.
    pub request_hash: Option<Vec<u8>>,
    pub now: i64,
    pub deadline: i64,
    pub per_recipient: Rate,
    pub global: Rate,
}

/// A queued API message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    pub message_id: String,
    pub user_id: Option<i64>,
    /// An earlier request with the same Idempotency-Key queued it.
    pub replayed: bool,
}

/// Why the email API did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiMailRefusal {
    /// Over `limits.api_email_per_recipient` (true) or `limits.api_email_global`; a slot
    /// frees up in `retry_after` seconds.
    RateLimited {
        per_recipient: bool,
        retry_after: i64,
    },
    /// The user was blocked (no mail goes to blocked users).
    Blocked,
    /// No such user (and `create_user` was not asked).
    NoUser,
    /// The Idempotency-Key was used before for a different request.
    KeyReused,
}

/// A message as `outbox list` and `GET /api/email/{id}` show it (no body).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MailRow {
    pub id: i64,
    pub kind: String,
    /// queued, sending (claimed by a server right now), sent or failed.
    pub status: String,
    pub recipient: String,
    pub user_id: Option<i64>,
    pub subject: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    /// When the next attempt is due (queued messages only).
    pub next_attempt_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub message_id: Option<String>,
}

/// Which messages `outbox list|retry|purge` act on.
#[derive(Debug, Clone, Default)]
pub struct MailFilter {
    pub ids: Vec<i64>,
    /// queued, sent or failed (`None`: any).
    pub states: Vec<String>,
    pub kind: Option<String>,
    /// Created at or before this time.
    pub created_before: Option<i64>,
    pub limit: Option<i64>,
}

const ROW_COLUMNS: &str = "o.id, o.kind,
    CASE WHEN o.state = 'queued' AND o.claimed_by IS NOT NULL THEN 'sending' ELSE o.state END,
    o.recipient, o.user_id, o.subject, o.attempts, o.last_error, o.created_at,
    CASE WHEN o.state = 'queued' AND o.claimed_by IS NULL THEN o.next_attempt_at END,
    o.sent_at, o.message_id";

fn mail_row(r: &Row) -> Result<MailRow> {
    Ok(MailRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        status: r.get(2)?,
        recipient: r.get(3)?,
        user_id: r.get(4)?,
        subject: r.get(5)?,
        attempts: r.get(6)?,
        last_error: r.get(7)?,
        created_at: r.get(8)?,
        next_attempt_at: r.get(9)?,
        sent_at: r.get(10)?,
        message_id: r.get(11)?,
    })
}

/// `WHERE` clause and parameters for a filter (`o` is the outbox).
fn filter_sql(f: &MailFilter) -> (String, Vec<Arg<'_>>) {
    let mut clauses = vec!["1 = 1".to_string()];
    let mut args: Vec<Arg> = Vec::new();
    if !f.ids.is_empty() {
        let marks = f.ids.iter().map(|_| "?").collect::<Vec<_>>().join(", ");
        clauses.push(format!("o.id IN ({marks})"));
        args.extend(f.ids.iter().map(|i| Arg::Int(*i)));
    }
    if !f.states.is_empty() {
        let marks = f.states.iter().map(|_| "?").collect::<Vec<_>>().join(", ");
        clauses.push(format!("o.state IN ({marks})"));
        args.extend(f.states.iter().map(|s| Arg::Text(s)));
    }
    if let Some(k) = &f.kind {
        clauses.push("o.kind = ?".into());
        args.push(Arg::Text(k));
    }
    if let Some(t) = f.created_before {
        clauses.push("o.created_at <= ?".into());
        args.push(Arg::Int(t));
    }
    (clauses.join(" AND "), args)
}

/// How many API messages were accepted in the window of `rate` before `now` (for one
/// recipient, or all), and in how many seconds one more would be accepted.
fn over_rate(c: &Db, rate: Rate, recipient: Option<&str>, now: i64) -> Result<Option<i64>> {
    let Some((limit, window)) = rate.0 else {
        return Ok(None);
    };
    let since = now - window.as_secs() as i64;
    let (count, oldest): (i64, Option<i64>) = match recipient {
        Some(r) => c.query_row(
            "SELECT COUNT(*), MIN(created_at) FROM outbox
                  WHERE kind = 'api' AND recipient = ?1 COLLATE NOCASE AND created_at > ?2",
            args![r, since],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?,
        None => c.query_row(
            "SELECT COUNT(*), MIN(created_at) FROM outbox
                  WHERE kind = 'api' AND created_at > ?1",
            args![since],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?,
    };
    if count < i64::from(limit) {
        return Ok(None);
    }
    // The window slides: a slot frees when the oldest counted message leaves it.
    let oldest = oldest.unwrap_or(now);
    Ok(Some((oldest + window.as_secs() as i64 - now).max(1)))
}

/// The message queued with this key, if the same request (by hash) queued it; a
/// different request with the key is `KeyReused`.
fn queued_by_key(
    c: &Db,
    key: &str,
    request_hash: Option<&[u8]>,
) -> Result<Option<std::result::Result<Queued, ApiMailRefusal>>> {
    c.query_opt(
        "SELECT id, message_id, user_id, request_hash FROM outbox WHERE idempotency_key = ?1",
        args![key],
        |r| {
            let stored: Option<Vec<u8>> = r.get(3)?;
            if stored.as_deref() != request_hash {
                return Ok(Err(ApiMailRefusal::KeyReused));
            }
            Ok(Ok(Queued {
                id: r.get(0)?,
                message_id: r.get::<Option<String>>(1)?.unwrap_or_default(),
                user_id: r.get(2)?,
                replayed: true,
            }))
        },
    )
}

impl Store {
    /// The user with this id: `(email, blocked)`.
    pub async fn user_by_id(&self, id: i64) -> Result<Option<(String, bool)>> {
        self.run(move |c| {
            c.query_opt(
                "SELECT email, blocked FROM users WHERE id = ?1",
                args![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    /// The user with this address: `(id, stored email, blocked)`.
    pub async fn user_by_email(&self, email: String) -> Result<Option<(i64, String, bool)>> {
        self.run(move |c| super::users::find_user(c, &email)).await
    }

    /// The message an earlier request with this Idempotency-Key queued, if it was the
    /// same request (`request_hash`); `KeyReused` if it was another one.
    pub async fn mail_by_idempotency_key(
        &self,
        key: String,
        request_hash: Vec<u8>,
    ) -> Result<Option<std::result::Result<Queued, ApiMailRefusal>>> {
        self.run(move |c| queued_by_key(c, &key, Some(&request_hash)))
            .await
    }

    /// Queue an API message: rate ceilings, the recipient's status and the insert in one
    /// transaction.
    pub async fn queue_api_mail(
        &self,
        m: NewApiMail,
    ) -> Result<std::result::Result<Queued, ApiMailRefusal>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            if let Some(key) = &m.idempotency_key {
                if let Some(q) = queued_by_key(&tx, key, m.request_hash.as_deref())? {
                    return Ok(q);
                }
            }
            if let Some(retry_after) = over_rate(&tx, m.global, None, m.now)? {
                return Ok(Err(ApiMailRefusal::RateLimited {
                    per_recipient: false,
                    retry_after,
                }));
            }
            if let Some(retry_after) = over_rate(&tx, m.per_recipient, Some(&m.recipient), m.now)? {
                return Ok(Err(ApiMailRefusal::RateLimited {
                    per_recipient: true,
                    retry_after,
                }));
            }
            // The recipient, as it is now (removed or blocked since it was looked up?).
            let user = super::users::find_user(&tx, &m.recipient)?;
            let user_id = match (user, m.user_id) {
                (Some((_, _, true)), _) => return Ok(Err(ApiMailRefusal::Blocked)),
                (Some((id, _, false)), Some(want)) if id != want => {
                    return Ok(Err(ApiMailRefusal::NoUser))
                }
                (Some((id, _, false)), _) => id,
                (None, None) if m.create_user => tx.query_one(
                    "INSERT INTO users (email, created_at, api_created) VALUES (?1, ?2, 1)
                         RETURNING id",
                    args![&m.recipient, m.now],
                )?,
                (None, _) => return Ok(Err(ApiMailRefusal::NoUser)),
            };
            let id: i64 = tx.query_one(
                "INSERT INTO outbox (kind, recipient, subject, next_attempt_at, created_at, raw,
                                     sender, message_id, user_id, deadline, idempotency_key,
                                     request_hash)
                 VALUES ('api', ?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                args![
                    &m.recipient,
                    &m.subject,
                    m.now,
                    &m.raw,
                    &m.sender,
                    &m.message_id,
                    user_id,
                    m.deadline,
                    &m.idempotency_key,
                    &m.request_hash
                ],
            )?;
            tx.commit()?;
            Ok(Ok(Queued {
                id,
                message_id: m.message_id,
                user_id: Some(user_id),
                replayed: false,
            }))
        })
        .await
    }

    /// Claim up to `limit` due messages of `lane` for server `server` until `lease_until`.
    pub async fn claim_mail(
        &self,
        lane: Lane,
        server: String,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let ids: Vec<i64> = tx.query_map(
                "SELECT id FROM outbox
                      WHERE state = 'queued' AND kind = ?1 AND next_attempt_at <= ?2
                      ORDER BY next_attempt_at, id LIMIT ?3",
                args![lane.kind(), now, limit],
                |r| r.get(0),
            )?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE outbox SET claimed_by = ?2, next_attempt_at = ?3 WHERE id = ?1",
                    args![id, &server, lease_until],
                )?;
                items.push(read_item(&tx, id)?);
            }
            tx.commit()?;
            Ok(items)
        })
        .await
    }

    /// When the next message of `lane` is due, if any is queued.
    pub async fn next_mail_due(&self, lane: Lane) -> Result<Option<i64>> {
        self.run(move |c| {
            c.query_row(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'queued' AND kind = ?1",
                args![lane.kind()],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Record the outcome of a batch of delivery attempts in one transaction, ending
    /// their claims.
    pub async fn mail_results(&self, results: Vec<(i64, MailOutcome)>, now: i64) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        self.write(move |c| {
            let tx = c.transaction()?;
            for (id, outcome) in results {
                match outcome {
                    MailOutcome::Sent => tx.execute(
                        "UPDATE outbox SET state = 'sent', sent_at = ?2, claimed_by = NULL,
                                    attempts = attempts + 1, last_error = NULL, raw = NULL
                              WHERE id = ?1",
                        args![id, now],
                    )?,
                    MailOutcome::Retry { error, at } => tx.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2,
                                    next_attempt_at = ?3, claimed_by = NULL
                              WHERE id = ?1 AND state = 'queued'",
                        args![id, error, at],
                    )?,
                    MailOutcome::Failed { error } => tx.execute(
                        "UPDATE outbox SET state = 'failed', attempts = attempts + 1,
                                    last_error = ?2, claimed_by = NULL WHERE id = ?1",
                        args![id, error],
                    )?,
                };
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Hand back what `server` claimed and did not send (it is stopping): due now.
    pub async fn release_claims(&self, server: String, now: i64) -> Result<usize> {
        self.write(move |c| {
            c.execute(
                "UPDATE outbox SET claimed_by = NULL, next_attempt_at = ?2
                  WHERE claimed_by = ?1 AND state = 'queued'",
                args![server, now],
            )
        })
        .await
    }

    /// Release the claims of servers that are gone (no heartbeat for
    /// `servers::LIVE_FOR`, or no record at all), other than `me`: due now.
    pub async fn release_stale_claims(&self, me: String, now: i64) -> Result<usize> {
        self.write(move |c| {
            c.execute(
                "UPDATE outbox SET claimed_by = NULL, next_attempt_at = ?3
                  WHERE claimed_by IS NOT NULL AND claimed_by != ?1 AND state = 'queued'
                    AND claimed_by NOT IN (SELECT id FROM servers WHERE heartbeat_at >= ?2)",
                args![me, now - servers::LIVE_FOR, now],
            )
        })
        .await
    }

    /// One message, by id (`kind`: only of this kind).
    pub async fn mail(&self, id: i64, kind: Option<&'static str>) -> Result<Option<MailRow>> {
        self.run(move |c| {
            c.query_opt(
                &format!(
                "SELECT {ROW_COLUMNS} FROM outbox o WHERE o.id = ?1 AND (?2 IS NULL OR o.kind = ?2)"
            ),
                args![id, kind],
                mail_row,
            )
        })
        .await
    }

    /// Messages matching `f`, newest first.
    pub async fn list_mail(&self, f: MailFilter) -> Result<Vec<MailRow>> {
        self.run(move |c| {
            let (clause, mut args) = filter_sql(&f);
            args.push(Arg::Int(f.limit.unwrap_or(i64::MAX)));
            let sql = format!(
                "SELECT {ROW_COLUMNS} FROM outbox o WHERE {clause} ORDER BY o.id DESC LIMIT ?"
            );
            c.query_map(&sql, &args, mail_row)
        })
        .await
    }

    /// Queue failed (or still queued) messages matching `f` again, due now, with a fresh
    /// attempt count and deadline. Sent messages are never sent again. Returns the ids.
    pub async fn retry_mail(&self, f: MailFilter, now: i64, deadline: i64) -> Result<Vec<i64>> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let (clause, args) = filter_sql(&f);
            let ids: Vec<i64> = {
                let sql = format!(
                    "SELECT o.id FROM outbox o WHERE {clause} AND o.state IN ('failed', 'queued')
                       AND o.claimed_by IS NULL AND o.kind = 'api' AND o.raw IS NOT NULL
                       AND (o.user_id IS NULL OR EXISTS
                            (SELECT 1 FROM users u WHERE u.id = o.user_id AND u.blocked = 0))
                     ORDER BY o.id"
                );
                tx.query_map(&sql, &args, |r| r.get(0))?
            };
            for id in &ids {
                tx.execute(
                    "UPDATE outbox SET state = 'queued', attempts = 0, next_attempt_at = ?2,
                            deadline = ?3, last_error = NULL WHERE id = ?1",
                    args![id, now, deadline],
                )?;
            }
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    /// Delete messages matching `f` (not ones being sent right now). Returns how many.
    pub async fn purge_mail(&self, f: MailFilter) -> Result<usize> {
        self.write(move |c| {
            let (clause, args) = filter_sql(&f);
            let sql = format!(
                "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o WHERE {clause}
                   AND o.claimed_by IS NULL)"
            );
            // Under the write lock: not while another replica claims what it deletes.
            let tx = c.transaction()?;
            let n = tx.execute(&sql, &args)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

/// One claimed message with, for sign-in mail, its request.
fn read_item(c: &Db, id: i64) -> Result<OutboxItem> {
    c.query_row(
        "SELECT o.id, o.kind, o.recipient, o.attempts, o.created_at, o.deadline, o.raw, o.sender,
                r.id, u.email, r.salt, r.link_hash, r.state, r.match_number,
                r.return_to, r.ip, r.user_agent, r.created_at, r.expires_at, r.silent,
                CASE WHEN o.user_id IS NULL THEN NULL
                     WHEN a.id IS NULL THEN 'the user was removed'
                     WHEN a.blocked = 1 THEN 'the user is blocked' END
           FROM outbox o
           LEFT JOIN sign_in_requests r ON r.id = o.request_id
           LEFT JOIN users u ON u.id = r.user_id
           LEFT JOIN users a ON a.id = o.user_id
          WHERE o.id = ?1",
        args![id],
        |r| {
            let request = match r.get::<Option<i64>>(8)? {
                Some(id) => Some(RequestInfo {
                    id,
                    email: r.get(9)?,
                    salt: r.get(10)?,
                    link_hash: r.get(11)?,
                    state: r.get(12)?,
                    match_number: r.get(13)?,
                    return_to: r.get(14)?,
                    ip: r.get(15)?,
                    user_agent: r.get(16)?,
                    created_at: r.get(17)?,
                    expires_at: r.get(18)?,
                    silent: r.get(19)?,
                }),
                None => None,
            };
            Ok(OutboxItem {
                id: r.get(0)?,
                kind: r.get(1)?,
                recipient: r.get(2)?,
                attempts: r.get(3)?,
                created_at: r.get(4)?,
                deadline: r.get(5)?,
                raw: r.get(6)?,
                sender: r.get(7)?,
                refused: r.get(20)?,
                request,
            })
        },
    )
}
