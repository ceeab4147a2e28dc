//! The magic-link service end to end: the real binary, a real SMTP server, real HTTP.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::Method;

fn setup() -> (Smtp, Authbase) {
    setup_with("", "")
}

fn setup_with(top: &str, sections: &str) -> (Smtp, Authbase) {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(smtp.port, top, sections));
    (smtp, ab)
}

#[tokio::test]
async fn quickstart_with_the_shipped_config_prints_the_link() {
    // The repo's own authbase.toml, as a newcomer runs it, but on an ephemeral port.
    let shipped = std::fs::read_to_string(repo().join("authbase.toml")).unwrap();
    let cfg = shipped.replace(
        "listen       = \"127.0.0.1:9091\"",
        "listen = \"127.0.0.1:0\"",
    );
    assert_ne!(
        cfg, shipped,
        "the sample's listen line changed; update this test"
    );
    let ab = Authbase::start(&cfg);
    let mut b = ab.browser();
    let r = b
        .post_form("/auth", &[("email", "newcomer@example.com")])
        .await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + WAIT;
    let link = loop {
        let out = ab.stdout.lock().unwrap().clone();
        if let Some(i) = out.find("http://localhost:9091/sign_in/") {
            let l = &out[i..];
            break l[..l.find(char::is_whitespace).unwrap()].to_string();
        }
        assert!(Instant::now() < deadline, "no link on stdout: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let path = &link["http://localhost:9091".len()..];
    let r = b.get(path).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("http://localhost:9091/me"));
    let me = b.me().await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["email_address"], "newcomer@example.com");
    assert!(me.json()["id"].is_i64());
}

#[tokio::test]
async fn pending_session_is_not_signed_in_and_same_browser_link_signs_in_with_rotation() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (r, mail) = request_link(&mut a, &smtp, "Alice@Example.COM").await;
    assert!(r.body.contains("Check your email"));
    let pending = a.session().cloned().expect("pending cookie set");
    let sc = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax") && sc.contains("Path=/"),
        "{sc}"
    );
    // The original's flaw: a pending session must not count.
    assert_eq!(a.me().await.status, 401);

    // The mail: to the normalised address, with webapp_name, link and code, correct MIME.
    assert!(
        mail.envelope.contains("RCPT TO Alice@example.com"),
        "{}",
        mail.envelope
    );
    assert_eq!(mail.envelope.matches("RCPT TO").count(), 1);
    assert!(mail.header("Subject").unwrap().contains("Test App"));
    assert!(mail.header("Message-ID").is_some());
    assert!(mail.header("Date").is_some());
    assert!(mail.raw.contains("multipart/alternative"));
    assert!(mail
        .link()
        .starts_with("http://auth.test.localhost/sign_in/"));
    assert_eq!(mail.code().len(), 6);

    let r = a.get(&mail.link_path()).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("http://auth.test.localhost/me"));
    let signed = a.session().cloned().unwrap();
    assert_ne!(signed, pending, "session id must rotate at sign-in");
    let me = a.me().await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["email_address"], "Alice@example.com");

    // The portal now says who is signed in; `?switch=1` still offers the form.
    let page = a.get("/").await;
    assert!(page.body.contains("You are signed in"), "{}", page.body);
    assert!(page.body.contains("Alice@example.com"), "{}", page.body);
    assert!(page.body.contains("action=\"/sign_out\""), "{}", page.body);
    let form = a.get("/?switch=1").await;
    assert!(form.body.contains("name=\"email\""), "{}", form.body);
    assert!(!form.body.contains("You are signed in"));

    // The pre-sign-in value is worth nothing now.
    let mut planted = ab.browser();
    planted.cookies.insert("session_id".into(), pending);
    assert_eq!(planted.me().await.status, 401);

    // Used once: a second click is refused with a clear page.
    let again = a.get(&mail.link_path()).await;
    assert_eq!(again.status, 410);
    assert!(again.body.contains("already used"));
}

