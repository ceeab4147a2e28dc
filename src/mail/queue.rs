//! Queueing a message for a user: what `POST /api/email` and `authbase email send`
//! share. Resolve the recipient, check and compose the message, then queue it under the
//! rate ceilings in one transaction.

use crate::config::Config;
use crate::email_addr;
use crate::mail::compose::{self, Draft};
use crate::secrets;
use crate::store::{now, ApiMailRefusal, NewApiMail, Queued, Store, StoreError};

/// Who a message is for.
#[derive(Debug, Clone)]
pub enum To {
    UserId(i64),
    /// An address; `create`: create the user when there is none.
    Email {
        email: String,
        create: bool,
    },
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A field is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// The recipient does not exist (422).
    #[error("{0}")]
    NoUser(String),
    /// The recipient is blocked (409).
    #[error("the user is blocked: no mail is sent to blocked users")]
    Blocked,
    /// The Idempotency-Key was used for a different request (422).
    #[error(
        "this Idempotency-Key was used for a different request; use a new key for a new message"
    )]
    KeyReused,
    /// Over a ceiling (429); `limit` names the `[limits]` key.
    #[error("too many messages {} (limits.{limit}); try again in {retry_after} s", if *.limit == "api_email_per_recipient" { "for this recipient" } else { "overall" })]
    RateLimited {
        limit: &'static str,
        retry_after: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Queue `draft` (its `to` is filled in here) for `to`. Returns the queued message and,
/// when `create` made one, the address of the user created.
pub async fn queue(
    cfg: &Config,
    store: &Store,
    to: To,
    mut draft: Draft,
    idempotency: Option<(String, Vec<u8>)>,
) -> Result<(Queued, Option<String>), QueueError> {
    let (idempotency_key, request_hash) = idempotency.unzip();
    let (recipient, user_id, create) = match to {
        To::UserId(id) => match store.user_by_id(id).await? {
            None => return Err(QueueError::NoUser(format!("no user with id {id}"))),
            Some((_, true)) => return Err(QueueError::Blocked),
            Some((email, false)) => (email, Some(id), false),
        },
        To::Email { email, create } => {
            let e = email_addr::normalise(&email)
                .map_err(|x| QueueError::Invalid(format!("email {email:?}: {x}")))?;
            match store.user_by_email(e.clone()).await? {
                Some((_, _, true)) => return Err(QueueError::Blocked),
                Some((id, stored, false)) => (stored, Some(id), false),
                None if create => (e, None, true),
                None => {
                    return Err(QueueError::NoUser(format!(
                        "no user {e}; ask to create one (create_user / --create-user)"
                    )))
                }
            }
        }
    };
    draft.to = recipient.clone();
    compose::check(&draft, cfg.api.max_message_bytes).map_err(QueueError::Invalid)?;
    let created = now();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(created.max(0) as u64);
    let composed =
        compose::compose(cfg, &draft, at, &secrets::random::<16>()).map_err(QueueError::Invalid)?;
    let outcome = store
        .queue_api_mail(NewApiMail {
            recipient: recipient.clone(),
            user_id,
            create_user: create,
            subject: draft.subject.trim().to_string(),
            sender: composed.sender,
            message_id: composed.message_id,
            raw: composed.raw,
            idempotency_key,
            request_hash,
            now: created,
            deadline: created + cfg.email.max_age.secs(),
            per_recipient: cfg.limits.api_email_per_recipient,
            global: cfg.limits.api_email_global,
        })
        .await?;
    match outcome {
        Ok(q) => {
            let created = (user_id.is_none() && !q.replayed).then_some(recipient);
            Ok((q, created))
        }
        Err(ApiMailRefusal::Blocked) => Err(QueueError::Blocked),
        Err(ApiMailRefusal::KeyReused) => Err(QueueError::KeyReused),
        Err(ApiMailRefusal::NoUser) => Err(QueueError::NoUser(format!(
            "no user {recipient} (removed meanwhile?)"
        ))),
        Err(ApiMailRefusal::RateLimited {
            per_recipient,
            retry_after,
        }) => Err(QueueError::RateLimited {
            limit: if per_recipient {
                "api_email_per_recipient"
            } else {
                "api_email_global"
            },
            retry_after,
        }),
    }
}
