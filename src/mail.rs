//! Mail delivery: the background sender that drains the durable outbox in the database.
//!
//! `POST /auth` only writes an outbox row (in the same transaction as the sign-in
//! request) and wakes this task, so a slow or dead SMTP server never blocks or fails a
//! request, and a restart loses nothing. The email API (`POST /api/email`) does the same
//! with a message it has composed already (see `compose`).
//!
//! Two lanes, sign-in mail and API mail, each claiming batches of due messages and
//! sending up to `email.concurrency` at a time: a backlog of API mail never delays a
//! sign-in link. Failed sends are retried with exponential backoff up to
//! `email.retry_max_interval`, until `email.max_attempts` attempts or `email.max_age`.
//! Delivery is at-least-once: a crash between the SMTP server's "250 OK" and the
//! database update sends that message again (same Message-ID) after restart.
//!
//! Sign-in messages are rendered here, at send time, re-deriving the link secret and the
//! code from the server key: the outbox row holds neither.

pub mod compose;
pub mod queue;

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use futures_util::StreamExt;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::Notify;

use crate::config::Config;
use crate::pages;
use crate::secrets::{self, ServerKey};
use crate::store::{now, Lane, MailOutcome, OutboxItem, Store};

/// Sign-in messages one claim takes, per unit of `email.concurrency`. API messages are
/// claimed `concurrency` at a time: they may be megabytes each, and are held in memory
/// while sent.
const BATCH_PER_SLOT: usize = 4;
/// How often claims of servers that stopped heartbeating are looked for.
const STALE_CLAIMS_EVERY: Duration = Duration::from_secs(5);

pub enum Transport {
    /// Print messages to stdout (development; the message includes its link).
    Log,
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_config(cfg: &Config) -> Result<Transport, String> {
        let e = &cfg.email;
        if e.transport == "log" {
            return Ok(Transport::Log);
        }
        let b = match e.smtp_tls.as_str() {
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.smtp_host),
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.smtp_host),
            _ => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &e.smtp_host,
            )),
        }
        .map_err(|x| format!("email.smtp_host: {x}"))?;
        // Both lanes share the pool: at most `concurrency` connections each.
        let pool = PoolConfig::new().max_size(2 * e.concurrency as u32);
        let mut b = b
            .port(e.smtp_port)
            .timeout(Some(e.smtp_timeout.0))
            .pool_config(pool);
        if let Some(pw) = &cfg.derived.smtp_password {
            b = b.credentials(Credentials::new(e.smtp_username.clone(), pw.clone()));
        }
        Ok(Transport::Smtp(b.build()))
    }
}

pub struct Mailer {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub key: ServerKey,
    pub transport: Transport,
    /// Woken when sign-in mail is queued.
    pub wake: Arc<Notify>,
    /// Woken when API mail is queued.
    pub wake_api: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This server's id (see `store::servers`), written into the claims it takes.
    pub server_id: String,
}

/// Why one delivery attempt did not succeed.
enum Failure {
    /// Worth retrying (server down, timeout, 4xx).
    Retry(String),
    /// Never worth retrying (the link expired, a 5xx refusal, a bad address).
    Permanent(String),
}