#[tokio::test]
async fn other_browser_get_and_head_change_nothing() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "bob@example.com").await;
    let mut scanner = ab.browser();
    scanner.user_agent = "MailScanner/1.0".into();
    for _ in 0..3 {
        let r = scanner.get(&mail.link_path()).await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("Sign in on this device"));
        assert!(r.body.contains("Approve the waiting browser"));
        assert!(r.body.contains("This wasn't me"));
        assert!(r.body.contains("bob@example.com"));
        assert!(r.body.contains("Firefox on Linux"), "shows who asked");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("referrer-policy"), Some("strict-origin"));
        assert!(scanner.cookies.is_empty(), "a GET sets no session");
        let h = scanner
            .request(Method::HEAD, &mail.link_path(), &[], Bytes::new())
            .await;
        assert_eq!(h.status, 200);
    }
    assert_eq!(scanner.me().await.status, 401);
    assert_eq!(a.me().await.status, 401);
    // The link still works for the browser that asked.
    assert_eq!(a.get(&mail.link_path()).await.status, 303);
    assert_eq!(a.me().await.status, 200);
}

#[tokio::test]
async fn sign_in_on_this_device_signs_in_only_that_browser() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "carol@example.com").await;
    let mut phone = ab.browser();
    let r = phone
        .post_form(&mail.link_path(), &[("action", "this_device")])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        phone.me().await.json()["email_address"],
        "carol@example.com"
    );
    // The waiting browser never gets in, not even by polling.
    let w = a.get_json("/auth").await;
    assert_ne!(w.json()["status"], "signed_in");
    assert_eq!(a.me().await.status, 401);
    // And the link is spent.
    let again = ab
        .browser()
        .post_form(&mail.link_path(), &[("action", "this_device")])
        .await;
    assert_eq!(again.status, 410);
}

#[tokio::test]
async fn approving_the_waiting_browser_needs_the_right_number() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (page, mail) = request_link(&mut a, &smtp, "dave@example.com").await;
    let number = page.match_number();
    assert_eq!(number.len(), 2);
    let wrong = if number == "42" { "43" } else { "42" };
    let mut phone = ab.browser();

    let r = phone
        .post_form(
            &mail.link_path(),
            &[("action", "approve"), ("match", wrong)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("does not match"));
    assert_eq!(a.get_json("/auth").await.json()["status"], "waiting");
    assert_eq!(a.me().await.status, 401);

    let r = phone
        .post_form(
            &mail.link_path(),
            &[("action", "approve"), ("match", &number)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(phone.cookies.is_empty(), "the approver is not signed in");
    assert_eq!(phone.me().await.status, 401);

    let pending = a.session().cloned().unwrap();
    let w = a.get_json("/auth").await;
    assert_eq!(w.json()["status"], "signed_in", "{}", w.body);
    assert_eq!(w.json()["redirect"], "http://auth.test.localhost/me");
    assert_ne!(a.session().unwrap(), &pending, "rotated on pick-up");
    assert_eq!(a.me().await.json()["email_address"], "dave@example.com");
    // Without JavaScript the same page redirects.
    let mut b2 = ab.browser();
    let (page2, mail2) = request_link(&mut b2, &smtp, "dave@example.com").await;
    phone
        .post_form(
            &mail2.link_path(),
            &[("action", "approve"), ("match", &page2.match_number())],
        )
        .await;
    let r = b2.get("/auth").await;
    assert_eq!(r.status, 303);
    assert_eq!(b2.me().await.status, 200);
}

#[tokio::test]
async fn wrong_numbers_cancel_the_request_after_the_limit() {
    let (smtp, ab) = setup_with("", "[session]\nmatch_attempts = 3\n");
    let mut a = ab.browser();
    let (page, mail) = request_link(&mut a, &smtp, "erin@example.com").await;
    let n: u32 = page.match_number().parse().unwrap();
    let wrong = ((n + 1 - 10) % 90 + 10).to_string();
    let mut phone = ab.browser();
    let path = mail.link_path();
    // Two wrong numbers are refused; the third (the limit) cancels the request.
    for want in [400, 400, 410] {
        let r = phone
            .post_form(&path, &[("action", "approve"), ("match", &wrong)])
            .await;
        assert_eq!(r.status, want);
    }
    // Now even the right number does nothing.
    let r = phone
        .post_form(
            &path,
            &[("action", "approve"), ("match", &page.match_number())],
        )
        .await;
    assert_eq!(r.status, 410);
    assert_eq!(a.get_json("/auth").await.json()["status"], "cancelled");
}

#[tokio::test]
async fn this_wasnt_me_cancels() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "frank@example.com").await;
    let r = ab
        .browser()
        .post_form(&mail.link_path(), &[("action", "deny")])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Nobody was signed in"));
    assert_eq!(a.get(&mail.link_path()).await.status, 410);
    assert_eq!(a.me().await.status, 401);
}

