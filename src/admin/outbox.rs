//! `authbase email send` and `authbase outbox list|retry|purge`: the mail queue from the
//! command line, while servers run (a running server picks up what is queued here within
//! a few seconds: it looks at least every 5 s).

use std::path::{Path, PathBuf};

use super::{json, open, plural, AdminError, Report};
use crate::config::{Config, Dur};
use crate::mail::compose::{Attachment, Draft};
use crate::mail::queue::{self, QueueError, To};
use crate::pages::utc;
use crate::store::{now, MailFilter, MailRow};

/// What `authbase email send` is given (its command-line arguments).
#[derive(Debug, Default, clap::Args)]
pub struct SendArgs {
    /// The recipient's address (a user; see --create-user).
    #[arg(
        long,
        value_name = "EMAIL",
        required_unless_present = "user_id",
        conflicts_with = "user_id"
    )]
    pub to: Option<String>,
    /// The recipient's user id.
    #[arg(long, value_name = "ID")]
    pub user_id: Option<i64>,
    /// Create the user when there is none with this address.
    #[arg(long)]
    pub create_user: bool,
    /// The subject (UTF-8, one line).
    #[arg(long)]
    pub subject: String,
    /// The plain-text body, from a UTF-8 file (`-`: standard input).
    #[arg(long, value_name = "FILE", required_unless_present = "html")]
    pub text: Option<PathBuf>,
    /// The HTML body, from a UTF-8 file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Reply-To address.
    #[arg(long, value_name = "EMAIL")]
    pub reply_to: Option<String>,
    /// A file to attach (repeatable; the type is guessed from the extension).
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
}

fn read_text(what: &str, p: &Path) -> Result<String, AdminError> {
    let bytes = if p == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .map_err(|e| AdminError::Input(format!("{what}: reading standard input: {e}")))?;
        b
    } else {
        std::fs::read(p).map_err(|e| AdminError::Input(format!("{what} {}: {e}", p.display())))?
    };
    String::from_utf8(bytes)
        .map_err(|_| AdminError::Input(format!("{what} {}: not UTF-8 text", p.display())))
}

/// A content type from the file name's extension.
fn guess_type(p: &Path) -> &'static str {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "ics" => "text/calendar",
        _ => "application/octet-stream",
    }
}

/// `authbase email send`.
pub async fn email_send(cfg: &Config, a: SendArgs) -> Result<Report, AdminError> {
    let to = match (a.to, a.user_id) {
        (Some(email), None) => To::Email {
            email,
            create: a.create_user,
        },
        (None, Some(id)) if !a.create_user => To::UserId(id),
        (None, Some(_)) => {
            return Err(AdminError::Input(
                "--create-user needs --to, not --user-id".into(),
            ))
        }
        _ => {
            return Err(AdminError::Input(
                "give exactly one of --to and --user-id".into(),
            ))
        }
    };
    if a.text.as_deref() == Some(Path::new("-")) && a.html.as_deref() == Some(Path::new("-")) {
        return Err(AdminError::Input(
            "only one of --text and --html can read standard input".into(),
        ));
    }
    let text = a
        .text
        .as_deref()
        .map(|p| read_text("--text", p))
        .transpose()?;
    let html = a
        .html
        .as_deref()
        .map(|p| read_text("--html", p))
        .transpose()?;
    let mut attachments = Vec::new();
    for p in &a.attach {
        let content = std::fs::read(p)
            .map_err(|e| AdminError::Input(format!("--attach {}: {e}", p.display())))?;
        let filename = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AdminError::Input(format!("--attach {}: no file name", p.display())))?
            .to_string();
        attachments.push(Attachment {
            filename,
            content_type: guess_type(p).into(),
            content,
        });
    }
    let draft = Draft {
        to: String::new(),
        subject: a.subject,
        text,
        html,
        reply_to: a.reply_to,
        attachments,
    };
    let store = open(cfg)?;
    match queue::queue(cfg, &store, to, draft, None).await {
        Ok((q, created)) => {
            let mut out = format!("queued message {} {}\n", q.id, q.message_id);
            if let Some(email) = created {
                store
                    .record_audit(vec![crate::store::AuditEvent {
                        at: now(),
                        event: "api_user_created",
                        email: email.clone(),
                        user_id: q.user_id,
                        ip: String::new(),
                        user_agent: "authbase email send".into(),
                        detail: "--create-user".into(),
                    }])
                    .await?;
                out.push_str(&format!("created user {email}\n"));
            }
            Ok(Report { out, warning: None })
        }
        Err(QueueError::Store(e)) => Err(e.into()),
        Err(e) => Err(AdminError::Input(e.to_string())),
    }
}

const STATES: &[&str] = &["queued", "sent", "failed"];

