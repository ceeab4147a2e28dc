//! Access control, abuse protection and the audit trail, against the real binary, a real
//! SMTP server and a real SQLite file: `[access]` policy and rules at `/verify`, groups,
//! enumeration-neutral answers, `[limits]` at their configured numbers and windows, the
//! limiter's memory under 100k distinct keys, and what the audit table records.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::Method;

const ACCESS: &str = r#"
[access]
allowed_domains = ["acme.test"]
allowed_emails = ["bobb@ctr1.test"]

[access.groups]
admins = ["alic@acme.test"]

[[access.rules]]
host = "app.acme.test"
paths = ["/public/", "/healthz"]
policy = "bypass"

[[access.rules]]
host = "admin.acme.test"
groups = ["admins"]

[[access.rules]]
host = "*.acme.test"
paths = ["/closed/"]
policy = "deny"

[[access.rules]]
host = "hr.acme.test"
emails = ["bobb@ctr1.test"]
domains = ["hr.acme.test"]

[[access.rules]]
host = "[::1]"
policy = "deny"
"#;

fn config(smtp: &Smtp, sections: &str) -> String {
    test_config(
        smtp.port,
        "",
        &format!("[cookie]\ndomain = \"test.localhost\"\n{sections}"),
    )
}

/// Sign `email` in with a fresh browser; returns the cookie header value.
async fn sign_in(ab: &Authbase, smtp: &Smtp, email: &str) -> String {
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, smtp, email).await;
    let r = b.get(&mail.link_path()).await;
    assert_eq!(r.status, 303, "{}", r.body);
    format!("session_id={}", b.session().unwrap())
}

async fn verify(ab: &Authbase, url: &str, cookie: Option<&str>) -> Resp {
    let mut h = vec![
        ("x-original-url", url),
        ("accept", "text/html"),
        ("user-agent", "Mozilla/5.0 Firefox/128.0"),
    ];
    if let Some(c) = cookie {
        h.push(("cookie", c));
    }
    send(&ab.addr, Method::GET, "/verify", &h, Bytes::new()).await
}

/// `(event, email, detail)` of every audit row, oldest first.
fn audit_rows(ab: &Authbase) -> Vec<(String, String, String, String, String)> {
    let text = |v: &SqlValue| match v {
        SqlValue::Text(t) => t.clone(),
        other => panic!("not text: {other:?}"),
    };
    ab.sql("SELECT event, email, detail, ip, user_agent FROM audit ORDER BY id")
        .iter()
        .map(|r| {
            (
                text(&r[0]),
                text(&r[1]),
                text(&r[2]),
                text(&r[3]),
                text(&r[4]),
            )
        })
        .collect()
}

