//! Composing the email API's messages: checking every field, then building the MIME
//! message once, when it is accepted. The outbox stores the bytes, so each attempt
//! sends exactly the same message (same Message-ID and Date).
//!
//! Header injection: the subject, file names and content types are refused when they
//! hold control characters (CR and LF included) or invisible format characters (bidi
//! overrides that make `exe.pdf` look like `pdf.exe`, line separators); content types
//! are `type/subtype` with at most a `charset`; addresses are parsed by
//! `email_addr::normalise`, which accepts no quotes, comments, display names or lists;
//! lettre encodes UTF-8 subjects (RFC 2047) and file names (RFC 2231) itself.
//!
//! SMTP smuggling: nothing reaches the wire with a bare CR or LF. Text and HTML line
//! endings are normalised (CRLF, CR and LF all become one line break, which lettre
//! writes as CRLF) and other control characters but tab are refused; attachments are
//! always base64.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{
    Attachment as MimeAttachment, Body as MimeBody, Mailbox, MultiPart, SinglePart,
};
use lettre::Message;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::email_addr;

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 20;
/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 500;

/// One attachment, decoded.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// A message as an app asks for it.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The normalised recipient address.
    pub to: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub reply_to: Option<String>,
    pub attachments: Vec<Attachment>,
}

/// A message ready for the outbox.
#[derive(Debug, Clone)]
pub struct Composed {
    pub raw: Vec<u8>,
    pub message_id: String,
    /// The envelope sender (MAIL FROM).
    pub sender: String,
}

/// The `From` of every message: `email.sender_address`, named after `webapp_name` when
/// the address has no name of its own.
pub fn from_mailbox(cfg: &Config) -> Result<Mailbox, String> {
    let mut m: Mailbox = cfg
        .email
        .sender_address
        .parse()
        .map_err(|e| format!("email.sender_address: {e}"))?;
    if m.name.is_none() {
        m.name = Some(cfg.webapp_name.clone());
    }
    Ok(m)
}

/// `<hex@domain-of-the-sender>`: unique, and stable for one message across attempts.
pub fn message_id(from: &Mailbox, unique: &[u8]) -> String {
    format!("<{}@{}>", crate::secrets::hex(unique), from.email.domain())
}

/// The Message-ID of a sign-in message: derived from its request's salt (a hash: the
/// salt itself is an input of the link secret), so retries carry the same id.
pub fn sign_in_message_id(from: &Mailbox, salt: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"authbase message-id\0");
    h.update(salt);
    message_id(from, &h.finalize()[..16])
}

/// `Auto-Submitted: auto-generated` (RFC 3834): no vacation auto-replies to us.
pub fn auto_submitted() -> HeaderValue {
    HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        "auto-generated".into(),
    )
}

/// Invisible characters that change how text around them reads: bidi controls (an
/// `exe` disguised as `pdf`), zero-width ones, line and paragraph separators.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

fn no_controls(what: &str, v: &str) -> Result<(), String> {
    match v.chars().find(|c| c.is_control() || invisible(*c)) {
        Some(c) => Err(format!(
            "{what} must not contain control or invisible format characters (found U+{:04X})",
            c as u32
        )),
        None => Ok(()),
    }
}

/// Text or HTML with every line ending as one `\n` (lettre writes CRLF), so no bare CR
/// or LF reaches the SMTP conversation; other control characters but tab are refused.
pub fn body_text(what: &str, v: &str) -> Result<String, String> {
    let v = v.replace("\r\n", "\n").replace('\r', "\n");
    match v.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t') {
        Some(c) => Err(format!(
            "{what} must not contain control characters other than line breaks and tabs (found U+{:04X})",
            c as u32
        )),
        None => Ok(v),
    }
}

/// Check every field; `max_bytes` caps text, HTML and attachments together.
pub fn check(d: &Draft, max_bytes: usize) -> Result<(), String> {
    let subject = d.subject.trim();
    if subject.is_empty() {
        return Err("subject is required".into());
    }
    if subject.chars().count() > MAX_SUBJECT {
        return Err(format!("subject is longer than {MAX_SUBJECT} characters"));
    }
    no_controls("subject", &d.subject)?;
    let text = d.text.as_deref().unwrap_or("");
    let html = d.html.as_deref().unwrap_or("");
    if text.is_empty() && html.is_empty() {
        return Err("text or html is required".into());
    }
    body_text("text", text)?;
    body_text("html", html)?;
    if d.attachments.len() > MAX_ATTACHMENTS {
        return Err(format!("at most {MAX_ATTACHMENTS} attachments"));
    }
    let mut total = text.len() + html.len();
    for (i, a) in d.attachments.iter().enumerate() {
        let name = a.filename.trim();
        if name.is_empty() || name.chars().count() > 255 {
            return Err(format!(
                "attachments[{i}].filename must be 1 to 255 characters"
            ));
        }
        no_controls(&format!("attachments[{i}].filename"), &a.filename)?;
        if name.contains(['/', '\\']) {
            return Err(format!(
                "attachments[{i}].filename must be a name, not a path"
            ));
        }
        content_type(&a.content_type).map_err(|e| format!("attachments[{i}].content_type: {e}"))?;
        total += a.content.len();
    }
    if total > max_bytes {
        return Err(format!(
            "the message is {total} bytes (text, html and attachments); the limit is {max_bytes} (api.max_message_bytes)"
        ));
    }
    Ok(())
}