#[tokio::test]
async fn code_works_once_and_locks_after_too_many_wrong_tries() {
    let (smtp, ab) = setup_with("", "[session]\ncode_attempts = 3\n");
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "grace@example.com").await;
    let code = mail.code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = a.post_form("/auth/code", &[("code", wrong)]).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not right"));
    // The code needs this browser: another one cannot use it.
    let r = ab
        .browser()
        .post_form("/auth/code", &[("code", &code)])
        .await;
    assert_eq!(r.status, 404);
    let r = a.post_form("/auth/code", &[("code", &code)]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(a.me().await.status, 200);
    // Once.
    let r = a.post_form("/auth/code", &[("code", &code)]).await;
    assert_ne!(r.status, 303);

    // Lock-out: three wrong codes cancel the request; the right one then fails.
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "grace@example.com").await;
    let code = mail.code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        b.post_form("/auth/code", &[("code", wrong)]).await.status,
        400
    );
    assert_eq!(
        b.post_form("/auth/code", &[("code", wrong)]).await.status,
        400
    );
    assert_eq!(
        b.post_form("/auth/code", &[("code", wrong)]).await.status,
        410
    );
    assert_eq!(
        b.post_form("/auth/code", &[("code", &code)]).await.status,
        410
    );
    assert_eq!(b.me().await.status, 401);
    assert_eq!(
        b.get(&mail.link_path()).await.status,
        410,
        "the link died with it"
    );
    // Malformed codes are refused without counting.
    assert_eq!(
        b.post_form("/auth/code", &[("code", "12ab56")])
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn unknown_and_expired_links_are_refused_with_a_clear_page() {
    let (smtp, ab) = setup_with("", "[session]\nlink_ttl = \"2s\"\n");
    let mut a = ab.browser();
    for bad in [
        "/sign_in/",
        "/sign_in/short",
        "/sign_in/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/sign_in/%00%0d%0a",
    ] {
        let r = a.get(bad).await;
        assert_eq!(r.status, 404, "{bad}");
        assert!(r.body.contains("not valid"), "{bad}");
    }
    let (_, mail) = request_link(&mut a, &smtp, "heidi@example.com").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = a.get(&mail.link_path()).await;
    assert_eq!(r.status, 410);
    assert!(r.body.contains("expired"));
    assert_eq!(a.me().await.status, 401);
    let r = a.post_form("/auth/code", &[("code", &mail.code())]).await;
    assert_ne!(r.status, 303);
}

#[tokio::test]
async fn twenty_parallel_clicks_confirm_once() {
    let (smtp, ab) = setup();
    // Twenty other devices choosing "sign in on this device" at once.
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "ivan@example.com").await;
    let path = mail.link_path();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut b = ab.browser();
        let p = path.clone();
        tasks.push(tokio::spawn(async move {
            b.post_form(&p, &[("action", "this_device")])
                .await
                .status
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 303).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 303 || *c == 410), "{codes:?}");

    // Twenty clicks at once in the asking browser (same cookie).
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "ivan@example.com").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut b = a.clone();
        let p = mail.link_path();
        tasks.push(tokio::spawn(async move {
            let r = b.get(&p).await;
            (r.status.as_u16(), b.session().cloned())
        }));
    }
    let mut ok = Vec::new();
    for t in tasks {
        let (s, c) = t.await.unwrap();
        if s == 303 {
            ok.push(c.unwrap());
        } else {
            assert!(s == 410 || s == 200, "{s}");
        }
    }
    assert_eq!(ok.len(), 1);
    let mut winner = ab.browser();
    winner.cookies.insert("session_id".into(), ok[0].clone());
    assert_eq!(winner.me().await.status, 200);
}