/// Audit rows are written once a second; wait (bounded) until `pred` holds.
async fn wait_audit(
    ab: &Authbase,
    what: &str,
    pred: impl Fn(&[(String, String, String, String, String)]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if pred(&audit_rows(ab)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("audit never showed {what}: {:#?}", audit_rows(ab));
}

/// The waiting browser's page (or its JSON status).
async fn wait_page(b: &mut Browser, json: bool) -> Resp {
    if json {
        b.get_json("/auth").await
    } else {
        b.get("/auth").await
    }
}

/// A response with everything that must differ between two sign-in requests masked:
/// the address (same length in these tests), the random match number, the cookie value
/// and the date.
fn masked(r: &Resp, email: &str) -> String {
    let mut out = format!("{}\n", r.status);
    let mut names: Vec<_> = r.headers.keys().map(|k| k.as_str().to_string()).collect();
    names.sort();
    names.dedup();
    for n in names {
        for v in r.headers.get_all(&n) {
            let v = v.to_str().unwrap();
            let v = match n.as_str() {
                "date" => "DATE".to_string(),
                "set-cookie" => {
                    let (name, rest) = v.split_once('=').unwrap();
                    let attrs = rest.split_once(';').map(|x| x.1).unwrap_or("");
                    format!("{name}=VALUE;{attrs}")
                }
                _ => v.to_string(),
            };
            out.push_str(&format!("{n}: {v}\n"));
        }
    }
    let mut body = r.body.replace(email, "EMAIL");
    if let Ok(mut j) = serde_json::from_str::<serde_json::Value>(&body) {
        if j.get("match_number").is_some() {
            j["match_number"] = "NN".into();
        }
        body = j.to_string();
    } else if body.contains("data-match-number") {
        // Only where the number is shown: it may equal other numbers on the page
        // (e.g. the code field's maxlength="12").
        let n = r.match_number();
        body = body
            .replace(
                &format!("data-match-number=\"{n}\""),
                "data-match-number=\"NN\"",
            )
            .replace(&format!(">{n}</p>"), ">NN</p>");
    }
    out + &body
}

#[tokio::test]
async fn only_allowed_addresses_get_mail_and_every_answer_looks_the_same() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&config(&smtp, ACCESS));
    assert!(
        !ab.logs().contains("open sign-up"),
        "a closed policy is not announced as open"
    );
    // Same-length addresses: new allowed, allowed by address, known (signed up before),
    // not allowed, blocked.
    let known = "kno1@acme.test";
    sign_in(&ab, &smtp, known).await;
    let blocked = "blk1@acme.test";
    sign_in(&ab, &smtp, blocked).await;
    ab.sql(&format!(
        "UPDATE users SET blocked = 1 WHERE email = '{blocked}'"
    ));
    let sent_before = smtp.messages().len();
    let mut expected = sent_before;
    let cases = [
        ("new1@acme.test", true),
        ("bobb@ctr1.test", true),
        (known, true),
        ("eve1@evil.test", false),
        ("eve2@ctr1.test", false),
        (blocked, false),
    ];
    for json in [false, true] {
        let mut reference: Option<String> = None;
        let mut waiting_ref: Option<String> = None;
        let mut later_ref: Option<String> = None;
        for (email, allowed) in cases {
            let mut b = ab.browser();
            let r = if json {
                b.request(
                    Method::POST,
                    "/auth",
                    &[
                        ("content-type", "application/json"),
                        ("accept", "application/json"),
                    ],
                    format!("{{\"email\":\"{email}\"}}"),
                )
                .await
            } else {
                b.post_form("/auth", &[("email", email)]).await
            };
            assert_eq!(r.status, 200, "{email}: {}", r.body);
            if allowed {
                // Before the wrong codes below cancel the request (and its mail).
                expected += 1;
                smtp.wait_for(expected).await;
            }
            let m = masked(&r, email);
            match &reference {
                None => reference = Some(m),
                Some(want) => assert_eq!(&m, want, "POST /auth for {email} differs"),
            }
            // The waiting page (and its JSON status) looks the same too.
            let w = wait_page(&mut b, json).await;
            assert_eq!(w.status, 200, "{email}: {}", w.body);
            let m = masked(&w, email);
            match &waiting_ref {
                None => waiting_ref = Some(m),
                Some(want) => assert_eq!(&m, want, "GET /auth for {email} differs"),
            }
            // What follows looks the same too: wrong codes (the fifth cancels the
            // request), its status, then after signing out, no sign-in in progress.
            let mut later = String::new();
            for _ in 0..6 {
                let r = if json {
                    b.request(
                        Method::POST,
                        "/auth/code",
                        &[
                            ("content-type", "application/json"),
                            ("accept", "application/json"),
                        ],
                        "{\"code\":\"000000\"}",
                    )
                    .await
                } else {
                    b.post_form("/auth/code", &[("code", "000000")]).await
                };
                later += &masked(&r, email);
            }
            let w = wait_page(&mut b, json).await;
            later += &masked(&w, email);
            b.origin = Some("http://auth.test.localhost".into());
            let r = b.post_form("/sign_out", &[]).await;
            later += &masked(&r, email);
            let w = wait_page(&mut b, json).await;
            later += &masked(&w, email);
            assert!(later.contains("410 Gone"), "{later}");
            match &later_ref {
                None => later_ref = Some(later),
                Some(want) => assert_eq!(&later, want, "codes / sign-out for {email} differ"),
            }
        }
    }
    // Mail for the three allowed addresses, twice (form and JSON); none for the others.
    let mails = smtp.wait_for(sent_before + 6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mails_after = smtp.messages();
    assert_eq!(
        mails_after.len(),
        sent_before + 6,
        "{} mails",
        mails_after.len()
    );
    let to: Vec<String> = mails[sent_before..]
        .iter()
        .map(|m| m.header("To").unwrap_or_default())
        .collect();
    for (email, allowed) in cases {
        assert_eq!(
            to.iter().filter(|t| t.contains(email)).count(),
            if allowed { 2 } else { 0 },
            "{email}: {to:?}"
        );
    }
    // A refused address's request is stored silent: no mail queued, never signs in.
    // (substr, not LIKE: PostgreSQL has no LIKE on a case-insensitive collation)
    let row = ab.sql(
        "SELECT COUNT(*), (SELECT COUNT(*) FROM outbox o JOIN sign_in_requests r ON r.id = o.request_id
                            JOIN users u ON u.id = r.user_id WHERE substr(u.email, 1, 3) = 'eve')
           FROM sign_in_requests r JOIN users u ON u.id = r.user_id
          WHERE r.silent = 1 AND (substr(u.email, 1, 3) = 'eve' OR u.email = 'blk1@acme.test')",
    );
    let (silent, queued) = (row[0][0].int(), row[0][1].int());
    assert_eq!((silent, queued), (6, 0));
    // Audit rows are written once a second.
    wait_audit(&ab, "six sign_in_refused", |rows| {
        rows.iter().filter(|r| r.0 == "sign_in_refused").count() >= 6
    })
    .await;
    let rows = audit_rows(&ab);
    let refused: Vec<_> = rows.iter().filter(|r| r.0 == "sign_in_refused").collect();
    assert_eq!(refused.len(), 6, "{rows:#?}");
    assert!(refused
        .iter()
        .any(|r| r.1 == "eve1@evil.test" && r.2 == "not allowed"));
    assert!(refused.iter().any(|r| r.1 == blocked && r.2 == "blocked"));
    assert!(refused
        .iter()
        .all(|r| r.3 == "127.0.0.1" && r.4.contains("Firefox")));
    assert!(ab.logs().contains("sign_in_refused"), "and in the log");

    // Even the right code (derived like any request's) never signs a refused address in.
    let mut b = ab.browser();
    b.post_form("/auth", &[("email", "eve3@evil.test")]).await;
    let salt: Vec<u8> = ab.sql(
        "SELECT r.salt FROM sign_in_requests r JOIN users u ON u.id = r.user_id
          WHERE u.email = 'eve3@evil.test'",
    )[0][0]
        .blob();
    let key =
        authbase::secrets::ServerKey::load_or_create(&ab.dir.path().join("authbase.key")).unwrap();
    let r = b
        .post_form("/auth/code", &[("code", &key.code(&salt))])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("That code is not right"), "{}", r.body);
    assert_eq!(b.me().await.status, 401);
}