impl Mailer {
    /// Run both lanes until `stop` resolves, then hand back unsent claims.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        tokio::join!(
            self.lane(Lane::SignIn, &self.wake, stop.clone()),
            self.lane(Lane::Api, &self.wake_api, stop.clone()),
            self.take_over(stop.clone()),
        );
        match self
            .store
            .release_claims(self.server_id.clone(), now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "unsent messages stay queued"),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand back claimed messages; they are retried when the claim runs out")
            }
        }
    }

    /// Every few seconds (and at start): release the claims of servers that stopped
    /// heartbeating (killed), so their messages are sent by this one.
    async fn take_over(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self
                .store
                .release_stale_claims(self.server_id.clone(), now())
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        messages = n,
                        "took over messages claimed by a server that stopped"
                    );
                    self.wake.notify_one();
                    self.wake_api.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "mail outbox unavailable; will retry"),
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(STALE_CLAIMS_EVERY) => {}
            }
        }
    }

    /// One lane: checks the queue when woken, when the next retry is due, and at least
    /// every few seconds.
    async fn lane(&self, lane: Lane, wake: &Notify, stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.drain(lane, &stop).await {
                tracing::warn!(error = %e, "mail outbox unavailable; will retry");
            }
            let wait = match self.store.next_mail_due(lane).await {
                Ok(Some(at)) => Duration::from_secs((at - now()).clamp(0, 5) as u64),
                _ => Duration::from_secs(5),
            };
            let mut stop = stop.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
            }
        }
    }

    /// Send what is due, batch by batch, until nothing is due or shutdown begins
    /// (checked before each message; each send is bounded by `email.smtp_timeout`).
    async fn drain(
        &self,
        lane: Lane,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), crate::store::StoreError> {
        let slots = self.cfg.email.concurrency;
        let rounds = if lane == Lane::Api { 1 } else { BATCH_PER_SLOT };
        let batch = slots * rounds;
        // Long enough for a whole batch at the slowest: every send takes smtp_timeout.
        let lease = self.cfg.email.smtp_timeout.secs() * rounds as i64 + 30;
        loop {
            let t = now();
            let due = self
                .store
                .claim_mail(lane, self.server_id.clone(), t, t + lease, batch as i64)
                .await?;
            if due.is_empty() {
                return Ok(());
            }
            // Outcomes are written once per batch: one transaction instead of one per
            // message (a crash before it re-sends the batch: at-least-once).
            let results: Vec<(i64, MailOutcome)> = futures_util::stream::iter(due)
                .map(|item| async move {
                    if *stop.borrow() {
                        return None;
                    }
                    let id = item.id;
                    Some((id, self.deliver(item).await))
                })
                .buffer_unordered(slots)
                .filter_map(|r| async move { r })
                .collect()
                .await;
            self.store.mail_results(results, now()).await?;
            if *stop.borrow() {
                return Ok(());
            }
        }
    }

    async fn deliver(&self, mut item: OutboxItem) -> MailOutcome {
        let t = now();
        let outcome = if let Some(why) = &item.refused {
            Err(Failure::Permanent(format!("not sent: {why}")))
        } else if item.deadline.is_some_and(|d| t >= d) {
            Err(Failure::Permanent(format!(
                "not sent: queued for longer than email.max_age ({})",
                self.cfg.email.max_age
            )))
        } else {
            match self.build(&mut item) {
                Ok((envelope, raw)) => self.send(envelope, raw).await,
                Err(f) => Err(f),
            }
        };
        let attempt = item.attempts + 1;
        let kind = item.kind.as_str();
        match outcome {
            Ok(()) => {
                tracing::info!(outbox_id = item.id, kind, attempt, "mail sent");
                self.metrics.mail(crate::metrics::Mail::Sent, 1);
                MailOutcome::Sent
            }
            Err(Failure::Retry(error))
                if attempt < self.cfg.email.max_attempts as i64
                    && item.deadline.is_none_or(|d| t < d) =>
            {
                let backoff =
                    (1i64 << attempt.min(20)).min(self.cfg.email.retry_max_interval.secs());
                let at = match item.deadline {
                    // Not past the deadline: there it is marked failed, on time.
                    Some(d) => (t + backoff).min(d.max(t + 1)),
                    None => t + backoff,
                };
                tracing::warn!(outbox_id = item.id, kind, attempt, retry_in_s = at - t, error = %error, "mail not sent; will retry");
                self.metrics.mail(crate::metrics::Mail::Retried, 1);
                MailOutcome::Retry { error, at }
            }
            Err(Failure::Retry(error) | Failure::Permanent(error)) => {
                tracing::error!(outbox_id = item.id, kind, attempt, error = %error, "mail failed; giving up");
                self.metrics.mail(crate::metrics::Mail::Failed, 1);
                MailOutcome::Failed { error }
            }
        }
    }

    /// The envelope and bytes to send: API mail as composed when it was accepted,
    /// sign-in mail rendered now.
    fn build(&self, item: &mut OutboxItem) -> Result<(Envelope, Vec<u8>), Failure> {
        let to: lettre::Address = item
            .recipient
            .parse()
            .map_err(|e| Failure::Permanent(format!("recipient: {e}")))?;
        if let Some(raw) = item.raw.take() {
            let sender: lettre::Address = item
                .sender
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e| Failure::Permanent(format!("sender: {e}")))?;
            let envelope = Envelope::new(Some(sender), vec![to])
                .map_err(|e| Failure::Permanent(format!("envelope: {e}")))?;
            return Ok((envelope, raw));
        }
        if item.kind != "sign_in" {
            return Err(Failure::Permanent(format!(
                "a {} message without content",
                item.kind
            )));
        }
        let from = compose::from_mailbox(&self.cfg).map_err(Failure::Permanent)?;
        let (subject, text, html) = self.render_sign_in(item)?;
        let salt = item.request.as_ref().map_or(&[][..], |r| &r.salt[..]);
        let msg = Message::builder()
            .from(from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            .message_id(Some(compose::sign_in_message_id(&from, salt)))
            .raw_header(compose::auto_submitted())
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| Failure::Permanent(format!("building message: {e}")))?;
        Ok((msg.envelope().clone(), msg.formatted()))
    }

    fn render_sign_in(&self, item: &OutboxItem) -> Result<(String, String, String), Failure> {
        let req = item
            .request
            .as_ref()
            .ok_or_else(|| Failure::Permanent("sign-in request no longer exists".into()))?;
        if !req.live(now()) {
            return Err(Failure::Permanent(format!(
                "sign-in request is {} (not sent: its link could not be used)",
                if req.state == "pending" {
                    "expired"
                } else {
                    req.state.as_str()
                }
            )));
        }
        let secret = self.key.link_secret(&req.salt);
        // The key file was replaced since the request: a link would not work.
        if !secrets::ct_eq(&secrets::hash(&secret), &req.link_hash) {
            return Err(Failure::Permanent(
                "server key changed since the request".into(),
            ));
        }
        let link = format!("{}/sign_in/{}", self.cfg.public_base(), secret);
        let code = self.key.code(&req.salt);
        let app = &self.cfg.webapp_name;
        let requested_at = pages::utc(req.created_at);
        let requester = pages::requester(&req.user_agent, &req.ip);
        let ttl_minutes = ((req.expires_at - req.created_at) / 60).max(1);
        let render = |r: Result<String, askama::Error>| {
            r.map_err(|e| Failure::Permanent(format!("template: {e}")))
        };
        let text = render(
            pages::SignInText {
                app_name: app,
                email: &req.email,
                link: &link,
                code: &code,
                ttl_minutes,
                requested_at: &requested_at,
                requester: &requester,
            }
            .render(),
        )?;
        let html = render(
            pages::SignInHtml {
                app_name: app,
                accent: &self.cfg.derived.branding.light,
                email: &req.email,
                link: &link,
                code: &code,
                ttl_minutes,
                requested_at: &requested_at,
                requester: &requester,
            }
            .render(),
        )?;
        Ok((format!("Sign in to {app}"), text, html))
    }

    async fn send(&self, envelope: Envelope, raw: Vec<u8>) -> Result<(), Failure> {
        match &self.transport {
            Transport::Log => {
                // Development transport: the message, link included, on stdout.
                use std::io::Write;
                let text = plain_part(&String::from_utf8_lossy(&raw));
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "----- authbase mail (transport = \"log\": development only) -----\n\
                     To: {}\n{}\n-----",
                    envelope
                        .to()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    text
                );
                let _ = out.flush();
                Ok(())
            }
            // lettre's own timeout covers connecting only; bound the whole conversation.
            Transport::Smtp(t) => {
                let limit = self.cfg.email.smtp_timeout.0;
                match tokio::time::timeout(limit, t.send_raw(&envelope, &raw)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() => Err(Failure::Permanent(e.to_string())),
                    Ok(Err(e)) => Err(Failure::Retry(e.to_string())),
                    Err(_) => Err(Failure::Retry(format!(
                        "the SMTP server did not finish within {}s (email.smtp_timeout)",
                        limit.as_secs()
                    ))),
                }
            }
        }
    }
}