#[tokio::test]
async fn a_session_id_brought_by_the_client_is_never_adopted() {
    let (smtp, ab) = setup();
    let planted = "attackerchosenvalue0123456789abcdefghijklmn";
    assert_eq!(planted.len(), 43);
    let mut victim = ab.browser();
    victim.cookies.insert("session_id".into(), planted.into());
    let (r, mail) = request_link(&mut victim, &smtp, "judy@example.com").await;
    let issued = r.set_cookie("session_id").unwrap();
    assert_ne!(issued, planted);
    assert_eq!(victim.get(&mail.link_path()).await.status, 303);
    let mut attacker = ab.browser();
    attacker.cookies.insert("session_id".into(), planted.into());
    assert_eq!(attacker.me().await.status, 401);
    // `?session_id=` in a URL is not a cookie.
    let r = ab
        .browser()
        .get(&format!("/me?session_id={}", victim.session().unwrap()))
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn sign_out_ends_the_session_server_side() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "ken@example.com").await;
    a.get(&mail.link_path()).await;
    let token = a.session().cloned().unwrap();
    let r = a
        .request(
            Method::POST,
            "/sign_out",
            &[("accept", "application/json")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "signed_out");
    let sc = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        sc.starts_with("session_id=;") && sc.contains("Max-Age=0"),
        "{sc}"
    );
    // A copy of the old cookie no longer works.
    let mut copy = ab.browser();
    copy.cookies.insert("session_id".into(), token);
    assert_eq!(copy.me().await.status, 401);
    // Harmless without a session, and GET does nothing.
    assert_eq!(ab.browser().post_form("/sign_out", &[]).await.status, 200);
    assert_eq!(ab.browser().get("/sign_out").await.status, 405);
}

#[tokio::test]
async fn sessions_survive_a_restart_and_sigterm_exits_cleanly() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "lena@example.com").await;
    a.get(&mail.link_path()).await;
    let token = a.session().cloned().unwrap();
    let mut ab2 = ab.restart();
    let mut b = ab2.browser();
    b.cookies.insert("session_id".into(), token);
    assert_eq!(b.me().await.json()["email_address"], "lena@example.com");
    assert!(ab2.stop().success(), "exit status after SIGTERM");
}

#[tokio::test]
async fn smtp_down_at_request_time_then_delivered_when_it_returns() {
    // A port with nothing listening, held for the server that comes up later.
    let held = HeldPort::new();
    let port = held.port;
    let ab = Authbase::start(&test_config(port, "", ""));
    let mut a = ab.browser();
    let t = Instant::now();
    let r = a.post_form("/auth", &[("email", "mia@example.com")]).await;
    assert_eq!(r.status, 200, "the request does not wait for mail");
    assert!(t.elapsed() < WAIT);
    // Let a few attempts fail.
    ab.wait_for_log("mail not sent; will retry").await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start_on(dir.path(), held);
    let mails = smtp.wait_for(1).await;
    assert!(mails[0].envelope.contains("mia@example.com"));
    assert_eq!(a.get(&mails[0].link_path()).await.status, 303);
    assert_eq!(a.me().await.status, 200);
}

#[tokio::test]
async fn queued_mail_survives_a_restart() {
    let held = HeldPort::new();
    let port = held.port;
    let ab = Authbase::start(&test_config(port, "", ""));
    let mut a = ab.browser();
    assert_eq!(
        a.post_form("/auth", &[("email", "nina@example.com")])
            .await
            .status,
        200
    );
    let ab = ab.restart();
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start_on(dir.path(), held);
    let mails = smtp.wait_for(1).await;
    a.addr = ab.addr.clone();
    assert_eq!(a.get(&mails[0].link_path()).await.status, 303);
    assert_eq!(a.me().await.status, 200);
}

