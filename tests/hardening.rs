//! The adversarial suite: attack classes that hit forward-auth projects, and faults in
//! our own dependencies, each against the real binary with a real SMTP server and a real
//! SQLite file. README.md ("Security notes", "What is tested") maps every case to its
//! test; several live in core.rs, verify.rs, access.rs and email_api.rs already.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::Method;

fn setup(sections: &str) -> (Smtp, Authbase) {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "",
        &format!("[cookie]\ndomain = \"test.localhost\"\n{sections}"),
    ));
    (smtp, ab)
}

/// Sign `email` in with a fresh browser; returns the `Cookie` header value.
async fn sign_in(ab: &Authbase, smtp: &Smtp, email: &str) -> String {
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, smtp, email).await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    format!("session_id={}", b.session().unwrap())
}

async fn verify(addr: &str, url: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h = vec![("x-original-url", url), ("accept", "text/html")];
    h.extend_from_slice(extra);
    send(addr, Method::GET, "/verify", &h, Bytes::new()).await
}

fn identity_headers(r: &Resp) -> Vec<String> {
    r.headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("x-user"))
        .collect()
}

// ---------------------------------------------------------------- tokens and sessions

/// 10,000 sign-ins: every session id and link secret is unique, carries at least 128
/// bits (base64url, 43 characters = 256 bits), and no two share an 8-character prefix.
#[tokio::test]
async fn ten_thousand_secrets_are_unique_long_and_share_no_prefix() {
    let cfg = test_config(0, "", "").replace("transport = \"smtp\"", "transport = \"log\"");
    let ab = Authbase::start_quiet(&cfg);
    let sessions = Arc::new(Mutex::new(Vec::with_capacity(10_000)));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (addr, sessions) = (ab.addr.clone(), sessions.clone());
        tasks.spawn(async move {
            for i in 0..625 {
                let body = format!("email=u{w}-{i}%40example.com");
                let r = send(
                    &addr,
                    Method::POST,
                    "/auth",
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.body);
                sessions
                    .lock()
                    .unwrap()
                    .push(r.set_cookie("session_id").unwrap());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // The log transport prints every message with its link.
    let deadline = Instant::now() + Duration::from_secs(120);
    let links = loop {
        let out = ab.stdout.lock().unwrap().clone();
        let links: Vec<String> = out
            .match_indices("/sign_in/")
            .map(|(i, _)| {
                out[i + 9..]
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        if links.len() >= 10_000 {
            break links;
        }
        assert!(Instant::now() < deadline, "{} links printed", links.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let sessions = sessions.lock().unwrap().clone();
    assert_eq!(sessions.len(), 10_000);
    // Each message prints its link once; a message sent twice would show up as a repeat.
    let link_set: HashSet<&String> = links.iter().collect();
    assert_eq!(link_set.len(), 10_000, "unique link secrets");
    let session_set: HashSet<&String> = sessions.iter().collect();
    assert_eq!(session_set.len(), 10_000, "unique session ids");
    let mut prefixes = HashSet::new();
    let out = ab.stdout.lock().unwrap().clone();
    for s in sessions.iter().chain(links.iter()) {
        if s.len() != 43 {
            let i = out.find(s.as_str()).unwrap_or(0);
            let lo = out.floor_char_boundary(i.saturating_sub(300));
            let hi = out.floor_char_boundary((i + 300).min(out.len()));
            panic!("{s}: {}", &out[lo..hi]);
        }
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{s}"
        );
        assert!(prefixes.insert(s[..8].to_string()), "shared prefix: {s}");
    }
}

/// Cookies that are empty, 8 KB long, not UTF-8, or duplicated never count as signed in
/// (and never crash anything).
#[tokio::test]
async fn odd_cookies_never_yield_2xx() {
    let (smtp, ab) = setup("");
    let good = sign_in(&ab, &smtp, "cora@example.com").await;
    let other = sign_in(&ab, &smtp, "dora@example.com").await;
    let value = good.trim_start_matches("session_id=");
    let long = format!("session_id={}", "A".repeat(8 * 1024));
    let cases: Vec<Vec<u8>> = vec![
        b"session_id=".to_vec(),
        b"session_id".to_vec(),
        b"session_id=;".to_vec(),
        long.into_bytes(),
        b"session_id=\xff\xfe\xfd".to_vec(),
        [b"session_id=".as_slice(), value.as_bytes(), b"\xff"].concat(),
        format!("{good}; {other}").into_bytes(),
        format!("{good}; session_id=garbage").into_bytes(),
        format!("session_id=garbage; {good}").into_bytes(),
        format!("{good}; {good}").into_bytes(),
        format!("SESSION_ID={value}").into_bytes(),
        format!("session_id={value}x").into_bytes(),
        format!("session_id={}", &value[..42]).into_bytes(),
    ];
    for c in &cases {
        let shown = String::from_utf8_lossy(c)
            .chars()
            .take(80)
            .collect::<String>();
        let cookie = hyper::header::HeaderValue::from_bytes(c).unwrap();
        for path in ["/me", "/verify"] {
            let r = tokio::time::timeout(WAIT, async {
                let stream = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
                let (mut tx, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let req = hyper::Request::get(path)
                    .header("host", "auth.test.localhost")
                    .header("x-original-url", "http://app.test.localhost/")
                    .header("cookie", cookie.clone())
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                tx.send_request(req).await.unwrap()
            })
            .await
            .unwrap();
            let status = r.status().as_u16();
            assert!(
                status == 401 || status == 400,
                "{path} with cookie {shown:?}: {status}"
            );
            assert!(r.headers().get("x-user-id").is_none());
        }
    }
    // The good cookie alone still works: nothing above harmed it, and neither does a
    // GET of /sign_out (a link or an image can make a browser send one).
    let r = send(
        &ab.addr,
        Method::GET,
        "/sign_out",
        &[("cookie", &good)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 405);
    let r = verify(&ab.addr, "http://app.test.localhost/", &[("cookie", &good)]).await;
    assert_eq!(r.status, 200);
}

/// Two sign-in requests for one address, in two browsers: each link confirms only its
/// own request, in its own browser.
#[tokio::test]
async fn two_requests_for_one_address_each_link_confirms_only_its_own() {
    let (smtp, ab) = setup("");
    let mut one = ab.browser();
    let mut two = ab.browser();
    let (_, mail_one) = request_link(&mut one, &smtp, "eve@example.com").await;
    let (_, mail_two) = request_link(&mut two, &smtp, "eve@example.com").await;
    assert_ne!(mail_one.link(), mail_two.link());
    // Link one opened in browser two: it is not browser two's request, so it only
    // offers the choices (and signs nobody in).
    let r = two.get(&mail_one.link_path()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(two.me().await.status, 401);
    assert_eq!(one.me().await.status, 401);
    // Each link in its own browser signs in that browser.
    assert_eq!(one.get(&mail_one.link_path()).await.status, 303);
    assert_eq!(one.me().await.status, 200);
    assert_eq!(two.me().await.status, 401, "link one did not sign in two");
    assert_eq!(two.get(&mail_two.link_path()).await.status, 303);
    assert_eq!(two.me().await.status, 200);
    // Used links stay used.
    assert_eq!(one.get(&mail_one.link_path()).await.status, 410);
    // The codes are per request too: code one is wrong for browser two's new request.
    let mut three = ab.browser();
    let (_, mail_three) = request_link(&mut three, &smtp, "eve@example.com").await;
    let code_two = mail_two.code();
    if code_two != mail_three.code() {
        let r = three.post_form("/auth/code", &[("code", &code_two)]).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(three.me().await.status, 401);
    }
}

// ---------------------------------------------------------------- /verify

const RULES: &str = r#"
[[access.rules]]
host = "app.test.localhost"
paths = ["/public"]
policy = "bypass"
"#;

/// Path tricks cannot reach a protected path through a bypass rule; health-check user
/// agents get no pass; identity headers come only with a 2xx.
#[tokio::test]
async fn path_tricks_probe_agents_and_identity_headers() {
    let (smtp, ab) = setup(RULES);
    let cookie = sign_in(&ab, &smtp, "fay@example.com").await;
    // The bypass works where it should.
    for ok in [
        "http://app.test.localhost/public",
        "http://app.test.localhost/public/x",
    ] {
        let r = verify(&ab.addr, ok, &[]).await;
        assert_eq!(r.status, 200, "{ok}");
        assert!(
            identity_headers(&r).is_empty(),
            "bypass carries no identity"
        );
    }
    for trick in [
        "http://app.test.localhost/public%23/x",
        "http://app.test.localhost/admin?x=/public",
        "http://app.test.localhost//admin",
        "http://app.test.localhost/%2e/admin",
        "http://app.test.localhost/admin;x",
        "http://app.test.localhost/public/../admin",
        "http://app.test.localhost/public/%2e%2e/admin",
        "http://app.test.localhost/public%2f..%2fadmin",
        "http://app.test.localhost/publicx",
        "http://app.test.localhost/PUBLIC/x",
        "http://app.test.localhost/public\\..\\admin",
        "http://app.test.localhost/%70ublic/../admin",
    ] {
        let r = verify(&ab.addr, trick, &[]).await;
        assert!(
            r.status == 401 || r.status == 400,
            "{trick}: {} (a protected path must not pass unauthenticated)",
            r.status
        );
        assert!(identity_headers(&r).is_empty(), "{trick}");
    }
    // Probes get nothing special.
    for ua in [
        "kube-probe/1.30",
        "GoogleHC/1.0",
        "ELB-HealthChecker/2.0",
        "Consul Health Check",
    ] {
        let r = verify(
            &ab.addr,
            "http://app.test.localhost/",
            &[("user-agent", ua)],
        )
        .await;
        assert_eq!(r.status, 401, "{ua}");
        assert!(identity_headers(&r).is_empty());
    }
    // Identity only with 200: not on 401, 403 or 400 answers, even with a valid cookie.
    let r = verify(
        &ab.addr,
        "http://app.test.localhost/",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(identity_headers(&r).contains(&"x-user-email".to_string()));
    for bad in [
        vec![("x-original-url", "not a url"), ("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-original-url", "/relative")],
        vec![("cookie", cookie.as_str())],
    ] {
        let r = send(&ab.addr, Method::GET, "/verify", &bad, Bytes::new()).await;
        assert!(!r.status.is_success(), "{bad:?}: {}", r.status);
        assert!(identity_headers(&r).is_empty(), "{bad:?}");
    }
}

// ---------------------------------------------------------------- input

/// Addresses that try to smuggle recipients or headers, or are too long: 400 and nothing
/// at the SMTP server (core.rs covers CR/LF, quotes, lists and display names too).
#[tokio::test]
async fn hostile_addresses_are_refused_and_reach_no_smtp_server() {
    let (smtp, ab) = setup("");
    let mut b = ab.browser();
    let long_label = format!("a@{}.example.com", "d".repeat(64));
    let long_local = format!("{}@example.com", "l".repeat(65));
    let long_total = format!("a@{}example.com", "abcdefghi.".repeat(25));
    for bad in [
        "\"a>\r\nRCPT TO:<evil@example.org>\"@example.com",
        "\"a@example.com>\" <evil@example.org>",
        "a@example.com>\r\nDATA",
        "<a@example.com>",
        "a@example.com,b@example.com",
        "a@example.com;b@example.com",
        "a@example.com b@example.com",
        "Ann <ann@example.com>",
        "ann@example.com (Ann)",
        "a@evil@company.com",
        "a@[127.0.0.1]",
        "a@127.0.0.1",
        "a@localhost",
        "a\u{0}@example.com",
        "a@exam\u{0}ple.com",
        "ä@example.com",
        &long_label,
        &long_local,
        &long_total,
    ] {
        let r = b.post_form("/auth", &[("email", bad)]).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.status);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(smtp.messages().is_empty(), "nothing was sent");
}

/// CORS: an unlisted origin is never reflected; a listed one is, with credentials.
#[tokio::test]
async fn cors_never_reflects_an_unlisted_origin() {
    let (smtp, ab) = setup("[cors]\nallowed_origins = [\"https://spa.example.org\"]\n");
    let cookie = sign_in(&ab, &smtp, "gus@example.com").await;
    for origin in [
        "https://evil.example",
        "null",
        "https://spa.example.org.evil.example",
        "https://evil-spa.example.org",
        "http://spa.example.org",
        "https://spa.example.org:444",
    ] {
        let r = send(
            &ab.addr,
            Method::GET,
            "/me",
            &[("origin", origin), ("cookie", &cookie)],
            Bytes::new(),
        )
        .await;
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert!(
            r.header("access-control-allow-credentials").is_none(),
            "{origin}"
        );
        let p = send(
            &ab.addr,
            Method::OPTIONS,
            "/me",
            &[("origin", origin), ("access-control-request-method", "GET")],
            Bytes::new(),
        )
        .await;
        assert!(
            p.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert_ne!(p.status, 204, "{origin}");
    }
    let r = send(
        &ab.addr,
        Method::GET,
        "/me",
        &[("origin", "https://spa.example.org"), ("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://spa.example.org")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
}

// ---------------------------------------------------------------- timing

/// Known, unknown and not-allowed addresses take the same time. Method: 200 `POST /auth`
/// for each kind, interleaved (one of each per round, the order rotating through all six)
/// so drift hits all three alike, each on a fresh connection with a fresh address;
/// compare medians. The
/// bound is coarse on purpose (an extra database round trip or a synchronous SMTP
/// conversation, the leaks that matter, cost milliseconds); the figures are printed.
#[tokio::test]
async fn known_unknown_and_refused_addresses_answer_alike_in_time() {
    let (smtp, ab) = setup("[access]\nallowed_domains = [\"example.com\"]\n");
    // Known users: signed up once before.
    let mut known = Vec::new();
    for i in 0..200 {
        known.push(format!("known{i}@example.com"));
    }
    let mut add = tokio::task::JoinSet::new();
    for chunk in known.chunks(25) {
        let (addr, chunk) = (ab.addr.clone(), chunk.to_vec());
        add.spawn(async move {
            for e in chunk {
                let body = format!("email={}", e.replace('@', "%40"));
                let r = send(
                    &addr,
                    Method::POST,
                    "/auth",
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await;
                assert_eq!(r.status, 200);
            }
        });
    }
    while let Some(r) = add.join_next().await {
        r.unwrap();
    }
    smtp.wait_for(200).await;
    let mut times: HashMap<&str, Vec<f64>> = HashMap::new();
    for (i, k) in known.iter().cloned().enumerate() {
        let u = format!("new{i}@example.com");
        let d = format!("someone{i}@elsewhere.org");
        // Each round in another of the six orders: a request that follows a queued mail
        // overlaps its delivery, so a fixed order would slow some kinds and not others.
        let mut round = [("known", k), ("unknown", u), ("refused", d)];
        const ORDERS: [[usize; 3]; 6] = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let order = ORDERS[i % 6];
        let round = order.map(|j| std::mem::take(&mut round[j]));
        for (kind, email) in round {
            let body = format!("email={}", email.replace('@', "%40"));
            let t = Instant::now();
            let r = send(
                &ab.addr,
                Method::POST,
                "/auth",
                &[("content-type", "application/x-www-form-urlencoded")],
                body,
            )
            .await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(r.status, 200);
            times.entry(kind).or_default().push(ms);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let m: HashMap<&str, f64> = times.iter_mut().map(|(k, v)| (*k, median(v))).collect();
    println!(
        "POST /auth medians over 200 tries: known {:.3} ms, unknown {:.3} ms, refused {:.3} ms",
        m["known"], m["unknown"], m["refused"]
    );
    let all = [m["known"], m["unknown"], m["refused"]];
    let lo = all.iter().cloned().fold(f64::MAX, f64::min);
    let hi = all.iter().cloned().fold(0.0, f64::max);
    assert!(hi - lo <= (0.25 * lo).max(0.5), "distinguishable: {m:?}");
}

// ---------------------------------------------------------------- faults

/// An SMTP server that accepts connections and never answers: `POST /auth` still
/// answers at once and alike; once a real server listens there, the mail arrives.
#[tokio::test]
async fn a_blackholed_smtp_server_delays_mail_not_answers() {
    let held = HeldPort::new();
    let port = held.port;
    // The black hole: accepts, holds the connection, never says a word.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hole = {
        let listener = held.listen();
        listener.set_nonblocking(true).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let ab = Authbase::start(&test_config(port, "", "smtp_timeout = \"2s\"\n"));
    let mut b = ab.browser();
    let t = Instant::now();
    let r = b.post_form("/auth", &[("email", "hal@example.com")]).await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the answer waited for SMTP: {:?}",
        t.elapsed()
    );
    // The sender is stuck in the black hole, and gives up on it after smtp_timeout.
    ab.wait_for_log("did not finish within 2s").await;
    stop.store(true, Ordering::Relaxed);
    hole.join().unwrap();
    let smtp = Smtp::start_on(dir.path(), held);
    let mail = &smtp.wait_for(1).await[0];
    assert!(mail.envelope.contains("RCPT TO hal@example.com"));
}

/// The database file disappears (moved away, or deleted): `/verify` and `/me` fail
/// closed (503, never 2xx) within `session::SYNC_GRACE`, cached sessions included (open
/// connections would go on reading the vanished file). Moved back, everything recovers
/// by itself. Replaced by another file, authbase stays closed until restarted (a stale
/// `-wal` must not be applied to another file).
#[tokio::test]
async fn a_missing_or_replaced_database_fails_closed_and_recovers() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        SQLITE_ONLY,
        "[cookie]\ndomain = \"test.localhost\"\n",
    ));
    let cookie = sign_in(&ab, &smtp, "ida@example.com").await;
    let url = "http://app.test.localhost/";
    // Cached now.
    assert_eq!(
        verify(&ab.addr, url, &[("cookie", &cookie)]).await.status,
        200
    );
    let db = ab.db_path();
    let moved = db.with_extension("moved");
    let wait_for = |want: u16| {
        let (addr, cookie) = (ab.addr.clone(), cookie.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let r = verify(&addr, url, &[("cookie", &cookie)]).await;
                if r.status == want {
                    return Instant::now();
                }
                assert!(
                    r.status == 200 || r.status == 503,
                    "unexpected {}",
                    r.status
                );
                assert!(Instant::now() < deadline, "never {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let closed_for_good = |ab: &Authbase| {
        let (addr, cookie) = (ab.addr.clone(), cookie.clone());
        async move {
            for _ in 0..20 {
                let r = verify(&addr, url, &[("cookie", &cookie)]).await;
                assert_eq!(r.status, 503, "{}", r.body);
                assert!(identity_headers(&r).is_empty());
                let me = send(
                    &addr,
                    Method::GET,
                    "/me",
                    &[("cookie", &cookie)],
                    Bytes::new(),
                )
                .await;
                assert_eq!(me.status, 503);
                assert_eq!(verify(&addr, url, &[]).await.status, 401);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let ready = send(&addr, Method::GET, "/readyz", &[], Bytes::new()).await;
            assert_eq!(ready.status, 503);
        }
    };
    let gone = Instant::now();
    std::fs::rename(&db, &moved).unwrap();
    let closed = wait_for(503).await;
    println!("fails closed after {} ms", (closed - gone).as_millis());
    closed_for_good(&ab).await;
    std::fs::rename(&moved, &db).unwrap();
    let back = Instant::now();
    let open = wait_for(200).await;
    println!("recovers after {} ms", (open - back).as_millis());
    let me = send(
        &ab.addr,
        Method::GET,
        "/me",
        &[("cookie", &cookie)],
        Bytes::new(),
    )
    .await;
    assert_eq!(me.status, 200);
    sign_in(&ab, &smtp, "ida2@example.com").await;

    // Another file in its place (a copy): closed, and the log says to restart.
    std::fs::copy(&db, &moved).unwrap();
    std::fs::rename(&moved, &db).unwrap();
    wait_for(503).await;
    closed_for_good(&ab).await;
    ab.wait_for_log("was replaced by another file").await;
}

/// Another process holds an exclusive (write) lock for longer than the busy timeout:
/// writes answer 503 with Retry-After (no 2xx, no hang past the bound), reads keep
/// answering correctly (WAL: readers are not blocked by a writer), and everything works
/// again once the lock is gone.
#[tokio::test]
async fn an_exclusive_lock_held_elsewhere_gives_503_not_2xx_and_passes() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        SQLITE_ONLY,
        "[cookie]\ndomain = \"test.localhost\"\n",
    ));
    let cookie = sign_in(&ab, &smtp, "jo@example.com").await;
    let db = ab.db_path();
    let mut locker = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n\
             c.execute('COMMIT')\n",
        )
        .arg(&db)
        // Holds the lock until its stdin is closed.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let mut b = ab.browser();
    let t = Instant::now();
    let r = b.post_form("/auth", &[("email", "kim@example.com")]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    // Bounded: at most the 5 s wait for this process's writer lock (a background writer
    // may hold it, itself waiting out the lock) and the 5 s busy timeout.
    assert!(t.elapsed() < Duration::from_secs(11), "{:?}", t.elapsed());
    let r = verify(
        &ab.addr,
        "http://app.test.localhost/",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "a valid session stays valid while writes wait"
    );
    assert_eq!(
        verify(&ab.addr, "http://app.test.localhost/", &[])
            .await
            .status,
        401
    );
    drop(locker.stdin.take());
    let _ = locker.wait();
    let (_, mail) = request_link(&mut b, &smtp, "kim@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    assert_eq!(b.me().await.status, 200);
}

/// SIGKILL under load: afterwards every session is still valid and every consumed
/// link stays consumed.
#[tokio::test]
async fn sigkill_under_load_keeps_sessions_and_consumed_links() {
    let (smtp, ab) = setup("");
    let mut users = Vec::new();
    for i in 0..10 {
        let mut b = ab.browser();
        let (_, mail) = request_link(&mut b, &smtp, &format!("load{i}@example.com")).await;
        assert_eq!(b.get(&mail.link_path()).await.status, 303);
        users.push((
            format!("session_id={}", b.session().unwrap()),
            mail.link_path(),
        ));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for w in 0..6 {
        let (addr, users, stop) = (ab.addr.clone(), users.clone(), stop.clone());
        load.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let c = &users[(w + i) % users.len()].0;
                let h = [
                    ("x-original-url", "http://app.test.localhost/"),
                    ("cookie", c.as_str()),
                ];
                // The server may die mid-request: connection errors are expected here.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::spawn({
                        let addr = addr.clone();
                        let h: Vec<(String, String)> = h
                            .iter()
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .collect();
                        async move {
                            let h: Vec<(&str, &str)> =
                                h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                            let _ = send(&addr, Method::GET, "/verify", &h, Bytes::new()).await;
                        }
                    }),
                )
                .await;
                i += 1;
            }
        });
    }
    // Sign-ins under way as well.
    for i in 0..5 {
        let mut b = ab.browser();
        b.post_form("/auth", &[("email", &format!("busy{i}@example.com"))])
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ab = ab;
    ab.kill();
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let dir = std::mem::replace(&mut ab.dir, tempfile::tempdir().unwrap());
    let ab = Authbase::start_in(dir, &ab.config.clone());
    for (cookie, link) in &users {
        let r = verify(
            &ab.addr,
            "http://app.test.localhost/",
            &[("cookie", cookie)],
        )
        .await;
        assert_eq!(r.status, 200, "session survived the kill");
        let mut b = ab.browser();
        assert_eq!(
            b.get(link).await.status,
            410,
            "consumed link stays consumed"
        );
    }
}

/// 60 s of `/verify` from several clients while others sign in and sign out: no error,
/// and no 2xx for a session after its sign-out was answered.
#[tokio::test]
async fn soak_verify_with_concurrent_sign_ins_and_sign_outs() {
    let (smtp, ab) = setup("");
    let ab = Arc::new(ab);
    let smtp = Arc::new(smtp);
    // Cookie -> signed out (a sign-out for it has been answered).
    let live: Arc<Mutex<Vec<(String, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    for i in 0..8 {
        let c = sign_in(&ab, &smtp, &format!("soak{i}@example.com")).await;
        live.lock().unwrap().push((c, false));
    }
    let until = Instant::now() + Duration::from_secs(60);
    let checks = Arc::new(AtomicUsize::new(0));
    let churn = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (addr, live, checks) = (ab.addr.clone(), live.clone(), checks.clone());
        tasks.spawn(async move {
            let mut i = w;
            while Instant::now() < until {
                let (cookie, out_before) = {
                    let l = live.lock().unwrap();
                    l[i % l.len()].clone()
                };
                let r = verify(&addr, "http://app.test.localhost/", &[("cookie", &cookie)]).await;
                assert!(
                    r.status == 200 || r.status == 401,
                    "error under load: {}",
                    r.status
                );
                if out_before {
                    assert_eq!(r.status, 401, "2xx for a signed-out session");
                }
                checks.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
    }
    // One client keeps signing new users in and old ones out.
    {
        let (ab, smtp, live, churn) = (ab.clone(), smtp.clone(), live.clone(), churn.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                let cookie = sign_in(&ab, &smtp, &format!("churn{n}@example.com")).await;
                live.lock().unwrap().push((cookie, false));
                // Sign out the oldest still signed in.
                let victim = {
                    let l = live.lock().unwrap();
                    l.iter().position(|(_, out)| !out)
                };
                if let Some(v) = victim {
                    let c = live.lock().unwrap()[v].0.clone();
                    let r = send(
                        &ab.addr,
                        Method::POST,
                        "/sign_out",
                        &[("cookie", &c), ("origin", "http://auth.test.localhost")],
                        Bytes::new(),
                    )
                    .await;
                    assert_eq!(r.status, 200, "{}", r.body);
                    live.lock().unwrap()[v].1 = true;
                }
                n += 1;
                churn.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    println!(
        "soak: {} /verify checks, {} sign-in + sign-out cycles in 60 s",
        checks.load(Ordering::Relaxed),
        churn.load(Ordering::Relaxed)
    );
    assert!(churn.load(Ordering::Relaxed) > 10);
    assert!(checks.load(Ordering::Relaxed) > 1000);
    assert!(!ab.logs().contains("panicked"));
}

// ---------------------------------------------------------------- slow clients

/// Read from `s` until the peer closes (or resets) the connection: `Some(bytes read)`,
/// or `None` when it is still open after `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read one response head (through the blank line) from `s`; returns its status code.
async fn response_status(s: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    head[9..12].parse().unwrap()
}

/// Slowloris: a request head trickled in slower than `server.header_read_timeout` is
/// cut off without an answer, and so is a connection that sends nothing or stays idle
/// after a request that long. A client within the time is served, again and again on one
/// connection, and a request being handled is never cut (a slow body is the handler's
/// business, bounded by `server.request_timeout`).
#[tokio::test]
async fn slow_heads_and_idle_connections_are_cut_off_at_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let (_smtp, ab) = setup("[server]\nheader_read_timeout = \"1s\"\n");
    let addr = ab.addr.clone();
    let get = b"GET /healthz HTTP/1.1\r\nHost: auth.test.localhost\r\n\r\n";

    // A head trickled in, one header line every 200 ms, never finished: cut off with no
    // response, long before the 8 s the trickle would take.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: auth.test.localhost\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut b = [0u8; 64];
        match s.try_read(&mut b) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => panic!("an answer to an unfinished head: {:?}", &b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a head trickled in over 8 s was not cut off");

    // A connection that sends nothing is closed without an answer.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let got = closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        Some(vec![]),
        "a silent connection stayed open or was answered"
    );

    // Within the time: served, twice on one connection with a pause between; then the
    // idle keep-alive connection is closed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(get).await.unwrap();
        assert_eq!(response_status(&mut s).await, 200);
    }
    let got = closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        Some(vec![]),
        "an idle keep-alive connection stayed open"
    );

    // A request whose body arrives slowly (3 s, three times the header read timeout) is
    // being handled, and is answered.
    let body = "email=slow-body%40example.com&x=0123456789";
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /auth HTTP/1.1\r\nHost: auth.test.localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    for chunk in body.as_bytes().chunks(3) {
        tokio::time::sleep(Duration::from_millis(3000 / (body.len() as u64 / 3 + 1))).await;
        s.write_all(chunk)
            .await
            .expect("the connection stays open while the body arrives");
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    let status = response_status(&mut s).await;
    assert!(status < 400, "a slow body got {status}");
}