/// What the log transport prints of a formatted message: its Subject (decoded), its
/// first text/plain part that is not an attachment (decoded: lettre encodes bodies as
/// quoted-printable or base64) and the names of its attachments, found by walking the
/// MIME structure (boundaries only from `Content-Type` headers).
fn plain_part(raw: &str) -> String {
    let (head, body) = split_head(raw);
    let mut out = format!("Subject: {}", decode_words(&header_value(head, "Subject")));
    let mut text = None;
    let mut attachments = Vec::new();
    walk(head, body, &mut text, &mut attachments, 0);
    if let Some(t) = text {
        out.push_str("\n\n");
        out.push_str(&t.replace("\r\n", "\n"));
    }
    for a in attachments {
        out.push_str(&format!("\n[attachment: {a}]"));
    }
    out
}

/// A part's header section and body.
fn split_head(part: &str) -> (&str, &str) {
    match part.find("\r\n\r\n") {
        Some(i) => (&part[..i], &part[i + 4..]),
        None => (part, ""),
    }
}

/// Collect the first text part and the attachments' names of one MIME part.
fn walk(
    head: &str,
    body: &str,
    text: &mut Option<String>,
    attachments: &mut Vec<String>,
    depth: u8,
) {
    let ct = header_value(head, "Content-Type");
    let disposition = header_value(head, "Content-Disposition");
    if disposition.trim_start().starts_with("attachment") {
        attachments.push(attachment_name(&disposition));
        return;
    }
    if ct.starts_with("multipart/") {
        let Some(boundary) = params(&ct)
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
            .map(|(_, v)| v)
            .filter(|b| !b.is_empty())
        else {
            return;
        };
        if depth >= 8 {
            return;
        }
        // Delimiters are whole lines: "--boundary" after a line break ("--boundary--"
        // closes). A body line that merely starts with "--" is not one.
        let body = format!("\r\n{body}");
        for chunk in body.split(&format!("\r\n--{boundary}")).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let part = chunk.split_once("\r\n").map_or("", |(_, p)| p);
            let (h, b) = split_head(part);
            walk(h, b, text, attachments, depth + 1);
        }
    } else if text.is_none() && (ct.is_empty() || ct.starts_with("text/plain")) {
        let cte = header_value(head, "Content-Transfer-Encoding").to_ascii_lowercase();
        *text = Some(if cte == "quoted-printable" {
            decode_qp(body)
        } else if cte == "base64" {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(body.replace("\r\n", ""))
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| body.to_string())
        } else {
            body.to_string()
        });
    }
}