fn states(list: &[String]) -> Result<Vec<String>, AdminError> {
    for s in list {
        if !STATES.contains(&s.as_str()) {
            return Err(AdminError::Input(format!(
                "--state {s:?}: one of {}",
                STATES.join(", ")
            )));
        }
    }
    Ok(list.to_vec())
}

fn kind(k: Option<String>) -> Result<Option<String>, AdminError> {
    match k.as_deref() {
        None | Some("api" | "sign_in") => Ok(k),
        Some(other) => Err(AdminError::Input(format!(
            "--kind {other:?}: one of api, sign_in"
        ))),
    }
}

fn table(rows: &[MailRow]) -> String {
    let mut out = format!(
        "{:<8} {:<8} {:<8} {:<4} {:<22} {:<32} {:<32} {}\n",
        "ID", "KIND", "STATUS", "TRY", "CREATED", "TO", "SUBJECT", "NEXT / SENT / ERROR"
    );
    for r in rows {
        let subject = if r.kind == "sign_in" {
            "(sign-in link)".to_string()
        } else {
            r.subject.chars().take(32).collect()
        };
        let last = match r.status.as_str() {
            "sent" => r
                .sent_at
                .map(|t| format!("sent {}", utc(t)))
                .unwrap_or_default(),
            "failed" => r.last_error.clone().unwrap_or_default(),
            _ => {
                let next = r
                    .next_attempt_at
                    .map(|t| format!("next {}", utc(t)))
                    .unwrap_or_default();
                match &r.last_error {
                    Some(e) => format!("{next}; last error: {e}"),
                    None => next,
                }
            }
        };
        let line = format!(
            "{:<8} {:<8} {:<8} {:<4} {:<22} {:<32} {:<32} {}",
            r.id,
            r.kind,
            r.status,
            r.attempts,
            utc(r.created_at),
            r.recipient,
            subject,
            last
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `authbase outbox list`.
pub async fn outbox_list(
    cfg: &Config,
    state: Vec<String>,
    kind_: Option<String>,
    limit: u32,
    json_out: bool,
) -> Result<Report, AdminError> {
    let f = MailFilter {
        states: states(&state)?,
        kind: kind(kind_)?,
        limit: Some(i64::from(limit)),
        ..MailFilter::default()
    };
    let store = open(cfg)?;
    let rows = store.list_mail(f).await?;
    if json_out {
        return json(&rows);
    }
    let mut out = table(&rows);
    out.push_str(&format!("{}\n", plural(rows.len(), "message", "messages")));
    Ok(out.into())
}

/// `authbase outbox retry (ID... | --failed)`.
pub async fn outbox_retry(cfg: &Config, ids: Vec<i64>, failed: bool) -> Result<Report, AdminError> {
    if ids.is_empty() != failed {
        return Err(AdminError::Input(
            "give message ids or --failed (every failed message)".into(),
        ));
    }
    let f = MailFilter {
        states: if failed {
            vec!["failed".into()]
        } else {
            vec![]
        },
        ids: ids.clone(),
        ..MailFilter::default()
    };
    let store = open(cfg)?;
    let t = now();
    let done = store.retry_mail(f, t, t + cfg.email.max_age.secs()).await?;
    let mut report = Report::from(format!(
        "{} queued again; a running server sends {} within a few seconds\n",
        plural(done.len(), "message", "messages"),
        if done.len() == 1 { "it" } else { "them" }
    ));
    let missed: Vec<String> = ids
        .iter()
        .filter(|i| !done.contains(i))
        .map(|i| i.to_string())
        .collect();
    if !missed.is_empty() {
        report.warning = Some(format!(
            "not queued again (no such message, already sent, or being sent): {}",
            missed.join(", ")
        ));
    }
    Ok(report)
}

/// `authbase outbox purge (ID... | --state S...) [--older-than D]`.
pub async fn outbox_purge(
    cfg: &Config,
    ids: Vec<i64>,
    state: Vec<String>,
    older_than: Option<String>,
) -> Result<Report, AdminError> {
    if ids.is_empty() && state.is_empty() {
        return Err(AdminError::Input(
            "give message ids or --state (sent, failed or queued)".into(),
        ));
    }
    let before = older_than
        .map(|d| {
            Dur::parse(&d)
                .map(|d| now() - d.secs())
                .map_err(|e| AdminError::Input(format!("--older-than: {e}")))
        })
        .transpose()?;
    let f = MailFilter {
        ids,
        states: states(&state)?,
        created_before: before,
        ..MailFilter::default()
    };
    let store = open(cfg)?;
    let n = store.purge_mail(f).await?;
    Ok(format!("{} deleted\n", plural(n, "message", "messages")).into())
}