#[tokio::test]
async fn header_tricks_in_the_address_are_refused_and_send_nothing() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    for bad in [
        "a@example.com\r\nBcc: evil@example.org",
        "a@example.com\nRCPT TO:<evil@example.org>",
        "\"evil@example.org\r\nRCPT TO:<x@example.org>\"@example.com",
        "a@example.com, evil@example.org",
        "Alice <a@example.com>",
        "a@evil@company.com",
        "",
        &format!("{}@example.com", "x".repeat(300)),
    ] {
        let r = a.post_form("/auth", &[("email", bad)]).await;
        assert_eq!(r.status, 400, "{bad:?}");
        assert!(a.session().is_none(), "no session for {bad:?}");
        let j = a
            .request(
                Method::POST,
                "/auth",
                &[("content-type", "application/json")],
                serde_json::json!({ "email": bad }).to_string(),
            )
            .await;
        assert_eq!(j.status, 400);
        assert_eq!(j.json()["error"], "invalid_email");
    }
    // A valid request afterwards is the only mail, with one recipient.
    request_link(&mut a, &smtp, "ok@example.com").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].envelope.matches("RCPT TO").count(), 1);
    assert!(!mails[0].raw.to_lowercase().contains("bcc"));
}

#[tokio::test]
async fn json_and_multipart_bodies_work_like_forms() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let r = a
        .request(
            Method::POST,
            "/auth",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            r#"{"email": "json@example.com"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "check_email");
    assert!(r.json()["match_number"].is_string());
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nmulti@example.com\r\n--XyZ--\r\n";
    let mut b = ab.browser();
    let r = b
        .request(
            Method::POST,
            "/auth",
            &[("content-type", "multipart/form-data; boundary=XyZ")],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mails = smtp.wait_for(2).await;
    let to: Vec<_> = mails.iter().map(|m| m.envelope.clone()).collect();
    assert!(to.iter().any(|e| e.contains("json@example.com")));
    assert!(to.iter().any(|e| e.contains("multi@example.com")));
    // Other types are refused precisely.
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[("content-type", "text/xml")],
            "<x/>",
        )
        .await;
    assert_eq!(r.status, 415);
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    a.origin = Some("https://evil.example.org".into());
    let r = a
        .post_form("/auth", &[("email", "victim@example.com")])
        .await;
    assert_eq!(r.status, 403);
    assert!(a.session().is_none());
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("sec-fetch-site", "cross-site"),
            ],
            "email=victim%40example.com",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", "null"),
            ],
            "email=victim%40example.com",
        )
        .await;
    assert_eq!(r.status, 403);
    // Our own origin is fine.
    let mut ok = ab.browser();
    ok.origin = Some("http://auth.test.localhost".into());
    request_link(&mut ok, &smtp, "victim@example.com").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn host_header_never_changes_the_link() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let r = a
        .request(
            Method::POST,
            "/auth",
            &[
                ("host", "evil.example.org"),
                ("x-forwarded-host", "evil.example.org"),
                ("forwarded", "host=evil.example.org;proto=https"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "email=olga%40example.com",
        )
        .await;
    assert_eq!(r.status, 200);
    let mail = &smtp.wait_for(1).await[0];
    assert!(
        mail.link()
            .starts_with("http://auth.test.localhost/sign_in/"),
        "{}",
        mail.link()
    );
    assert!(!mail.raw.contains("evil"));
}

#[tokio::test]
async fn return_url_is_carried_through_sign_in_and_validated() {
    let (smtp, ab) = setup_with("allowed_redirect_hosts = [\"app.test.localhost\"]", "");
    let mut a = ab.browser();
    let page = a
        .get("/?rd=http%3A%2F%2Fapp.test.localhost%2Fdeep%3Fx%3D1")
        .await;
    assert!(
        page.body
            .contains("value=\"http://app.test.localhost/deep?x=1\""),
        "{}",
        page.body
    );
    let evil = a.get("/?rd=https%3A%2F%2Fevil.example.org%2F").await;
    assert!(!evil.body.contains("evil.example.org"));
    let before = smtp.messages().len();
    a.post_form(
        "/auth",
        &[
            ("email", "pat@example.com"),
            ("rd", "http://app.test.localhost/deep?x=1"),
        ],
    )
    .await;
    let mail = smtp.wait_for(before + 1).await[before].clone();
    let r = a.get(&mail.link_path()).await;
    assert_eq!(
        r.header("location"),
        Some("http://app.test.localhost/deep?x=1")
    );
    // An invalid rd falls back to redirect_url.
    let mut b = ab.browser();
    b.post_form(
        "/auth",
        &[("email", "pat@example.com"), ("rd", "//evil.example.org")],
    )
    .await;
    let mail = smtp.wait_for(before + 2).await[before + 1].clone();
    let r = b.get(&mail.link_path()).await;
    assert_eq!(r.header("location"), Some("http://auth.test.localhost/me"));
}

#[tokio::test]
async fn no_secret_in_the_database_its_wal_or_the_logs() {
    let (smtp, ab) = setup_with(SQLITE_ONLY, "");
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "quinn@example.com").await;
    let pending = a.session().cloned().unwrap();
    let secret = mail.link_path()["/sign_in/".len()..].to_string();
    let code = mail.code();
    a.get(&mail.link_path()).await;
    let signed = a.session().cloned().unwrap();
    let mut files = Vec::new();
    for ext in ["", "-wal", "-shm"] {
        let p = format!("{}{ext}", ab.db_path().display());
        if let Ok(b) = std::fs::read(&p) {
            files.push((p, b));
        }
    }
    assert!(files.len() >= 2, "database and WAL present");
    // Created readable by the owner only, like the key file (and the -wal and -shm
    // files take the database's mode).
    for ext in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = format!("{}{ext}", ab.db_path().display());
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{p}");
        }
    }
    for (p, bytes) in &files {
        let hay = String::from_utf8_lossy(bytes);
        for s in [&pending, &signed, &secret] {
            assert!(!hay.contains(s.as_str()), "{p} holds a secret");
        }
        assert!(
            !hay.contains(&format!("waiting: {code}")),
            "{p} holds the mail text"
        );
    }
    let logs = ab.logs();
    for s in [&pending, &signed, &secret] {
        assert!(!logs.contains(s.as_str()), "log holds a secret:\n{logs}");
    }
    assert!(
        logs.contains("/sign_in/{secret}"),
        "paths with secrets are redacted"
    );
}