/// A header's value, unfolded (continuation lines joined), from a header section;
/// empty when absent.
fn header_value(head: &str, name: &str) -> String {
    let mut lines = head.split("\r\n");
    let Some(first) = lines.find(|l| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
    }) else {
        return String::new();
    };
    let mut v = first[name.len() + 1..].trim_start().to_string();
    for l in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        v.push_str(l);
    }
    v
}

/// The `name=value` parameters after a header value's first `;`, quoted strings
/// unquoted (`\"` and `\\` unescaped).
fn params(v: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some((_, mut rest)) = v.split_once(';') else {
        return out;
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some((name, after)) = rest.split_once('=') else {
            return out;
        };
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name.trim().to_ascii_lowercase(), value));
        rest = next;
    }
}

/// An attachment's file name from its Content-Disposition value: `filename="…"`, or
/// RFC 2231 segments, which lettre writes for long names (`filename*0="…"`) and for
/// names that are not ASCII (`filename*0*=utf-8''Bericht%20M%C3%A4rz.pdf`).
fn attachment_name(disposition: &str) -> String {
    let ps = params(disposition);
    if let Some((_, n)) = ps.iter().find(|(k, _)| k == "filename") {
        return decode_words(n);
    }
    // `filename*` (one extended segment) or `filename*N` / `filename*N*`, in order.
    let mut segments: Vec<(u32, bool, &str)> = ps
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("filename*")?;
            let (n, extended) = match rest.strip_suffix('*') {
                Some(n) => (n, true),
                None if rest.is_empty() => ("0", true),
                None => (rest, false),
            };
            Some((n.parse().ok()?, extended, v.as_str()))
        })
        .collect();
    if segments.is_empty() {
        return "(no name)".into();
    }
    segments.sort_by_key(|s| s.0);
    let mut bytes = Vec::new();
    for (i, (_, extended, v)) in segments.into_iter().enumerate() {
        if extended {
            // The first extended segment starts with `charset'language'`.
            let v = if i == 0 {
                v.splitn(3, '\'').nth(2).unwrap_or(v)
            } else {
                v
            };
            bytes.extend(unescape_hex(v, b'%'));
        } else {
            bytes.extend_from_slice(v.as_bytes());
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// RFC 2047 encoded words (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`) decoded for display; the
/// space between two encoded words goes, as the RFC says. Anything else is kept.
fn decode_words(v: &str) -> String {
    let word = |t: &str| -> Option<String> {
        let inner = t.strip_prefix("=?")?.strip_suffix("?=")?;
        let mut it = inner.splitn(3, '?');
        let (_charset, enc, text) = (it.next()?, it.next()?, it.next()?);
        let bytes = match enc {
            "b" | "B" => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()?
            }
            "q" | "Q" => decode_qp(&text.replace('_', " ")).into_bytes(),
            _ => return None,
        };
        String::from_utf8(bytes).ok()
    };
    let mut out = String::new();
    let mut last_was_word = false;
    for t in v.split([' ', '\t']).filter(|t| !t.is_empty()) {
        match word(t) {
            Some(w) => {
                if !out.is_empty() && !last_was_word {
                    out.push(' ');
                }
                out.push_str(&w);
                last_was_word = true;
            }
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(t);
                last_was_word = false;
            }
        }
    }
    out
}

/// Decode a quoted-printable body (soft line breaks and `=XX` escapes).
pub fn decode_qp(s: &str) -> String {
    String::from_utf8_lossy(&unescape_hex(&s.replace("=\r\n", ""), b'=')).into_owned()
}