#[tokio::test]
async fn open_sign_up_is_announced_loudly() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&config(&smtp, ""));
    let logs = ab.logs();
    assert!(
        logs.contains("WARN") && logs.contains("ANYONE with an email address can sign in"),
        "{logs}"
    );
}

#[tokio::test]
async fn rules_decide_per_host_and_path_first_match_wins() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&config(&smtp, ACCESS));
    let alice = sign_in(&ab, &smtp, "alic@acme.test").await;
    let bob = sign_in(&ab, &smtp, "bobb@ctr1.test").await;
    ab.sql(
        "INSERT INTO user_groups (user_id, name) SELECT id, 'ops' FROM users WHERE email = 'bobb@ctr1.test'",
    );
    // (url, cookie, status) — None: not signed in.
    let cases: &[(&str, Option<&str>, u16)] = &[
        // Bypass: public without a session, also for signed-in users; only its paths.
        ("http://app.acme.test/public/x.css", None, 200),
        ("http://app.acme.test/healthz", None, 200),
        ("http://APP.acme.test/public/x", None, 200),
        ("http://app.acme.test/", None, 401),
        ("http://app.acme.test/public", None, 200),
        ("http://app.acme.test/publicity", None, 401),
        ("http://app.acme.test/public/../admin", None, 401),
        ("http://app.acme.test/public/%2e%2e/admin", None, 401),
        ("http://app.acme.test/public%2F..%2Fadmin", None, 401),
        ("http://app.acme.test/public%23/x", None, 401),
        ("http://app.acme.test/admin?x=/public/", None, 401),
        ("http://app.acme.test/public/;/../admin", None, 401),
        ("http://app.acme.test/", Some(&alice), 200),
        ("http://app.acme.test/", Some(&bob), 200),
        // Group rule: admins only.
        ("http://admin.acme.test/", Some(&alice), 200),
        ("http://admin.acme.test/", Some(&bob), 403),
        ("http://admin.acme.test/", None, 401),
        // Wildcard deny on a path, for everyone, in every spelling; not the apex.
        ("http://x.acme.test/closed/a", Some(&alice), 403),
        ("http://x.y.acme.test/closed/", None, 403),
        // A path starting `//` is refused outright by the forwarded-header parser.
        ("http://x.acme.test//closed/a", Some(&alice), 400),
        (
            "http://x.acme.test/x//closed/../closed/a",
            Some(&alice),
            200,
        ),
        ("http://x.acme.test/x/..//closed/a", Some(&alice), 403),
        ("http://x.acme.test/%63losed/a", Some(&alice), 403),
        ("http://x.acme.test/open/../closed/a", Some(&alice), 403),
        ("http://x.acme.test/other", Some(&alice), 200),
        // Restricting rules also match what a lenient backend would read.
        ("http://x.acme.test/x/..;/closed/a", Some(&alice), 403),
        ("http://x.acme.test/closed%2Fa", Some(&alice), 403),
        ("http://x.acme.test/%2Fclosed/a", Some(&alice), 403),
        ("http://x.acme.test/CLOSED/a", Some(&alice), 403),
        ("http://x.acme.test/closed", Some(&alice), 403),
        ("http://x.acme.test/closedx", Some(&alice), 200),
        // IPv6 literals in any spelling.
        ("http://[::1]/", Some(&alice), 403),
        ("http://[0::1]/", Some(&alice), 403),
        ("http://[0:0:0:0:0:0:0:1]/", None, 403),
        ("http://acme.test/closed/a", Some(&alice), 200),
        // Earlier rules win: the wildcard deny comes before hr's own rule.
        ("http://hr.acme.test/closed/", Some(&bob), 403),
        // Emails/domains rule: bob by address; alice's domain is not hr.acme.test.
        ("http://hr.acme.test/", Some(&bob), 200),
        ("http://hr.acme.test/", Some(&alice), 403),
        // No rule: any signed-in user the global policy admits.
        ("http://other.example.test/", Some(&bob), 200),
    ];
    for (url, cookie, want) in cases {
        let r = verify(&ab, url, *cookie).await;
        assert_eq!(r.status.as_u16(), *want, "{url} as {cookie:?}: {}", r.body);
        if r.status != 200 {
            assert!(r.header("x-user-id").is_none() && r.header("x-user-email").is_none());
        }
        if r.status == 200 && cookie.is_none() {
            assert!(
                r.header("x-user-id").is_none(),
                "bypass carries no identity"
            );
        }
    }
    // Groups: config and database, sorted; absent when none.
    let r = verify(&ab, "http://admin.acme.test/", Some(&alice)).await;
    assert_eq!(r.header("x-user-groups"), Some("admins"));
    let r = verify(&ab, "http://hr.acme.test/", Some(&bob)).await;
    assert_eq!(r.header("x-user-groups"), Some("ops"));
    assert_eq!(r.header("x-user-email"), Some("bobb@ctr1.test"));
    let carol = sign_in(&ab, &smtp, "caro@acme.test").await;
    let r = verify(&ab, "http://other.example.test/", Some(&carol)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-user-groups").is_none());

    // The 403 page says who is signed in and where to go; JSON for scripts.
    let r = verify(&ab, "http://admin.acme.test/x", Some(&bob)).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("No access to admin.acme.test"),
        "{}",
        r.body
    );
    assert!(r.body.contains("bobb@ctr1.test"), "{}", r.body);
    assert!(
        r.body
            .contains("href=\"http://auth.test.localhost/static/style.css?v="),
        "links are absolute (the page is shown on the app's host): {}",
        r.body
    );
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("style-src http://auth.test.localhost"),
        "{csp}"
    );
    let r = send(
        &ab.addr,
        Method::GET,
        "/verify/redirect",
        &[
            ("x-original-url", "http://admin.acme.test/api"),
            ("accept", "application/json"),
            ("cookie", &bob),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    let r = verify(&ab, "http://x.acme.test/closed/", None).await;
    assert!(r.body.contains("Nobody may open this page"), "{}", r.body);

    // Denials are audited, once a minute per user and host however often they repeat.
    wait_audit(&ab, "access_denied", |rows| {
        rows.iter()
            .any(|r| r.0 == "access_denied" && r.1 == "bobb@ctr1.test")
    })
    .await;
    let n = audit_rows(&ab)
        .iter()
        .filter(|r| {
            r.0 == "access_denied" && r.1 == "bobb@ctr1.test" && r.2.starts_with("admin.acme.test")
        })
        .count();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_user_outside_the_policy_is_refused_even_with_a_session() {
    // Signed in while open; the policy then closes (restart with a new config).
    let smtp = Smtp::start();
    let ab = Authbase::start(&config(&smtp, ""));
    let cookie = sign_in(&ab, &smtp, "olde@oldcorp.test").await;
    assert_eq!(
        verify(&ab, "http://app.x.test/", Some(&cookie))
            .await
            .status,
        200
    );
    let mut ab = ab;
    ab.config = config(&smtp, "[access]\nallowed_domains = [\"acme.test\"]\n");
    let ab = ab.restart();
    let r = verify(&ab, "http://app.x.test/", Some(&cookie)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = send(
        &ab.addr,
        Method::GET,
        "/me",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // An admin adds (invites) the user: admitted at the very next request, whatever
    // the domain policy says (the running server acknowledged the change).
    let out = ab.cli(&["users", "add", "olde@oldcorp.test"]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("1 running server applied it"), "{out:?}");
    assert_eq!(
        verify(&ab, "http://app.x.test/", Some(&cookie))
            .await
            .status,
        200
    );
}

async fn post_auth(ab: &Authbase, email: &str, xff: Option<&str>) -> Resp {
    let body = format!("email={}", email.replace('@', "%40").replace('+', "%2B"));
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(x) = xff {
        h.push(("x-forwarded-for", x));
    }
    send(&ab.addr, Method::POST, "/auth", &h, body).await
}

/// How the 429 page words a wait of `secs` (under 90 s).
fn wait(secs: u64) -> String {
    match secs {
        1 => "Try again in 1 second.".to_string(),
        n => format!("Try again in {n} seconds."),
    }
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn sign_in_limits_trigger_at_their_numbers_and_reset_after_their_windows() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&config(
        &smtp,
        "[access]\nallowed_domains = [\"acme.test\"]\n\
         [limits]\nsign_in_per_address = \"2/8s\"\nsign_in_address_gap = \"1s\"\n\
         sign_in_per_ip = \"off\"\nsign_in_global = \"off\"\n",
    ));
    // Per address, with a minimum gap. The window (8 s) leaves the checks in it seconds
    // to spare on a loaded machine; it starts no later than `opened`.
    assert_eq!(post_auth(&ab, "pera@acme.test", None).await.status, 200);
    let opened = tokio::time::Instant::now();
    let r = post_auth(&ab, "pera@acme.test", None).await;
    assert_eq!(r.status, 429, "the gap: {}", r.body);
    assert_eq!(retry_after(&r), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post_auth(&ab, "pera@acme.test", None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post_auth(&ab, "pera@acme.test", None).await;
    assert_eq!(r.status, 429, "the third in the window: {}", r.body);
    assert!((1..=6).contains(&retry_after(&r)), "{}", retry_after(&r));
    assert!(r.body.contains("Too many requests"), "{}", r.body);
    // Same for an unknown, a disallowed and a differently-spelt address: the 429 page
    // does not tell them apart.
    for e in ["perb@acme.test", "perc@other.test"] {
        assert_eq!(post_auth(&ab, e, None).await.status, 200);
        let r2 = post_auth(&ab, e, None).await;
        assert_eq!(r2.status, 429);
        assert!(r2.body.contains(&wait(retry_after(&r2))), "{}", r2.body);
        assert_eq!(
            r2.body,
            r.body
                .replace("pera@acme.test", e)
                .replace(&wait(retry_after(&r)), &wait(retry_after(&r2)))
        );
    }
    assert_eq!(post_auth(&ab, "PERA@acme.test", None).await.status, 429);
    assert_eq!(
        post_auth(&ab, "pera+x@acme.test", None).await.status,
        429,
        "plus-tags share the allowance"
    );
    // After the window: allowed again.
    tokio::time::sleep_until(opened + Duration::from_millis(8100)).await;
    assert_eq!(post_auth(&ab, "pera@acme.test", None).await.status, 200);
    // JSON clients get the same limit as JSON.
    let json = send(
        &ab.addr,
        Method::POST,
        "/auth",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        "{\"email\":\"pera@acme.test\"}",
    )
    .await;
    assert_eq!(json.status, 429);
    assert_eq!(json.json()["error"], "rate_limited");
    assert!(json.json()["retry_after"].as_u64().unwrap() >= 1);
    // Three mails for pera (two, then one after the reset), one for perb, none for perc.
    smtp.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let to: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| m.header("To").unwrap_or_default())
        .collect();
    assert_eq!(
        to.iter().filter(|t| t.contains("pera@")).count(),
        3,
        "{to:?}"
    );
    assert_eq!(to.len(), 4, "{to:?}");
    // Rate limiting is audited (once a minute per limit, client and address).
    wait_audit(&ab, "rate_limited", |rows| {
        rows.iter()
            .any(|r| r.0 == "rate_limited" && r.2 == "sign_in_per_address")
    })
    .await;
}

#[tokio::test]
async fn per_ip_limit_believes_forwarded_for_only_from_trusted_proxies() {
    let smtp = Smtp::start();
    let limits = "[limits]\nsign_in_per_address = \"off\"\nsign_in_address_gap = \"0\"\n\
                  sign_in_per_ip = \"3/2s\"\nsign_in_global = \"off\"\n";
    let trusting = Authbase::start(&test_config(
        smtp.port,
        "trusted_proxies = [\"127.0.0.1\"]\n",
        limits,
    ));
    for i in 0..3 {
        let r = post_auth(&trusting, &format!("ip{i}@acme.test"), Some("198.51.100.1")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = post_auth(&trusting, "ip9@acme.test", Some("198.51.100.1")).await;
    assert_eq!(r.status, 429);
    assert!((1..=2).contains(&retry_after(&r)), "{}", retry_after(&r));
    // Another client behind the same proxy is not affected.
    assert_eq!(
        post_auth(&trusting, "ip9@acme.test", Some("198.51.100.2"))
            .await
            .status,
        200
    );
    // IPv6 clients are counted per /64.
    for i in 0..3 {
        let ip = format!("2001:db8:1:2::{i}");
        assert_eq!(
            post_auth(&trusting, "six@acme.test", Some(&ip))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        post_auth(&trusting, "six@acme.test", Some("2001:db8:1:2:ffff::1"))
            .await
            .status,
        429
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        post_auth(&trusting, "ip9@acme.test", Some("198.51.100.1"))
            .await
            .status,
        200
    );

    // Without trusted proxies, X-Forwarded-For is the client's own claim: ignored.
    let direct = Authbase::start(&test_config(smtp.port, "", limits));
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        assert_eq!(
            post_auth(&direct, &format!("d{i}@acme.test"), Some(&xff))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        post_auth(&direct, "d9@acme.test", Some("203.0.113.99"))
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn global_ceiling_bounds_the_mail_sent() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "trusted_proxies = [\"127.0.0.1\"]\n",
        "[limits]\nsign_in_per_address = \"off\"\nsign_in_address_gap = \"0\"\n\
         sign_in_per_ip = \"off\"\nsign_in_global = \"4/2s\"\n",
    ));
    for i in 0..4 {
        let ip = format!("198.51.100.{i}");
        assert_eq!(
            post_auth(&ab, &format!("g{i}@acme.test"), Some(&ip))
                .await
                .status,
            200
        );
    }
    let r = post_auth(&ab, "g9@acme.test", Some("198.51.100.9")).await;
    assert_eq!(r.status, 429);
    smtp.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        post_auth(&ab, "g9@acme.test", Some("198.51.100.9"))
            .await
            .status,
        200
    );
    smtp.wait_for(5).await;
    assert_eq!(smtp.messages().len(), 5);
}

#[tokio::test]
async fn code_and_unknown_link_attempts_are_limited_per_ip() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "",
        "[limits]\nsign_in_per_address = \"off\"\nsign_in_address_gap = \"0\"\n\
         sign_in_per_ip = \"off\"\nsign_in_global = \"off\"\n\
         codes_per_ip = \"3/2s\"\nunknown_links_per_ip = \"3/2s\"\n",
    ));
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "code@acme.test").await;
    for _ in 0..3 {
        let r = b.post_form("/auth/code", &[("code", "000000")]).await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
    // The fourth is refused before it is checked, even the right code.
    let r = b.post_form("/auth/code", &[("code", &mail.code())]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = b.post_form("/auth/code", &[("code", &mail.code())]).await;
    assert_eq!(
        r.status, 303,
        "after the window the right code works: {}",
        r.body
    );

    // Unknown links: three, then even a valid link is refused until the window ends.
    let mut c = ab.browser();
    let (_, mail) = request_link(&mut c, &smtp, "link@acme.test").await;
    let mut other = ab.browser();
    for i in 0..3 {
        let fake = format!("/sign_in/{}", "A".repeat(42) + &i.to_string());
        assert_eq!(other.get(&fake).await.status, 404);
    }
    assert_eq!(other.get("/sign_in/short").await.status, 429);
    assert_eq!(c.get(&mail.link_path()).await.status, 429);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(c.get(&mail.link_path()).await.status, 303);
}

/// VmRSS of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Pipelined requests on one connection: write them all, count the responses.
async fn pipeline(addr: &str, requests: Vec<String>) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = requests.len();
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for chunk in requests.chunks(256) {
            wr.write_all(chunk.concat().as_bytes()).await.unwrap();
        }
        wr
    });
    // Count status lines as they stream by, keeping a short tail for split matches.
    const PAT: &[u8] = b"HTTP/1.1 4";
    let mut seen = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut window: Vec<u8> = Vec::new();
    while seen < n {
        let k = tokio::time::timeout(WAIT, rd.read(&mut buf))
            .await
            .expect("responses")
            .unwrap();
        assert!(k > 0, "connection closed after {seen} responses");
        window.extend_from_slice(&buf[..k]);
        seen += window.windows(PAT.len()).filter(|w| *w == PAT).count();
        let keep = window.len().saturating_sub(PAT.len() - 1);
        window.drain(..keep);
    }
    drop(writer.await.unwrap());
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_memory_stays_bounded_under_100k_distinct_keys() {
    let smtp = Smtp::start();
    let ab = Authbase::start_quiet(&test_config(
        smtp.port,
        "trusted_proxies = [\"127.0.0.1\"]\n",
        "[limits]\nunknown_links_per_ip = \"3/1h\"\ntracked_keys = 5000\n",
    ));
    let pid = ab.pid();
    // Warm up allocations with a first, smaller flood, then measure a big one.
    let flood = |from: u32, n: u32| {
        let addr = ab.addr.clone();
        async move {
            let per = n / 4;
            let mut tasks = Vec::new();
            for t in 0..4u32 {
                let reqs: Vec<String> = (0..per)
                    .map(|i| {
                        let k = from + t * per + i;
                        format!(
                            "GET /sign_in/x HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 10.{}.{}.{}\r\n\r\n",
                            (k >> 16) & 255,
                            (k >> 8) & 255,
                            k & 255
                        )
                    })
                    .collect();
                let addr = addr.clone();
                tasks.push(tokio::spawn(async move { pipeline(&addr, reqs).await }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        }
    };
    // Two small floods first (the limiters hold 5000 keys), so the allocator, SQLite's page cache (the flood also writes
    // audit rows) and the limiters' tables reach their steady size; then a third flood of
    // 100k new keys must not grow the process. Unbounded, the two limiters it fills
    // (unknown links per IP, audit once-a-minute keys) would add about 10 MB per flood.
    assert_eq!(flood(0, 20_000).await, 20_000);
    assert_eq!(flood(200_000, 20_000).await, 20_000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = rss_kb(pid);
    assert_eq!(flood(400_000, 100_000).await, 100_000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = rss_kb(pid);
    eprintln!("RSS after 40k distinct keys {before} kB, after 100k more {after} kB");
    assert!(
        after < before + 2 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    // And the limiter still limits.
    let mut b = ab.browser();
    for _ in 0..3 {
        assert_eq!(b.get("/sign_in/y").await.status, 404);
    }
    assert_eq!(b.get("/sign_in/y").await.status, 429);
}

#[tokio::test]
async fn the_audit_trail_records_a_whole_flow() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&config(&smtp, ACCESS));
    let mut b = ab.browser();
    b.origin = Some("http://auth.test.localhost".into());
    let (_, mail) = request_link(&mut b, &smtp, "flow@acme.test").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    assert_eq!(b.get(&mail.link_path()).await.status, 410, "used twice");
    let cookie = format!("session_id={}", b.session().unwrap());
    assert_eq!(
        verify(&ab, "http://admin.acme.test/", Some(&cookie))
            .await
            .status,
        403
    );
    assert_eq!(b.post_form("/sign_out", &[]).await.status, 200);
    wait_audit(&ab, "the whole flow", |rows| {
        let events: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        [
            "sign_in_requested",
            "sign_in_confirmed",
            "confirm_refused",
            "access_denied",
            "signed_out",
        ]
        .iter()
        .all(|e| events.contains(e))
    })
    .await;
    let rows = audit_rows(&ab);
    for r in &rows {
        assert_eq!(r.3, "127.0.0.1", "{r:?}");
        if r.0 != "confirm_refused" {
            assert_eq!(r.1, "flow@acme.test", "{r:?}");
        }
        assert!(r.4.contains("Firefox"), "{r:?}");
    }
    let confirmed = rows.iter().find(|r| r.0 == "sign_in_confirmed").unwrap();
    assert_eq!(confirmed.2, "link");
    let refused = rows.iter().find(|r| r.0 == "confirm_refused").unwrap();
    assert_eq!(refused.2, "link: used");
    // No secret in the audit table.
    let secret = mail.link_path().trim_start_matches("/sign_in/").to_string();
    let all = format!("{rows:?}");
    assert!(!all.contains(&secret) && !all.contains(&mail.code()));
}