#[tokio::test]
async fn absolute_lifetime_and_idle_timeout_hold() {
    let (smtp, ab) = setup_with("", "[session]\nlifetime = \"3s\"\n");
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "rita@example.com").await;
    a.get(&mail.link_path()).await;
    assert_eq!(a.me().await.status, 200);
    // Activity does not extend the absolute lifetime.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        a.me().await;
    }
    assert_eq!(a.me().await.status, 401);

    // Idle timeout: activity keeps a session alive; silence ends it. Activity is kept in
    // whole seconds, so the 4 s timeout leaves each 1.5 s step 1.5 s to spare, and ends
    // no later than 5 s after the last use.
    let (smtp, ab) = setup_with("", "[session]\nidle_timeout = \"4s\"\n");
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "rita@example.com").await;
    a.get(&mail.link_path()).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.me().await.status, 200, "kept alive by use");
    }
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(a.me().await.status, 401, "ended after idling");
}

#[tokio::test]
async fn limits_and_precise_errors() {
    let (_smtp, ab) = setup();
    let big = "email=".to_string() + &"a".repeat(70_000);
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[("content-type", "application/x-www-form-urlencoded")],
            big,
        )
        .await;
    assert_eq!(r.status, 413);
    let r = ab
        .browser()
        .request(Method::DELETE, "/me", &[], Bytes::new())
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(ab.browser().get("/nope").await.status, 404);
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[("content-type", "application/json")],
            "{not json",
        )
        .await;
    assert_eq!(r.status, 400);
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[("content-type", "multipart/form-data")],
            "x",
        )
        .await;
    assert_eq!(r.status, 400);
    // Garbage, huge and duplicated cookies are simply "not signed in".
    for c in [
        "session_id=",
        "session_id=%00%ff",
        &format!("session_id={}", "A".repeat(7000)),
        "session_id=a; session_id=b",
    ] {
        let r = send(&ab.addr, Method::GET, "/me", &[("cookie", c)], Bytes::new()).await;
        assert_eq!(r.status, 401, "{c}");
    }
    let r = ab.browser().get("/").await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    // More than 100 request headers: 431, not a panic or a 2xx.
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = send(&ab.addr, Method::GET, "/healthz", &refs, Bytes::new()).await;
    assert_eq!(r.status, 431);
    assert_eq!(ab.browser().get("/healthz").await.status, 200);
    assert_eq!(ab.browser().get("/readyz").await.status, 200);
}