/// `s` with each `marker` followed by two hex digits replaced by that byte (`=C3` in
/// quoted-printable, `%C3` in RFC 2231 parameters); anything else is kept as it is.
fn unescape_hex(s: &str, marker: u8) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == marker {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
            if let Some(Ok(v)) = hex.map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::compose::{compose, Attachment, Draft};
    use super::*;

    use crate::config::tests::NoEnv;

    fn cfg() -> crate::config::Config {
        crate::config::Config::from_toml(
            "[email]\nsender_address = \"no-reply@acme.test\"\n",
            &NoEnv,
        )
        .unwrap()
    }

    fn attachment(name: &str, content_type: &str, content: &[u8]) -> Attachment {
        Attachment {
            filename: name.into(),
            content_type: content_type.into(),
            content: content.to_vec(),
        }
    }

    /// What the log transport shows of `d`, composed as the API composes, and the
    /// message's boundaries (none may show up as a line).
    fn shown(d: &Draft) -> (String, Vec<String>) {
        let raw = String::from_utf8(
            compose(&cfg(), d, std::time::UNIX_EPOCH, &[1; 16])
                .unwrap()
                .raw,
        )
        .unwrap();
        let boundaries = raw
            .split("boundary=\"")
            .skip(1)
            .filter_map(|b| b.split('"').next())
            .filter(|b| !b.is_empty())
            .map(String::from)
            .collect();
        (plain_part(&raw), boundaries)
    }

    /// The log transport shows a message with attachments as its decoded subject, its
    /// text part only (not the HTML part, no boundary line) and the attachments' names.
    #[test]
    fn the_log_transport_shows_subject_text_and_attachment_names() {
        let long = format!("{}100%41; final.pdf", "quarterly-report-".repeat(4));
        let d = Draft {
            to: "ann@example.com".into(),
            subject: "Your export is ready ✓ boundary=\"\"".into(),
            text: Some(
                "Hello,\nyour export is attached.\nContent-Disposition: attachment\n--\nAcme"
                    .into(),
            ),
            html: Some("<p>Hello, HTML</p>".into()),
            attachments: vec![
                attachment("export.csv", "text/csv", b"a,b\n1,2\n"),
                attachment("Bericht März.pdf", "application/pdf", b"%PDF"),
                attachment(&long, "application/pdf", b"%PDF"),
            ],
            ..Draft::default()
        };
        let (shown, boundaries) = shown(&d);
        assert!(
            shown.starts_with(
                "Subject: Your export is ready ✓ boundary=\"\"\n\nHello,\nyour export is attached.\nContent-Disposition: attachment\n--\nAcme\n"
            ),
            "{shown}"
        );
        assert!(!shown.contains("HTML"), "{shown}");
        assert_eq!(boundaries.len(), 2);
        for b in &boundaries {
            assert!(
                !shown.lines().any(|l| l.starts_with(&format!("--{b}"))),
                "{shown}"
            );
        }
        let names: Vec<&str> = shown
            .lines()
            .filter_map(|l| l.strip_prefix("[attachment: ")?.strip_suffix(']'))
            .collect();
        assert_eq!(
            names,
            ["export.csv", "Bericht März.pdf", long.as_str()],
            "{shown}"
        );
    }

    /// An HTML-only message: a text/plain attachment is listed, not shown as the text.
    #[test]
    fn a_text_attachment_is_not_taken_for_the_text() {
        let d = Draft {
            to: "ann@example.com".into(),
            subject: "Logs".into(),
            html: Some("<p>See the log</p>".into()),
            attachments: vec![attachment(
                "server.log",
                "text/plain",
                b"secret-looking log line",
            )],
            ..Draft::default()
        };
        let (shown, _) = shown(&d);
        assert_eq!(shown, "Subject: Logs\n[attachment: server.log]");
    }

    #[test]
    fn encoded_words_are_decoded_for_display() {
        assert_eq!(decode_words("Plain subject"), "Plain subject");
        assert_eq!(
            decode_words("Ihr Export ist fertig =?utf-8?b?4pyT?="),
            "Ihr Export ist fertig ✓"
        );
        assert_eq!(
            decode_words("=?utf-8?q?M=C3=A4rz_2026?= ok"),
            "März 2026 ok"
        );
        assert_eq!(decode_words("=?utf-8?b?4pyT?= =?utf-8?b?4pyT?="), "✓✓");
        assert_eq!(decode_words("=?utf-8?x?bad?="), "=?utf-8?x?bad?=");
    }
}
