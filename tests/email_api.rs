//! The email API (`POST /api/email`, `GET /api/email/{id}`), `authbase email send` and
//! `authbase outbox`, against the real binary and a real SMTP server (aiosmtpd). Messages
//! are parsed by Python's `email` package, an independent MIME implementation.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hyper::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "0123456789abcdef0123456789abcdef-test-token";

/// `test_config` with the API on: `email` adds keys to `[email]`, `api` to `[api]`
/// (and may start more sections).
fn api_config(smtp_port: u16, email: &str, api: &str) -> String {
    test_config(
        smtp_port,
        "",
        &format!("{email}\n[api]\ntoken_file = \"api_token\"\n{api}"),
    )
}

/// Start authbase with the API token file in its folder.
fn start_api(config: &str) -> Authbase {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api_token"), format!("{TOKEN}\n")).unwrap();
    Authbase::start_in(dir, config)
}

async fn post_email(addr: &str, token: Option<&str>, body: &serde_json::Value) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    send(addr, Method::POST, "/api/email", &h, body.to_string()).await
}

async fn status(addr: &str, id: i64) -> serde_json::Value {
    let auth = format!("Bearer {TOKEN}");
    let r = send(
        addr,
        Method::GET,
        &format!("/api/email/{id}"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Wait (bounded by `limit`) until message `id` has `want` status; returns its status.
async fn wait_status(addr: &str, id: i64, want: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(addr, id).await;
        if s["status"] == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} never became {want}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sign up `email` (a user the API can write to) through the real sign-in flow.
async fn sign_up(a: &Authbase, smtp: &Smtp, email: &str) -> i64 {
    let mut b = a.browser();
    let (_, mail) = request_link(&mut b, smtp, email).await;
    b.get(&mail.link_path()).await;
    let me = b.get_json("/me").await;
    assert_eq!(me.status, 200, "{}", me.body);
    me.json()["id"].as_i64().unwrap()
}

/// `authbase audit --event EVENT`, once it shows one (events are written in batches).
async fn audit_with(a: &Authbase, event: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (st, out, err) = a.cli(&["audit", "--event", event]);
        assert!(st.success(), "{err}");
        if out.contains(event) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {event} event: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The message as Python's `email` package reads it.
fn parse(raw: &str) -> serde_json::Value {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), raw).unwrap();
    let out = std::process::Command::new(venv().join("bin/python"))
        .arg(repo().join("tests/mime_parse.py"))
        .arg(f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// API messages (not sign-in mail) the SMTP server got, by Message-ID: how often each.
fn api_ids(mails: &[Mail]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in mails {
        if m.header("Subject")
            .is_some_and(|s| s.starts_with("Sign in"))
        {
            continue;
        }
        *seen.entry(m.header("Message-ID").unwrap()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn without_a_token_the_api_is_off_and_says_so() {
    let smtp = Smtp::start();
    let a = Authbase::start(&test_config(smtp.port, "", ""));
    let r = post_email(&a.addr, Some(TOKEN), &serde_json::json!({})).await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("api.token_file"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn the_bearer_token_is_required_and_checked() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(smtp.port, "", ""));
    sign_up(&a, &smtp, "ann@example.com").await;
    let body = serde_json::json!({"email": "ann@example.com", "subject": "Hi", "text": "x"});
    let missing = post_email(&a.addr, None, &body).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"authbase\"")
    );
    let wrong = post_email(&a.addr, Some("0123456789abcdef0123456789abcdeX"), &body).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not valid"), "{}", wrong.body);
    let basic = send(
        &a.addr,
        Method::POST,
        "/api/email",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Basic {TOKEN}")),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(basic.status, 401);
    // Status needs the token too.
    let r = send(&a.addr, Method::GET, "/api/email/1", &[], "").await;
    assert_eq!(r.status, 401);
    // Nothing was queued by the refused requests.
    let ok = post_email(&a.addr, Some(TOKEN), &body).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert_eq!(
        ok.json()["id"].as_i64(),
        Some(2),
        "one sign-in mail before it"
    );
    smtp.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 2);
    // A wrong token is in the audit trail (without the token).
    let out = audit_with(&a, "api_auth_failed").await;
    assert!(!out.contains("abcdeX") && !a.logs().contains("abcdeX"));
}

#[tokio::test]
async fn the_token_can_come_from_the_environment_and_must_be_long() {
    let smtp = Smtp::start();
    let a = Authbase::start_with_env(
        &test_config(smtp.port, "", ""),
        &[("AUTHBASE_API_TOKEN", TOKEN)],
    );
    sign_up(&a, &smtp, "ann@example.com").await;
    let body = serde_json::json!({"email": "ann@example.com", "subject": "Hi", "text": "x"});
    assert_eq!(post_email(&a.addr, Some(TOKEN), &body).await.status, 202);
    let dir = tempfile::tempdir().unwrap();
    let (st, _, err) = cli_env(
        dir.path(),
        &["check-config"],
        &[("AUTHBASE_API_TOKEN", "short")],
    );
    assert_eq!(st.code(), Some(64), "{err}");
    assert!(
        err.contains("AUTHBASE_API_TOKEN") && err.contains("at least 32"),
        "{err}"
    );
}

#[tokio::test]
async fn every_field_arrives_intact() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(smtp.port, "", ""));
    let user_id = sign_up(&a, &smtp, "Zoe@example.com").await;
    let pdf: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let subject = "Ihr Export ist fertig ✓ — 日本語 and a long tail to force folding of the encoded header line";
    let text = "Hello Zoë,\n.\nThat line was a lone dot.\n..two dots\nBye\n";
    let html = "<p>Hello <b>Zoë</b></p>\n.\n<p>€</p>";
    let r = post_email(
        &a.addr,
        Some(TOKEN),
        &serde_json::json!({
            "user_id": user_id,
            "subject": subject,
            "text": text,
            "html": html,
            "reply_to": "support@example.com",
            "attachments": [
                {"filename": "report 2026 ✓.pdf", "content_type": "application/pdf",
                 "content": base64::engine::general_purpose::STANDARD.encode(&pdf)},
                {"filename": "notes.txt", "content_type": "text/plain; charset=utf-8",
                 "content": base64::engine::general_purpose::STANDARD.encode("plain ünïcode")}
            ]
        }),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let queued = r.json();
    let id = queued["id"].as_i64().unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["user_id"].as_i64(), Some(user_id));
    assert_eq!(
        r.header("location"),
        Some(format!("/api/email/{id}").as_str())
    );
    let mails = smtp.wait_for(2).await;
    let m = &mails[1];
    // The envelope: our sender, the one recipient.
    assert_eq!(
        m.envelope.trim(),
        "MAIL FROM no-reply@example.com\nRCPT TO Zoe@example.com",
        "{}",
        m.envelope
    );
    let p = parse(&m.raw);
    assert_eq!(p["subject"], subject);
    assert_eq!(p["from"], "Test App <no-reply@example.com>");
    assert_eq!(p["to"], "Zoe@example.com");
    assert_eq!(p["reply_to"], "support@example.com");
    assert_eq!(p["message_id"], queued["message_id"]);
    assert!(p["message_id"].as_str().unwrap().ends_with("@example.com>"));
    assert!(!p["date"].as_str().unwrap().is_empty());
    assert_eq!(p["auto_submitted"], "auto-generated");
    assert_eq!(p["content_type"], "multipart/mixed");
    let parts = p["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 4, "{p}");
    assert_eq!(parts[0]["content_type"], "text/plain");
    assert_eq!(
        String::from_utf8(b64(parts[0]["content_b64"].as_str().unwrap()))
            .unwrap()
            .replace("\r\n", "\n"),
        text
    );
    assert_eq!(parts[1]["content_type"], "text/html");
    assert_eq!(
        String::from_utf8(b64(parts[1]["content_b64"].as_str().unwrap()))
            .unwrap()
            .replace("\r\n", "\n"),
        html
    );
    assert_eq!(parts[2]["filename"], "report 2026 ✓.pdf");
    assert_eq!(parts[2]["disposition"], "attachment");
    assert_eq!(parts[2]["content_type"], "application/pdf");
    assert_eq!(b64(parts[2]["content_b64"].as_str().unwrap()), pdf);
    assert_eq!(parts[3]["filename"], "notes.txt");
    assert_eq!(
        b64(parts[3]["content_b64"].as_str().unwrap()),
        "plain ünïcode".as_bytes()
    );
    // Only the headers we set, each once.
    let headers: Vec<String> = p["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_ascii_lowercase())
        .collect();
    for h in ["from", "to", "subject", "date", "message-id", "reply-to"] {
        assert_eq!(
            headers.iter().filter(|x| *x == h).count(),
            1,
            "{h}: {headers:?}"
        );
    }
    assert!(
        !headers.iter().any(|h| h == "bcc" || h == "cc"),
        "{headers:?}"
    );

    let s = wait_status(&a.addr, id, "sent", WAIT).await;
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["recipient"], "Zoe@example.com");
    assert_eq!(s["subject"], subject);
    assert!(s["sent_at"].as_str().unwrap().ends_with('Z'), "{s}");
    assert_eq!(s["last_error"], serde_json::Value::Null);

    // HTML only, text only: one part each.
    for field in ["html", "text"] {
        let r = post_email(
            &a.addr,
            Some(TOKEN),
            &serde_json::json!({"email": "zoe@EXAMPLE.com", "subject": "one part", field: "body"}),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let mails = smtp.wait_for(4).await;
    let kinds: Vec<serde_json::Value> = mails[2..]
        .iter()
        .map(|m| parse(&m.raw)["content_type"].clone())
        .collect();
    assert!(kinds.contains(&"text/html".into()) && kinds.contains(&"text/plain".into()));
}

#[tokio::test]
async fn bad_requests_are_refused_precisely_and_send_nothing() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(smtp.port, "", ""));
    let ann = sign_up(&a, &smtp, "ann@example.com").await;
    let ok = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"user_id": ann, "subject": "Hi", "text": "x"});
        for (k, x) in extra.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        v
    };
    let att = |name: &str, ct: &str, content: &str| serde_json::json!({"attachments": [{"filename": name, "content_type": ct, "content": content}]});
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            ok(serde_json::json!({"subject": "Hi\r\nBcc: evil@example.net"})),
            400,
            "control",
        ),
        (
            ok(serde_json::json!({"subject": "Hi\nX-Evil: 1"})),
            400,
            "control",
        ),
        (
            ok(serde_json::json!({"subject": ""})),
            400,
            "subject is required",
        ),
        (ok(serde_json::json!({"text": null})), 400, "text or html"),
        (
            ok(serde_json::json!({"reply_to": "a@example.com\r\nBcc: evil@example.net"})),
            400,
            "reply_to",
        ),
        (
            ok(serde_json::json!({"reply_to": "a@example.com, evil@example.net"})),
            400,
            "reply_to",
        ),
        (
            ok(serde_json::json!({"reply_to": "Evil <evil@example.net>"})),
            400,
            "reply_to",
        ),
        (
            ok(att("a\r\nContent-Type: text/html", "text/plain", "eA==")),
            400,
            "filename",
        ),
        (
            ok(att("../../etc/passwd", "text/plain", "eA==")),
            400,
            "not a path",
        ),
        (
            ok(att("a.txt", "text/plain\r\nX: y", "eA==")),
            400,
            "content_type",
        ),
        (
            ok(att("a.txt", "multipart/mixed", "eA==")),
            400,
            "content_type",
        ),
        (ok(att("a.txt", "text/plain", "not base64!")), 400, "base64"),
        (
            ok(serde_json::json!({"email": "bob@example.com"})),
            400,
            "exactly one",
        ),
        (ok(serde_json::json!({"user_id": null})), 400, "exactly one"),
        (
            ok(serde_json::json!({"user_id": 9999})),
            422,
            "no user with id 9999",
        ),
        (
            ok(serde_json::json!({"user_id": null, "email": "nobody@example.com"})),
            422,
            "create_user",
        ),
        (
            ok(serde_json::json!({"user_id": null, "email": "a@evil@example.com"})),
            400,
            "email",
        ),
        (
            ok(serde_json::json!({"user_id": null, "email": "\"a b\"@example.com"})),
            400,
            "email",
        ),
        (
            ok(
                serde_json::json!({"user_id": null, "email": "ann@example.com\r\nRCPT TO:<evil@example.net>"}),
            ),
            400,
            "email",
        ),
        (
            ok(serde_json::json!({"bcc": "evil@example.net"})),
            400,
            "unknown field",
        ),
    ];
    for (body, want, needle) in &cases {
        let r = post_email(&a.addr, Some(TOKEN), body).await;
        assert_eq!(r.status, *want, "{body}: {}", r.body);
        assert!(
            r.body.to_lowercase().contains(&needle.to_lowercase()),
            "{body}: {}",
            r.body
        );
    }
    // Not JSON.
    let r = send(
        &a.addr,
        Method::POST,
        "/api/email",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Bearer {TOKEN}")),
        ],
        "subject=x",
    )
    .await;
    assert_eq!(r.status, 415);
    let r = send(
        &a.addr,
        Method::POST,
        "/api/email",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {TOKEN}")),
        ],
        "{not json",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Over api.max_message_bytes (10 MiB by default): refused before or after decoding.
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 10 * 1024 * 1024 + 1]);
    let r = post_email(
        &a.addr,
        Some(TOKEN),
        &ok(att("big.bin", "application/octet-stream", &big)),
    )
    .await;
    assert!(r.status == 400 || r.status == 413, "{}", r.status);
    assert!(
        r.body.contains("max_message_bytes") || r.status == 413,
        "{}",
        r.body
    );
    // A body far over the limit is refused from its Content-Length, before it is sent.
    let head = format!(
        "POST /api/email HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        40 * 1024 * 1024
    );
    let answer = tokio::time::timeout(WAIT, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(&a.addr).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Blocked users get nothing.
    let (st, _, err) = a.cli(&["users", "block", "ann@example.com"]);
    assert!(st.success(), "{err}");
    let r = post_email(&a.addr, Some(TOKEN), &ok(serde_json::json!({}))).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("blocked"));
    // Unknown message ids.
    let auth = format!("Bearer {TOKEN}");
    for (path, want) in [
        ("/api/email/999", 404),
        ("/api/email/abc", 400),
        ("/api/email/1", 404),
    ] {
        let r = send(&a.addr, Method::GET, path, &[("authorization", &auth)], "").await;
        assert_eq!(r.status, want, "{path}: {}", r.body);
    }
    // Only the sign-in mail ever reached the SMTP server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn create_user_and_idempotency_keys() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(smtp.port, "", ""));
    let body = serde_json::json!({"email": "New@Example.com", "create_user": true, "subject": "Welcome", "text": "hi"});
    let auth = format!("Bearer {TOKEN}");
    let h = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("idempotency-key", "welcome-new-1"),
    ];
    let first = send(&a.addr, Method::POST, "/api/email", &h, body.to_string()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = send(&a.addr, Method::POST, "/api/email", &h, body.to_string()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(first.json()["message_id"], again.json()["message_id"]);
    // The same key with another request is refused, garbage included.
    for other in [
        serde_json::json!({"email": "Other@Example.com", "create_user": true, "subject": "Welcome", "text": "hi"}).to_string(),
        "{garbage".to_string(),
    ] {
        let r = send(&a.addr, Method::POST, "/api/email", &h, other).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body.contains("different request"), "{}", r.body);
    }
    let user = first.json()["user_id"].as_i64().unwrap();
    smtp.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.messages().len(),
        1,
        "the retried POST sent nothing more"
    );
    let (_, out, _) = a.cli(&["users", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users[0]["id"].as_i64(), Some(user));
    assert_eq!(users[0]["email"], "New@example.com");
    let out = audit_with(&a, "api_user_created").await;
    assert!(out.contains("New@example.com"), "{out}");
    // The user exists now: a second message by id needs no create_user.
    let r = post_email(
        &a.addr,
        Some(TOKEN),
        &serde_json::json!({"user_id": user, "subject": "Again", "text": "hi"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let bad = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("idempotency-key", ""),
    ];
    let r = send(&a.addr, Method::POST, "/api/email", &bad, body.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn ceilings_per_recipient_and_overall() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(
        smtp.port,
        "",
        "[limits]\nsign_in_per_address = \"off\"\nsign_in_address_gap = \"0\"\napi_email_per_recipient = \"3/1h\"\napi_email_global = \"5/1h\"\n",
    ));
    for e in ["ann@example.com", "bob@example.com"] {
        sign_up(&a, &smtp, e).await;
    }
    let to = |e: &str| serde_json::json!({"email": e, "subject": "Hi", "text": "x"});
    for _ in 0..3 {
        assert_eq!(
            post_email(&a.addr, Some(TOKEN), &to("ann@example.com"))
                .await
                .status,
            202
        );
    }
    let r = post_email(&a.addr, Some(TOKEN), &to("ANN@example.com")).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("api_email_per_recipient"), "{}", r.body);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    // Another recipient still gets mail, up to the overall ceiling.
    for _ in 0..2 {
        assert_eq!(
            post_email(&a.addr, Some(TOKEN), &to("bob@example.com"))
                .await
                .status,
            202
        );
    }
    let r = post_email(&a.addr, Some(TOKEN), &to("bob@example.com")).await;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("api_email_global"), "{}", r.body);
    // The CLI counts against the same ceilings (they live in the database).
    let f = a.dir.path().join("body.txt");
    std::fs::write(&f, "x").unwrap();
    let (st, _, err) = a.cli(&[
        "email",
        "send",
        "--to",
        "bob@example.com",
        "--subject",
        "Hi",
        "--text",
        f.to_str().unwrap(),
    ]);
    assert_eq!(st.code(), Some(65), "{err}");
    assert!(err.contains("api_email_global"), "{err}");
    let m = send(&a.addr, Method::GET, "/metrics", &[], "").await;
    assert!(
        m.body
            .contains("authbase_rate_limited_total{limit=\"api_email_per_recipient\"} 1"),
        "{}",
        m.body
    );
    // Sign-in mail does not count: 2 sign-ins + 5 API messages arrive.
    smtp.wait_for(7).await;
}