/// `type/subtype`, optionally `; charset=NAME`: nothing else, so the header stays short,
/// ASCII and unfolded.
fn content_type(s: &str) -> Result<ContentType, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("is required (e.g. application/pdf)".into());
    }
    no_controls("it", s)?;
    let bad =
        || format!("`{s}` is not a media type like application/pdf or text/plain; charset=utf-8");
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let mut parts = s.split(';');
    let (main, sub) = parts
        .next()
        .unwrap_or("")
        .trim()
        .split_once('/')
        .ok_or_else(bad)?;
    if !token(main) || !token(sub) || main.eq_ignore_ascii_case("multipart") {
        return Err(bad());
    }
    let mut out = format!("{main}/{sub}");
    match (parts.next(), parts.next()) {
        (None, _) => {}
        (Some(p), None) => {
            let (k, v) = p.trim().split_once('=').ok_or_else(bad)?;
            let v = v.trim().trim_matches('"');
            if !k.trim().eq_ignore_ascii_case("charset") || !token(v) {
                return Err(bad());
            }
            out.push_str(&format!("; charset={v}"));
        }
        _ => return Err(bad()),
    }
    ContentType::parse(&out).map_err(|e| format!("`{s}`: {e}"))
}

/// Build the message (call `check` first). `unique` makes the Message-ID.
pub fn compose(
    cfg: &Config,
    d: &Draft,
    created: SystemTime,
    unique: &[u8],
) -> Result<Composed, String> {
    let from = from_mailbox(cfg)?;
    let to: Mailbox = d.to.parse().map_err(|e| format!("recipient: {e}"))?;
    let id = message_id(&from, unique);
    // Whole seconds: what the Date header can say, and what the outbox records.
    let secs = created
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut b = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(d.subject.trim())
        .date(UNIX_EPOCH + Duration::from_secs(secs))
        .message_id(Some(id.clone()))
        .raw_header(auto_submitted());
    if let Some(r) = &d.reply_to {
        let r = email_addr::normalise(r).map_err(|e| format!("reply_to: {e}"))?;
        b = b.reply_to(r.parse().map_err(|e| format!("reply_to: {e}"))?);
    }
    enum Body {
        One(SinglePart),
        Alt(MultiPart),
    }
    let text = d
        .text
        .as_deref()
        .map(|t| body_text("text", t))
        .transpose()?;
    let html = d
        .html
        .as_deref()
        .map(|h| body_text("html", h))
        .transpose()?;
    let body = match (
        text.as_deref().filter(|t| !t.is_empty()),
        html.as_deref().filter(|h| !h.is_empty()),
    ) {
        (Some(t), Some(h)) => Body::Alt(MultiPart::alternative_plain_html(
            t.to_string(),
            h.to_string(),
        )),
        (Some(t), None) => Body::One(SinglePart::plain(t.to_string())),
        (None, Some(h)) => Body::One(SinglePart::html(h.to_string())),
        (None, None) => return Err("text or html is required".into()),
    };
    let msg = if d.attachments.is_empty() {
        match body {
            Body::One(p) => b.singlepart(p),
            Body::Alt(m) => b.multipart(m),
        }
    } else {
        let mut mixed = match body {
            Body::One(p) => MultiPart::mixed().singlepart(p),
            Body::Alt(m) => MultiPart::mixed().multipart(m),
        };
        for a in &d.attachments {
            let ct = content_type(&a.content_type)?;
            // Always base64: attachment bytes never reach the wire as lines of their own.
            let body =
                MimeBody::new_with_encoding(a.content.clone(), ContentTransferEncoding::Base64)
                    .map_err(|_| "encoding an attachment".to_string())?;
            mixed =
                mixed.singlepart(MimeAttachment::new(a.filename.trim().to_string()).body(body, ct));
        }
        b.multipart(mixed)
    }
    .map_err(|e| format!("building the message: {e}"))?;
    Ok(Composed {
        raw: msg.formatted(),
        message_id: id,
        sender: from.email.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::NoEnv;

    fn cfg() -> Config {
        Config::from_toml(
            "webapp_name = \"Acme\"\n[email]\nsender_address = \"no-reply@acme.test\"\n",
            &NoEnv,
        )
        .unwrap()
    }

    fn draft() -> Draft {
        Draft {
            to: "ann@example.com".into(),
            subject: "Ihr Export ist fertig ✓".into(),
            text: Some("Hello\n.\nBye".into()),
            html: Some("<p>Hello</p>".into()),
            ..Draft::default()
        }
    }

    #[test]
    fn refuses_header_injection() {
        for s in ["a\r\nBcc: x@evil.test", "a\nb", "a\rb", "tab\tin"] {
            let d = Draft {
                subject: s.into(),
                ..draft()
            };
            assert!(check(&d, 1 << 20).unwrap_err().contains("control"), "{s:?}");
        }
        let d = Draft {
            attachments: vec![Attachment {
                filename: "a\r\nContent-Type: text/html".into(),
                content_type: "text/plain".into(),
                content: b"x".to_vec(),
            }],
            ..draft()
        };
        assert!(check(&d, 1 << 20).is_err());
        for ct in [
            "text/plain\r\nX: y",
            "multipart/mixed",
            "nonsense",
            "",
            "text/plain; name=\"üü\"",
            "text/plain; x=\"aaaa\"",
            "text/plain; charset=utf-8; boundary=x",
        ] {
            let d = Draft {
                attachments: vec![Attachment {
                    filename: "a.txt".into(),
                    content_type: ct.into(),
                    content: b"x".to_vec(),
                }],
                ..draft()
            };
            assert!(check(&d, 1 << 20).is_err(), "{ct:?}");
        }
    }

    #[test]
    fn no_bare_cr_or_lf_and_no_disguised_names() {
        let d = Draft {
            text: Some("a\r.\r\nMAIL FROM:<x@y>\n.\nend".into()),
            attachments: vec![Attachment {
                filename: "notes.csv".into(),
                content_type: "text/csv".into(),
                content: b"a\n.\nMAIL FROM:<ceo@bank.example>\r\n".to_vec(),
            }],
            ..draft()
        };
        check(&d, 1 << 20).unwrap();
        let m = compose(&cfg(), &d, UNIX_EPOCH, &[1; 16]).unwrap();
        let raw = m.raw;
        for (i, b) in raw.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(raw[i - 1], b'\r', "bare LF at {i}");
            }
            if *b == b'\r' {
                assert_eq!(raw[i + 1], b'\n', "bare CR at {i}");
            }
        }
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains("MAIL FROM:<ceo"), "the attachment is base64");
        for bad in ["a\u{7}b", "a\u{0}b"] {
            let d = Draft {
                text: Some(bad.into()),
                ..draft()
            };
            assert!(check(&d, 1 << 20).is_err(), "{bad:?}");
        }
        for name in [
            "invoice\u{202E}fdp.exe",
            "a\u{2028}b.txt",
            "zero\u{200B}width.pdf",
        ] {
            let d = Draft {
                attachments: vec![Attachment {
                    filename: name.into(),
                    content_type: "application/pdf".into(),
                    content: b"x".to_vec(),
                }],
                ..draft()
            };
            assert!(check(&d, 1 << 20).is_err(), "{name:?}");
        }
    }

    #[test]
    fn caps_the_size() {
        let d = Draft {
            attachments: vec![Attachment {
                filename: "big.bin".into(),
                content_type: "application/octet-stream".into(),
                content: vec![0; 2000],
            }],
            ..draft()
        };
        assert!(check(&d, 1024)
            .unwrap_err()
            .contains("api.max_message_bytes"));
        assert!(check(&d, 4096).is_ok());
    }

    #[test]
    fn composes_from_the_configured_sender_with_a_stable_id() {
        let c = cfg();
        let at = UNIX_EPOCH + Duration::from_secs(1_795_851_240);
        let m = compose(&c, &draft(), at, &[0xab; 16]).unwrap();
        let raw = String::from_utf8(m.raw).unwrap();
        assert_eq!(m.message_id, format!("<{}@acme.test>", "ab".repeat(16)));
        assert_eq!(m.sender, "no-reply@acme.test");
        assert!(raw.contains("From: Acme <no-reply@acme.test>\r\n"), "{raw}");
        assert!(
            raw.contains(&format!("Message-ID: {}\r\n", m.message_id)),
            "{raw}"
        );
        assert!(
            raw.contains("Date: Sat, 28 Nov 2026 07:34:00 +0000\r\n"),
            "{raw}"
        );
        assert!(raw.contains("Auto-Submitted: auto-generated\r\n"), "{raw}");
        assert!(
            raw.contains("Subject: Ihr Export ist fertig =?utf-8?b?4pyT?=\r\n"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"), "{raw}");
    }
}