#[test]
fn check_config_names_the_bad_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[session]\nlifetime = \"forever\"\n").unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session.lifetime"), "{err}");
    std::fs::write(&p, "listen = \"127.0.0.1:9091\"\nsurprise = true\n").unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
    // The shipped file is valid; AUTHBASE_CONFIG selects the file.
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .env("AUTHBASE_CONFIG", repo().join("authbase.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sub in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
    ] {
        let out = std::process::Command::new(binary())
            .args(sub)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    // A missing file is a config error too, naming it.
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config", "/nonexistent/authbase.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/authbase.toml"));
}

#[tokio::test]
async fn new_requests_do_not_buy_fresh_code_guesses() {
    let (smtp, ab) = setup_with(
        "",
        "[session]\ncode_attempts = 3\ncode_attempts_per_address = 4\n",
    );
    let mut a = ab.browser();
    let (_, mail1) = request_link(&mut a, &smtp, "sam@example.com").await;
    let wrong = |c: &str| {
        if c == "000000" {
            "111111".to_string()
        } else {
            "000000".to_string()
        }
    };
    let w = wrong(&mail1.code());
    assert_eq!(a.post_form("/auth/code", &[("code", &w)]).await.status, 400);
    assert_eq!(a.post_form("/auth/code", &[("code", &w)]).await.status, 400);
    assert_eq!(a.post_form("/auth/code", &[("code", &w)]).await.status, 410);
    // A fresh request for the same address: one more wrong code reaches the address limit.
    let (_, mail2) = request_link(&mut a, &smtp, "sam@example.com").await;
    let w = wrong(&mail2.code());
    assert_eq!(a.post_form("/auth/code", &[("code", &w)]).await.status, 400);
    let r = a.post_form("/auth/code", &[("code", &mail2.code())]).await;
    assert_eq!(
        r.status, 429,
        "even the right code is refused now: {}",
        r.body
    );
    assert_eq!(a.me().await.status, 401);
    // The link (which needs the mailbox, not a guess) still works.
    assert_eq!(a.get(&mail2.link_path()).await.status, 303);
    assert_eq!(a.me().await.status, 200);
}

#[tokio::test]
async fn a_stalled_smtp_server_is_bounded_by_smtp_timeout_and_does_not_block_shutdown() {
    // A server that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok((c, _)) = silent.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut ab = Authbase::start(&test_config(port, "", "smtp_timeout = \"2s\"\n"));
    let mut a = ab.browser();
    let t = Instant::now();
    assert_eq!(
        a.post_form("/auth", &[("email", "tia@example.com")])
            .await
            .status,
        200
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "POST /auth does not wait for SMTP"
    );
    ab.wait_for_log("did not finish within 2s").await;
    let t = Instant::now();
    assert!(ab.stop().success());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        t.elapsed()
    );
    drop(held);
}

#[tokio::test]
async fn sign_out_ends_every_presented_session_even_when_the_cookie_is_duplicated() {
    let (smtp, ab) = setup();
    let mut a = ab.browser();
    let (_, mail) = request_link(&mut a, &smtp, "uma@example.com").await;
    a.get(&mail.link_path()).await;
    let token = a.session().cloned().unwrap();
    let dup = format!("session_id={token}; session_id={}", "A".repeat(43));
    let r = send(
        &ab.addr,
        Method::POST,
        "/sign_out",
        &[("cookie", &dup)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(a.me().await.status, 401, "the real session ended too");
}

#[tokio::test]
async fn same_origin_forms_work_from_another_address_of_the_same_server() {
    // A browser on http://127.0.0.1:PORT (public_url says another host) posts its own form.
    let (smtp, ab) = setup();
    let own = format!("http://{}", ab.addr);
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &own),
                ("sec-fetch-site", "same-origin"),
            ],
            "email=val%40example.com",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    smtp.wait_for(1).await;
    // Without the browser's same-origin word, an unknown Origin is still refused.
    let r = ab
        .browser()
        .request(
            Method::POST,
            "/auth",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &own),
            ],
            "email=val%40example.com",
        )
        .await;
    assert_eq!(r.status, 403);
}

#[test]
fn runs_on_built_in_defaults_without_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("AUTHBASE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("built-in defaults: ok"));
    // An explicit file that is missing is still an error.
    let out = std::process::Command::new(binary())
        .args(["check-config", "--config", "nope.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