#[tokio::test]
async fn smtp_down_then_up_every_message_delivered_once() {
    let held = HeldPort::new();
    let port = held.port;
    let dir = tempfile::tempdir().unwrap();
    let a = start_api(&api_config(port, "", ""));
    // The user is added by the CLI: no sign-in mail needed while the server is down.
    let (st, _, err) = a.cli(&["users", "add", "ann@example.com"]);
    assert!(st.success(), "{err}");
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = post_email(
            &a.addr,
            Some(TOKEN),
            &serde_json::json!({"email": "ann@example.com", "subject": format!("message {i}"), "text": "x"}),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.json()["id"].as_i64().unwrap());
    }
    // Attempted, failed, queued with the error.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(&a.addr, ids[0]).await;
        if s["attempts"].as_i64() >= Some(1) {
            assert_eq!(s["status"], "queued", "{s}");
            assert!(!s["last_error"].as_str().unwrap().is_empty(), "{s}");
            assert!(s["next_attempt_at"].as_str().is_some(), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "never attempted: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every one of them tried once while the server was down.
    for id in &ids {
        loop {
            let s = status(&a.addr, *id).await;
            if s["attempts"].as_i64() >= Some(1) {
                break;
            }
            assert!(Instant::now() < deadline, "never attempted: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let smtp = Smtp::start_on(dir.path(), held);
    let mails = wait_mails(dir.path(), 20).await;
    for id in &ids {
        let s = wait_status(&a.addr, *id, "sent", WAIT).await;
        assert!(s["attempts"].as_i64().unwrap() >= 2, "{s}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = api_ids(&smtp.messages());
    assert_eq!(seen.len(), 20, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "exactly once: {seen:?}");
    assert_eq!(mails.len(), 20);
}

#[tokio::test]
async fn sigkill_mid_queue_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A slow server: 100 ms a message, two at a time (20/s), so the 200 messages are
    // still queued at the kill even when posting them is slow.
    let smtp = Smtp::start_slow(dir.path(), 0, 100);
    let cfg = api_config(smtp.port, "concurrency = 2", "");
    let mut a = start_api(&cfg);
    let (st, _, err) = a.cli(&["users", "add", "ann@example.com"]);
    assert!(st.success(), "{err}");
    let mut ids = Vec::new();
    for i in 0..200 {
        let r = post_email(
            &a.addr,
            Some(TOKEN),
            &serde_json::json!({"email": "ann@example.com", "subject": format!("m{i}"), "text": "x"}),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.json()["message_id"].as_str().unwrap().to_string());
    }
    wait_mails(dir.path(), 20).await;
    a.kill();
    let delivered_before = read_mails(dir.path()).len();
    assert!(
        delivered_before < 200,
        "the queue was not drained before the kill"
    );
    // Same folder, same database.
    let folder = std::mem::replace(&mut a.dir, tempfile::tempdir().unwrap());
    let b = Authbase::start_in(folder, &cfg);
    // The killed server's claims are released once it has missed its heartbeats (15 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = api_ids(&read_mails(dir.path()));
        if ids.iter().all(|id| seen.contains_key(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 200 delivered after restart; logs:\n{}",
            seen.len(),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = b.cli(&[
        "outbox", "list", "--kind", "api", "--limit", "1000", "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, _) = b.cli(&[
            "outbox", "list", "--kind", "api", "--state", "queued", "--json",
        ]);
        if out.trim() == "[]" {
            break;
        }
        assert!(Instant::now() < deadline, "still queued: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // At-least-once: a repeat is only ever the same message (same Message-ID), and only
    // for the few that were in flight at the kill.
    let seen = api_ids(&read_mails(dir.path()));
    assert_eq!(seen.len(), 200);
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    println!("delivered before the kill: {delivered_before}; repeats after restart: {repeats}");
    assert!(repeats <= 8, "at most one claimed batch again: {repeats}");
}

#[tokio::test]
async fn sign_in_mail_overtakes_a_backlog_of_1000_api_messages() {
    let dir = tempfile::tempdir().unwrap();
    // 100 ms a message, concurrency 4 (40/s): the backlog takes 25 s to drain, so it is
    // still there when the sign-in is posted, and the sign-in mail has seconds to get
    // ahead of it even on a loaded machine.
    let smtp = Smtp::start_slow(dir.path(), 0, 100);
    let a = start_api(&api_config(smtp.port, "", ""));
    let (st, _, err) = a.cli(&["users", "add", "ann@example.com"]);
    assert!(st.success(), "{err}");
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let addr = a.addr.clone();
        tasks.spawn(async move {
            for i in 0..125 {
                let r = post_email(
                    &addr,
                    Some(TOKEN),
                    &serde_json::json!({"email": "ann@example.com", "subject": format!("backlog {w}-{i}"), "text": "x"}),
                )
                .await;
                assert_eq!(r.status, 202, "{}", r.body);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let queued_before = 1000 - read_mails(dir.path()).len();
    let started = Instant::now();
    let mut b = a.browser();
    let r = b.post_form("/auth", &[("email", "bob@example.com")]).await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + WAIT;
    let position = loop {
        let mails = read_mails(dir.path());
        if let Some(i) = mails.iter().position(|m| {
            m.header("Subject")
                .is_some_and(|s| s.starts_with("Sign in"))
        }) {
            break i;
        }
        assert!(Instant::now() < deadline, "no sign-in mail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    let api_after = 1000 - position;
    println!(
        "backlog when signing in: {queued_before}; sign-in mail arrived after {} ms as message {} of 1001",
        took.as_millis(),
        position + 1
    );
    assert!(
        queued_before >= 500,
        "the backlog drained too fast to test anything: {queued_before} left"
    );
    assert!(
        api_after >= queued_before - 100,
        "the sign-in mail waited behind the backlog: {api_after} API messages after it, {queued_before} were queued"
    );
}

#[tokio::test]
async fn separate_listener_keeps_the_api_off_the_public_port() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(smtp.port, "", "listen = \"127.0.0.1:0\"\n"));
    let api = a.api_addr();
    sign_up(&a, &smtp, "ann@example.com").await;
    let body = serde_json::json!({"email": "ann@example.com", "subject": "Hi", "text": "x"});
    let public = post_email(&a.addr, Some(TOKEN), &body).await;
    assert_eq!(public.status, 404, "{}", public.body);
    let private = post_email(&api, Some(TOKEN), &body).await;
    assert_eq!(private.status, 202, "{}", private.body);
    // The API port serves the API and health checks only.
    for path in ["/verify", "/auth", "/me", "/metrics"] {
        let r = send(&api, Method::GET, path, &[], "").await;
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(
        send(&api, Method::GET, "/healthz", &[], "").await.status,
        200
    );
    smtp.wait_for(2).await;
}

#[tokio::test]
async fn cli_sends_and_manages_the_outbox() {
    let held = HeldPort::new();
    let port = held.port;
    let dir = tempfile::tempdir().unwrap();
    let a = start_api(&api_config(port, "max_attempts = 2", ""));
    let text = a.dir.path().join("body.txt");
    std::fs::write(&text, "Your export is ready.\n").unwrap();
    let csv = a.dir.path().join("export.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    let (st, out, err) = a.cli(&[
        "email",
        "send",
        "--to",
        "cron@example.com",
        "--create-user",
        "--subject",
        "Export ✓",
        "--text",
        text.to_str().unwrap(),
        "--attach",
        csv.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    assert!(out.starts_with("queued message 1 <"), "{out}");
    assert!(out.contains("created user cron@example.com"), "{out}");
    let (st, _, err) = a.cli(&[
        "email",
        "send",
        "--to",
        "nobody@example.com",
        "--subject",
        "x",
        "--text",
        text.to_str().unwrap(),
    ]);
    assert_eq!(st.code(), Some(65));
    assert!(err.contains("no user nobody@example.com"), "{err}");
    let (st, _, err) = a.cli(&[
        "email",
        "send",
        "--to",
        "cron@example.com",
        "--subject",
        "x",
    ]);
    assert_eq!(
        st.code(),
        Some(2),
        "clap: --text or --html is required: {err}"
    );
    // The SMTP server is down: two attempts, then failed.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, _) = a.cli(&["outbox", "list", "--state", "failed"]);
        if out.contains("1 message\n") {
            assert!(
                out.contains("cron@example.com") && out.contains("Export"),
                "{out}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never failed: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out, _) = a.cli(&["outbox", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["attempts"], 2);
    assert!(
        rows[0]["last_error"].as_str().unwrap().contains("onnect"),
        "{out}"
    );
    // Up again; retry the failed ones.
    let smtp = Smtp::start_on(dir.path(), held);
    let (st, out, _) = a.cli(&["outbox", "retry", "--failed"]);
    assert!(st.success());
    assert!(out.starts_with("1 message queued again"), "{out}");
    let mails = smtp.wait_for(1).await;
    let p = parse(&mails[0].raw);
    assert_eq!(p["subject"], "Export ✓");
    let parts = p["parts"].as_array().unwrap();
    assert_eq!(parts[1]["filename"], "export.csv");
    assert_eq!(parts[1]["content_type"], "text/csv");
    assert_eq!(
        b64(parts[1]["content_b64"].as_str().unwrap()),
        b"a,b\n1,2\n"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, _) = a.cli(&["outbox", "list", "--state", "sent"]);
        if out.contains("1 message\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A sent message is never sent again.
    let (_, _, err) = a.cli(&["outbox", "retry", "1"]);
    assert!(err.contains("not queued again"), "{err}");
    let (st, out, _) = a.cli(&["outbox", "purge", "--state", "sent", "--older-than", "1d"]);
    assert!(st.success());
    assert_eq!(out, "0 messages deleted\n");
    let (_, out, _) = a.cli(&["outbox", "purge", "--state", "sent"]);
    assert_eq!(out, "1 message deleted\n");
    let (st, _, err) = a.cli(&["outbox", "purge"]);
    assert_eq!(st.code(), Some(65), "{err}");
    let (st, _, err) = a.cli(&["outbox", "list", "--state", "lost"]);
    assert_eq!(st.code(), Some(65), "{err}");
}

/// A minimal SMTP server that keeps the exact bytes of each DATA section as they came
/// off the wire (before any dot-unstuffing or line-ending repair).
async fn raw_smtp() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let g = g.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 raw\r\n").await.unwrap();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim().to_ascii_uppercase();
                    if cmd.starts_with("EHLO") {
                        w.write_all(b"250-raw\r\n250 8BITMIME\r\n").await.unwrap();
                    } else if cmd.starts_with("DATA") {
                        w.write_all(b"354 go\r\n").await.unwrap();
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 65536];
                        while !buf.ends_with(b"\r\n.\r\n") {
                            let n = r.read(&mut chunk).await.unwrap();
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        g.lock().unwrap().push(buf);
                        w.write_all(b"250 OK\r\n").await.unwrap();
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        w.write_all(b"250 OK\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    (port, got)
}

/// Review finding: bare LF / bare CR / NUL reach the SMTP wire inside 7bit parts, so an
/// app that passes user content through (an attachment, a text body) can put SMTP
/// end-of-data look-alikes (`<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR>.<CR><LF>`) on the wire:
/// SMTP smuggling against receivers that accept them.
#[tokio::test]
async fn bodies_never_put_bare_cr_or_lf_on_the_wire() {
    let (port, got) = raw_smtp().await;
    let a = start_api(&api_config(port, "", ""));
    let (st, _, err) = a.cli(&["users", "add", "ann@example.com"]);
    assert!(st.success(), "{err}");
    let smug = b"hello\n.\nMAIL FROM:<ceo@bank.example>\nRCPT TO:<victim@example.net>\nDATA\n\nsmuggled\n.\n";
    let r = post_email(
        &a.addr,
        Some(TOKEN),
        &serde_json::json!({"email": "ann@example.com", "subject": "att", "text": "see attached",
            "attachments": [{"filename": "data.csv", "content_type": "text/csv",
                "content": base64::engine::general_purpose::STANDARD.encode(smug)}]}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post_email(
        &a.addr,
        Some(TOKEN),
        &serde_json::json!({"email": "ann@example.com", "subject": "cr",
            "text": "hello\r.\r\nMAIL FROM:<ceo@bank.example>\r\n"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + WAIT;
    while got.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "mail never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for wire in got.lock().unwrap().iter() {
        for (i, b) in wire.iter().enumerate() {
            let bare_lf = *b == b'\n' && (i == 0 || wire[i - 1] != b'\r');
            let bare_cr = *b == b'\r' && wire.get(i + 1) != Some(&b'\n');
            assert!(
                !bare_lf && !bare_cr && *b != 0,
                "bare CR/LF/NUL on the wire at {i}: {:?}",
                String::from_utf8_lossy(&wire[i.saturating_sub(40)..(i + 40).min(wire.len())])
            );
        }
    }
}

/// Review finding: `outbox retry --failed` re-sends mail that blocking (or removing) a user
/// dropped, so blocked and removed users get mail.
#[tokio::test]
async fn retry_never_sends_to_blocked_or_removed_users() {
    let held = HeldPort::new();
    let port = held.port;
    let dir = tempfile::tempdir().unwrap();
    let a = start_api(&api_config(port, "", ""));
    for e in ["ann@example.com", "bob@example.com"] {
        assert!(a.cli(&["users", "add", e]).0.success());
        let r = post_email(
            &a.addr,
            Some(TOKEN),
            &serde_json::json!({"email": e, "subject": "hi", "text": "x"}),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    assert!(a.cli(&["users", "block", "ann@example.com"]).0.success());
    assert!(a.cli(&["users", "remove", "bob@example.com"]).0.success());
    let (st, out, err) = a.cli(&["outbox", "retry", "--failed"]);
    assert!(st.success(), "{err}");
    println!("{out}");
    let smtp = Smtp::start_on(dir.path(), held);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let to: Vec<String> = smtp.messages().iter().map(|m| m.envelope.clone()).collect();
    assert!(to.is_empty(), "blocked/removed users got mail: {to:?}");
}

/// Review finding: a server stopping gracefully unregisters (follow_revocations ends at once)
/// while its mail task still finishes an in-flight send; another server's stale-claim
/// check then takes the message over and sends it a second time, without any crash.
#[tokio::test]
async fn a_graceful_stop_with_two_servers_sends_once() {
    let mdir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start_slow(mdir.path(), 0, 8000);
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("authbase.db");
    let key = shared.path().join("authbase.key");
    let cfg = api_config(smtp.port, "smtp_timeout = \"30s\"", "")
        .replace(
            "database = \"authbase.db\"",
            &format!("database = \"{}\"", db.display()),
        )
        .replace(
            "secret_key_file = \"authbase.key\"",
            &format!("secret_key_file = \"{}\"", key.display()),
        );
    let mut a = start_api(&cfg);
    assert!(a.cli(&["users", "add", "ann@example.com"]).0.success());
    let r = post_email(
        &a.addr,
        Some(TOKEN),
        &serde_json::json!({"email": "ann@example.com", "subject": "once", "text": "x"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = start_api(&cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop(); // SIGTERM while the 8 s DATA is in flight
    tokio::time::sleep(Duration::from_secs(12)).await;
    let n = smtp.messages().len();
    println!(
        "{}",
        b.logs()
            .lines()
            .filter(|l| l.contains("took over"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(n, 1, "delivered {n} times");
}

/// Review finding: `authbase email send --create-user` creates a user without an audit event
/// (the API's create_user is audited as api_user_created; `users add` as user_added).
#[tokio::test]
async fn cli_create_user_is_audited() {
    let smtp = Smtp::start();
    let a = start_api(&api_config(smtp.port, "", ""));
    let f = a.dir.path().join("t.txt");
    std::fs::write(&f, "x").unwrap();
    let (st, out, err) = a.cli(&[
        "email",
        "send",
        "--to",
        "cron@example.com",
        "--create-user",
        "--subject",
        "x",
        "--text",
        f.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    assert!(out.contains("created user"), "{out}");
    let out = audit_with(&a, "api_user_created").await;
    assert!(out.contains("cron@example.com"), "no audit event: {out}");
}
