//! `/verify` and `/verify/redirect` called directly, as a proxy would.

mod common;

use bytes::Bytes;
use common::*;
use hyper::Method;

async fn signed_in() -> (Smtp, Authbase, String) {
    signed_in_with("").await
}

/// `signed_in`, with more config sections.
async fn signed_in_with(sections: &str) -> (Smtp, Authbase, String) {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "",
        &format!("[cookie]\ndomain = \"test.localhost\"\n{sections}"),
    ));
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "vera@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    let cookie = format!("session_id={}", b.session().unwrap());
    (smtp, ab, cookie)
}

async fn verify(ab: &Authbase, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(&ab.addr, Method::GET, path, headers, Bytes::new()).await
}

#[tokio::test]
async fn signed_in_gets_200_with_identity_once_and_no_body() {
    let (_smtp, ab, cookie) = signed_in().await;
    for path in ["/verify", "/verify/redirect"] {
        let r = verify(
            &ab,
            path,
            &[
                ("cookie", &cookie),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.test.localhost"),
                ("x-forwarded-uri", "/x"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.headers.get_all("x-user-email").iter().count(), 1);
        assert_eq!(r.headers.get_all("x-user-id").iter().count(), 1);
        assert_eq!(r.header("x-user-email"), Some("vera@example.com"));
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("0"));
        // nginx style
        let r = verify(
            &ab,
            path,
            &[
                ("cookie", &cookie),
                ("x-original-url", "https://app.test.localhost/x?y=1"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn not_signed_in_per_style() {
    let (_smtp, ab, _) = signed_in().await;
    let fwd = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.test.localhost"),
        ("x-forwarded-uri", "/a/b?c=1&d=2"),
        ("x-forwarded-method", "GET"),
    ];
    let want =
        "http://auth.test.localhost/?rd=https%3A%2F%2Fapp.test.localhost%2Fa%2Fb%3Fc%3D1%26d%3D2";
    // nginx style: 401 + X-Auth-Redirect for pages.
    let r = verify(&ab, "/verify", &fwd).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-auth-redirect"), Some(want));
    assert!(r.header("x-user-email").is_none());
    // ...and no redirect URL for API calls.
    let mut api = fwd.to_vec();
    api.push(("accept", "application/json"));
    let r = verify(&ab, "/verify", &api).await;
    assert_eq!(r.status, 401);
    assert!(r.header("x-auth-redirect").is_none());
    // Traefik/Caddy style: 302 for pages, 401 for APIs.
    let r = verify(&ab, "/verify/redirect", &fwd).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(want));
    let r = verify(&ab, "/verify/redirect", &api).await;
    assert_eq!(r.status, 401);
    let mut post = fwd.to_vec();
    post[3] = ("x-forwarded-method", "POST");
    assert_eq!(verify(&ab, "/verify/redirect", &post).await.status, 401);
    let mut xhr = fwd.to_vec();
    xhr.push(("x-requested-with", "XMLHttpRequest"));
    assert_eq!(verify(&ab, "/verify/redirect", &xhr).await.status, 401);
    // A pending (unconfirmed) session is not signed in.
    let mut b = ab.browser();
    b.post_form("/auth", &[("email", "vera@example.com")]).await;
    let pending = format!("session_id={}", b.session().unwrap());
    let mut h = fwd.to_vec();
    h.push(("cookie", &pending));
    assert_eq!(verify(&ab, "/verify", &h).await.status, 401);
    // The link base comes from public_url, never from Host.
    let mut h = fwd.to_vec();
    h.push(("host", "evil.example.org"));
    assert_eq!(
        verify(&ab, "/verify/redirect", &h).await.header("location"),
        Some(want)
    );
}

/// A header spelled like an identity header with other separators (`X.User.Email`,
/// `X_User_Id`) may reach a PHP, WSGI or Rack app as the real one, and Caddy passes such
/// names on: `/verify` refuses the request (400, naming the header it imitates). The
/// right spelling is not refused: the proxy replaces it with authbase's value.
#[tokio::test]
async fn aliases_of_the_identity_headers_are_refused_with_400() {
    let (_smtp, ab, cookie) = signed_in().await;
    let base = [
        ("cookie", cookie.as_str()),
        ("x-forwarded-host", "app.test.localhost"),
    ];
    for (alias, imitated) in [
        ("x.user.email", "X-User-Email"),
        ("x_user_id", "X-User-Id"),
        ("x~user~assertion", "X-User-Assertion"),
        ("x!user-groups", "X-User-Groups"),
    ] {
        for path in ["/verify", "/verify/redirect"] {
            let mut h = base.to_vec();
            h.push((alias, "forged"));
            let r = verify(&ab, path, &h).await;
            assert_eq!(r.status, 400, "{path} {alias}: {}", r.body);
            assert!(r.body.contains(imitated), "{path} {alias}: {}", r.body);
            assert!(r.header("x-user-email").is_none() && r.header("x-user-id").is_none());
        }
    }
    let mut h = base.to_vec();
    h.push(("x-user-email", "forged@evil.example"));
    let r = verify(&ab, "/verify", &h).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-user-email"), Some("vera@example.com"));
}

#[tokio::test]
async fn malformed_or_conflicting_forwarded_headers_never_yield_2xx() {
    let (_smtp, ab, cookie) = signed_in().await;
    let c = cookie.as_str();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("cookie", c)],
        vec![("cookie", c), ("x-original-url", "not a url")],
        vec![("cookie", c), ("x-original-url", "/relative/only")],
        vec![("cookie", c), ("x-original-url", "javascript:alert(1)")],
        vec![
            ("cookie", c),
            ("x-original-url", "https://user:pw@app.test.localhost/"),
        ],
        vec![("cookie", c), ("x-forwarded-host", "")],
        vec![
            ("cookie", c),
            ("x-forwarded-host", "app.test.localhost"),
            ("x-forwarded-uri", "no-slash"),
        ],
        vec![
            ("cookie", c),
            ("x-forwarded-host", "app.test.localhost"),
            ("x-forwarded-uri", "//evil.example.org/"),
        ],
        vec![
            ("cookie", c),
            ("x-forwarded-host", "app.test.localhost"),
            ("x-forwarded-proto", "gopher"),
        ],
        vec![
            ("cookie", c),
            ("x-forwarded-host", "evil.example.org/@app.test.localhost"),
        ],
        vec![
            ("cookie", c),
            ("x-forwarded-host", "a.test.localhost"),
            ("x-forwarded-host", "b.test.localhost"),
        ],
        vec![
            ("cookie", c),
            ("x-original-url", "https://a.test.localhost/"),
            ("x-forwarded-host", "b.test.localhost"),
        ],
        vec![
            ("cookie", c),
            ("x-original-url", "https://a.test.localhost/public"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.test.localhost"),
            ("x-forwarded-uri", "/admin"),
        ],
        vec![
            ("cookie", c),
            ("x-original-url", "https://a.test.localhost/"),
            ("x-original-method", "GET"),
            ("x-forwarded-method", "DELETE"),
        ],
    ];
    for case in &cases {
        for path in ["/verify", "/verify/redirect"] {
            let r = verify(&ab, path, case).await;
            assert!(!r.status.is_success(), "{path} {case:?} -> {}", r.status);
            assert!(r.header("x-user-email").is_none() && r.header("x-user-id").is_none());
        }
    }
    // Bytes a client library would refuse to send: NUL and high bytes, over a raw socket.
    for bad in [
        "X-Forwarded-Host: app.test.localhost\0x",
        "X-Original-URL: https://app.test.localhost/\u{ff}",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
        let req = format!(
            "GET /verify HTTP/1.1\r\nHost: x\r\nCookie: {c}\r\n{bad}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&out);
        assert!(!head.starts_with("HTTP/1.1 2"), "{bad:?}: {head}");
        assert!(!head.to_ascii_lowercase().contains("x-user-email"));
    }
}

#[tokio::test]
async fn mixed_case_hosts_get_the_same_decision() {
    let (_smtp, ab, cookie) = signed_in().await;
    for host in [
        "app.test.localhost",
        "APP.Test.LOCALHOST",
        "App.test.localhost.",
    ] {
        let r = verify(
            &ab,
            "/verify",
            &[("cookie", &cookie), ("x-forwarded-host", host)],
        )
        .await;
        assert_eq!(r.status, 200, "{host}");
        let r = verify(&ab, "/verify/redirect", &[("x-forwarded-host", host)]).await;
        assert_eq!(r.status, 302, "{host}");
        assert!(
            r.header("location").unwrap().contains("app.test.localhost"),
            "{host}"
        );
    }
    // Health-check user agents get no special pass.
    let r = verify(
        &ab,
        "/verify",
        &[
            ("x-forwarded-host", "app.test.localhost"),
            ("user-agent", "kube-probe/1.30"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    // /verify reads no body and takes no POST.
    let r = send(
        &ab.addr,
        Method::POST,
        "/verify",
        &[("x-forwarded-host", "app.test.localhost")],
        "x",
    )
    .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn sign_out_is_seen_by_verify_on_the_next_request() {
    let (_smtp, ab, cookie) = signed_in().await;
    let h = [
        ("cookie", cookie.as_str()),
        ("x-forwarded-host", "app.test.localhost"),
    ];
    assert_eq!(verify(&ab, "/verify", &h).await.status, 200);
    let r = send(
        &ab.addr,
        Method::POST,
        "/sign_out",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(verify(&ab, "/verify", &h).await.status, 401);
}

fn cli(ab: &Authbase, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary())
        .args(args)
        .current_dir(ab.dir.path())
        .env_remove("AUTHBASE_CONFIG")
        .output()
        .unwrap()
}

/// `authbase sessions list --json`: the rows, and the output as printed.
fn listed_sessions(ab: &Authbase) -> (serde_json::Value, String) {
    let out = cli(ab, &["sessions", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

#[tokio::test]
async fn sessions_revoked_by_the_cli_stop_working_on_the_running_server() {
    let (smtp, ab, cookie) = signed_in().await;
    let h = [
        ("cookie", cookie.as_str()),
        ("x-forwarded-host", "app.test.localhost"),
    ];
    assert_eq!(verify(&ab, "/verify", &h).await.status, 200, "cached now");

    let (rows, text) = listed_sessions(&ab);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["email"], "vera@example.com");
    assert!(!text.contains(&cookie[11..]), "no secret listed");

    let out = cli(&ab, &["sessions", "revoke", "--user", "VERA@example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked 1 session(s) of VERA@example.com")
    );
    // The server follows the revocation log (every 250 ms); wait for it, bounded.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = verify(&ab, "/verify", &h).await;
        if r.status == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {}", r.status);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let me = send(
        &ab.addr,
        Method::GET,
        "/me",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(me.status, 401);

    // --all, and the errors.
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "walt@example.com").await;
    b.get(&mail.link_path()).await;
    let walt = format!("session_id={}", b.session().unwrap());
    let hw = [
        ("cookie", walt.as_str()),
        ("x-forwarded-host", "app.test.localhost"),
    ];
    assert_eq!(verify(&ab, "/verify", &hw).await.status, 200);
    let out = cli(&ab, &["sessions", "revoke", "--all"]);
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + WAIT;
    while verify(&ab, "/verify", &hw).await.status != 401 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = cli(&ab, &["sessions", "revoke", "--user", "nobody@example.com"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user nobody@example.com"));
    let out = cli(&ab, &["sessions", "revoke"]);
    assert!(!out.status.success(), "revoke needs --user or --all");
    let out = cli(&ab, &["sessions", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 session(s)"));
}

/// `sessions revoke --id N` signs out one device: the session with the id `sessions list`
/// shows ends on the running server before the command returns (it waits for the
/// server's acknowledgement), the user's other session goes on, it is audited, and an
/// unknown id is an input error that changes nothing.
#[tokio::test]
async fn one_session_revoked_by_id_ends_before_the_command_returns_and_only_it() {
    let (smtp, ab, first) = signed_in().await;
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "vera@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    let second = format!("session_id={}", b.session().unwrap());
    let h = |c: &str| {
        [
            ("cookie", c.to_string()),
            ("x-forwarded-host", "app.test.localhost".to_string()),
        ]
    };
    let check = |c: String| {
        let ab = &ab;
        async move {
            let h = h(&c);
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            verify(ab, "/verify", &h).await.status
        }
    };
    // Both cached on the server now.
    assert_eq!(check(first.clone()).await, 200);
    assert_eq!(check(second.clone()).await, 200);

    let (rows, _) = listed_sessions(&ab);
    let ids: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{rows}");
    // Newest first: the second browser's session.
    let newest = ids[0].to_string();

    let started = std::time::Instant::now();
    let out = cli(&ab, &["sessions", "revoke", "--id", &newest]);
    // For reading (not asserted): the command waits for the server's acknowledgement.
    eprintln!("sessions revoke --id took {:?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("revoked session {newest} of vera@example.com")),
        "{stdout}"
    );
    assert!(stdout.contains("1 running server applied it"), "{stdout}");
    // The very next request: no waiting.
    assert_eq!(check(second.clone()).await, 401, "the revoked device");
    assert_eq!(check(first.clone()).await, 200, "the other device goes on");

    let out = cli(&ab, &["audit", "--event", "sessions_revoked", "--json"]);
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        audit[0]["detail"],
        format!("1 (session {newest})"),
        "{audit}"
    );
    assert_eq!(audit[0]["email"], "vera@example.com");

    // Again, and an id that never existed: exit 65, nothing changes.
    for id in [newest.as_str(), "999999"] {
        let out = cli(&ab, &["sessions", "revoke", "--id", id]);
        assert_eq!(out.status.code(), Some(65), "{id}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("no session {id}")),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(check(first.clone()).await, 200);
    // One way to choose at a time; none is an error naming all three.
    let out = cli(
        &ab,
        &[
            "sessions",
            "revoke",
            "--id",
            &newest,
            "--user",
            "vera@example.com",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&ab, &["sessions", "revoke"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--user") && err.contains("--all") && err.contains("--id"),
        "{err}"
    );
}

/// A `/verify` whose session is cached is answered on the spot, without a handler future
/// (`server::Answer::Now`; its log line says `hot: true`); one whose session is not cached
/// runs the full handler and reads the database (`hot: false`). After a restart the cache
/// is empty, so the first request takes the second path and the next ones the first: the
/// answers must be the same (the assertion minted by the first is reused), and each
/// request is counted once in `/metrics` and logged once.
#[tokio::test]
async fn cached_and_database_answers_agree_and_are_counted() {
    let (_smtp, ab, cookie) = signed_in_with("[log]\nformat = \"json\"\n").await;
    let ab = ab.restart();
    let h = [
        ("cookie", cookie.as_str()),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.test.localhost"),
        ("x-forwarded-uri", "/x"),
    ];
    let metric = |body: &str, line: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(line))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    };
    let metrics = || async {
        let r = send(&ab.addr, Method::GET, "/metrics", &[], Bytes::new()).await;
        assert_eq!(r.status, 200);
        r.body
    };
    let before = metrics().await;
    assert_eq!(metric(&before, "authbase_sessions_cached "), 0, "{before}");
    // (path, answered on the spot) of every /verify line logged so far, in order.
    let logged = || -> Vec<(String, bool)> {
        ab.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "request")
            .filter(|v| {
                v["fields"]["path"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("/verify")
            })
            .map(|v| {
                let hot = v["fields"]["hot"]
                    .as_bool()
                    .unwrap_or_else(|| panic!("a /verify line without `hot`: {v}"));
                (v["fields"]["path"].as_str().unwrap().to_string(), hot)
            })
            .collect()
    };
    let mut seen = Vec::new();
    for path in [
        "/verify",
        "/verify",
        "/verify",
        "/verify/redirect",
        "/verify/redirect",
    ] {
        let r = verify(&ab, path, &h).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.is_empty(), "{path}");
        let id = |n: &str| r.header(n).map(str::to_string);
        seen.push((
            id("x-user-id"),
            id("x-user-email"),
            id("x-user-assertion"),
            r.headers.len(),
        ));
    }
    assert_eq!(seen[0].1.as_deref(), Some("vera@example.com"));
    assert!(seen[0]
        .2
        .as_ref()
        .is_some_and(|a| a.split('.').count() == 3));
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
    // Not signed in: answered on the spot too (no cookie, nothing to read).
    let anon = [("x-forwarded-host", "app.test.localhost")];
    for _ in 0..2 {
        let r = verify(&ab, "/verify", &anon).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("x-user-id"), None);
        assert!(r.header("x-auth-redirect").is_some());
    }
    let after = metrics().await;
    assert_eq!(metric(&after, "authbase_sessions_cached "), 1, "{after}");
    let count = |endpoint: &str, status: &str| {
        metric(
            &after,
            &format!(
                "authbase_http_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} "
            ),
        )
    };
    assert_eq!(count("verify", "200"), 3, "{after}");
    assert_eq!(count("verify_redirect", "200"), 2, "{after}");
    assert_eq!(count("verify", "401"), 2, "{after}");
    assert_eq!(
        metric(&after, "authbase_verify_duration_seconds_count "),
        7,
        "{after}"
    );
    // The log is written off the request path: wait (bounded) for all seven lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while logged().len() < 7 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v = |p: &str, hot: bool| (p.to_string(), hot);
    assert_eq!(
        logged(),
        vec![
            v("/verify", false),
            v("/verify", true),
            v("/verify", true),
            v("/verify/redirect", true),
            v("/verify/redirect", true),
            v("/verify", true),
            v("/verify", true),
        ],
        "{}",
        ab.logs()
    );
}
