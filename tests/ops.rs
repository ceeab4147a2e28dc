//! Operations, against the real binary: `/metrics` parsed by the reference Prometheus
//! parser, the separate metrics listener, JSON logs free of secrets, `/readyz` flipping
//! with the database file, `authbase migrate`, `authbase backup` served by a fresh
//! authbase, `--version`, and SIGTERM finishing a request in flight.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::Method;

/// Parse exposition text with `prometheus_client.parser` (PyPI): every sample as
/// `name{labels}` → value. A format error fails the test with the parser's message.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<HashMap<String, f64>>(&out.stdout).unwrap()
}

async fn get(addr: &str, path: &str) -> Resp {
    send(addr, Method::GET, path, &[], Bytes::new()).await
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

#[tokio::test]
async fn metrics_count_what_happens_and_parse_as_prometheus_text() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "",
        "[limits]\nsign_in_per_address = \"1/1h\"\nsign_in_address_gap = \"0\"\n",
    ));
    let before = parse_metrics(&get(&ab.addr, "/metrics").await.body);
    assert_eq!(
        metric(&before, "authbase_sign_ins_total{outcome=\"requested\"}"),
        0.0
    );

    // A sign-in, three /verify answers, a 429, a 404.
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "mia@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    let cookie = format!("session_id={}", b.session().unwrap());
    let fwd = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.test.localhost"),
        ("x-forwarded-uri", "/x"),
    ];
    for _ in 0..2 {
        let mut h = fwd.to_vec();
        h.push(("cookie", &cookie));
        let r = send(&ab.addr, Method::GET, "/verify", &h, Bytes::new()).await;
        assert_eq!(r.status, 200);
    }
    let r = send(&ab.addr, Method::GET, "/verify", &fwd, Bytes::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        b.post_form("/auth", &[("email", "mia@example.com")])
            .await
            .status,
        429
    );
    assert_eq!(get(&ab.addr, "/nope").await.status, 404);

    let r = get(&ab.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    let m = parse_metrics(&r.body);
    let req = |e: &str, s: &str| {
        m.get(&format!(
            "authbase_http_requests_total{{endpoint=\"{e}\",status=\"{s}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(req("verify", "200"), 2.0);
    assert_eq!(req("verify", "401"), 1.0);
    assert_eq!(req("auth", "200"), 1.0);
    assert_eq!(req("auth", "429"), 1.0);
    assert_eq!(req("sign_in", "303"), 1.0);
    assert_eq!(req("other", "404"), 1.0);
    assert_eq!(metric(&m, "authbase_verify_duration_seconds_count{}"), 3.0);
    assert_eq!(
        metric(&m, "authbase_verify_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert!(metric(&m, "authbase_verify_duration_seconds_sum{}") > 0.0);
    assert_eq!(
        metric(&m, "authbase_sign_ins_total{outcome=\"requested\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "authbase_sign_ins_total{outcome=\"confirmed\"}"),
        1.0
    );
    assert_eq!(metric(&m, "authbase_emails_total{outcome=\"queued\"}"), 1.0);
    assert_eq!(metric(&m, "authbase_emails_total{outcome=\"sent\"}"), 1.0);
    assert_eq!(metric(&m, "authbase_email_queue_depth{}"), 0.0);
    assert_eq!(metric(&m, "authbase_sessions_active{}"), 1.0);
    assert_eq!(metric(&m, "authbase_sessions_cached{}"), 1.0);
    assert_eq!(
        metric(
            &m,
            "authbase_rate_limited_total{limit=\"sign_in_per_address\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "authbase_running_servers{}"), 1.0);
    // `server.workers` unset: half the cores this process may use, rounded up, as the
    // runtime itself reports them.
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        metric(&m, "authbase_workers{}"),
        cores.div_ceil(2) as f64,
        "{cores} cores"
    );
    // Two 200s for one session and host: one assertion signed, then reused.
    assert_eq!(metric(&m, "authbase_assertions_signed_total{}"), 1.0);
    let info = m
        .keys()
        .find(|k| k.starts_with("authbase_build_info{"))
        .expect("build info");
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    // No secret in the exposition.
    assert!(!r.body.contains(&mail.code()) && !r.body.contains(b.session().unwrap()));
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    ));
    let logs = ab.logs();
    let addr = logs
        .split("metrics on http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log: {logs}"))
        .to_string();
    assert_eq!(
        get(&ab.addr, "/metrics").await.status,
        404,
        "not on the main listener"
    );
    let r = get(&addr, "/metrics").await;
    assert_eq!(r.status, 200);
    parse_metrics(&r.body);
    assert_eq!(get(&addr, "/healthz").await.status, 200);
    assert_eq!(get(&addr, "/").await.status, 404, "nothing else there");
    assert_eq!(get(&addr, "/verify").await.status, 404);

    // And metrics can be off.
    let off = Authbase::start(&test_config(smtp.port, "", "[metrics]\nenabled = false\n"));
    assert_eq!(get(&off.addr, "/metrics").await.status, 404);
}

#[tokio::test]
async fn json_logs_parse_and_hold_no_secret_after_a_whole_flow() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(smtp.port, "", "[log]\nformat = \"json\"\n"));
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "json@example.com").await;
    let pending = b.session().unwrap().clone();
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    let session = b.session().unwrap().clone();
    assert_eq!(b.me().await.status, 200);
    assert_eq!(b.get(&mail.link_path()).await.status, 410);
    tokio::time::sleep(Duration::from_millis(1200)).await; // the audit batch
    let logs = ab.logs();
    let secret = mail.link_path().trim_start_matches("/sign_in/").to_string();
    let mut requests = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for s in [&secret, &mail.code(), &pending, &session] {
            assert!(!line.contains(s.as_str()), "a secret in the log: {line}");
        }
        if v["fields"]["message"] == "request" {
            requests.push(v);
        }
    }
    // One line per request: method, redacted path, status, latency, user id when known.
    let me = requests
        .iter()
        .find(|r| r["fields"]["path"] == "/me")
        .expect("a request line for /me");
    assert_eq!(me["fields"]["method"], "GET");
    assert_eq!(me["fields"]["status"], 200);
    assert!(me["fields"]["ms"].as_f64().is_some());
    assert!(me["fields"]["user_id"].as_i64().is_some(), "{me}");
    let link = requests
        .iter()
        .filter(|r| r["fields"]["path"] == "/sign_in/{secret}")
        .count();
    assert_eq!(link, 2, "link requests are logged with the secret redacted");
    assert!(logs.contains("\"target\":\"audit\""), "audit lines too");
}

#[tokio::test]
async fn readyz_follows_the_database_file_and_smtp_outages_do_not_count() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(smtp.port, SQLITE_ONLY, ""));
    assert_eq!(get(&ab.addr, "/readyz").await.status, 200);
    let db = ab.db_path();
    let moved = db.with_extension("moved");
    std::fs::rename(&db, &moved).unwrap();
    let r = get(&ab.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "database");
    assert_eq!(
        get(&ab.addr, "/healthz").await.status,
        200,
        "the process is up"
    );
    std::fs::rename(&moved, &db).unwrap();
    assert_eq!(get(&ab.addr, "/readyz").await.status, 200);

    // SMTP down: mail is retried later, which is not a stuck queue.
    let held = HeldPort::new(); // nothing listens on it
    let dead = Authbase::start(&test_config(held.port, "", ""));
    let mut b = dead.browser();
    assert_eq!(
        b.post_form("/auth", &[("email", "q@example.com")])
            .await
            .status,
        200
    );
    let deadline = Instant::now() + WAIT;
    let m = loop {
        let m = parse_metrics(&get(&dead.addr, "/metrics").await.body);
        if metric(&m, "authbase_emails_total{outcome=\"retried\"}") >= 1.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "the mail was never retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metric(&m, "authbase_email_queue_depth{}"), 1.0);
    assert_eq!(get(&dead.addr, "/readyz").await.status, 200);
}

#[tokio::test]
async fn migrate_creates_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authbase.toml"), test_config(2525, "", "")).unwrap();
    let out = cli_in(dir.path(), &["migrate"]);
    assert!(out.0.success(), "{out:?}");
    assert!(
        out.1.contains("created authbase.db at schema version"),
        "{out:?}"
    );
    let out = cli_in(dir.path(), &["migrate"]);
    assert!(out.1.contains("the latest"), "{out:?}");
    let v: i64 = rusqlite::Connection::open(dir.path().join("authbase.db"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(out.1.contains(&format!("schema version {v}")), "{out:?}");
}

#[tokio::test]
async fn a_backup_taken_while_serving_is_served_by_a_fresh_authbase() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(smtp.port, SQLITE_ONLY, ""));
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "bak@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    let copy = ab.dir.path().join("copy.db");
    let out = ab.cli(&["backup", copy.to_str().unwrap()]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("integrity ok"), "{out:?}");
    assert!(
        out.1.contains("server key"),
        "reminds to keep the key: {out:?}"
    );
    let again = ab.cli(&["backup", copy.to_str().unwrap()]);
    assert_eq!(again.0.code(), Some(65), "never overwrites: {again:?}");

    // A fresh authbase in another folder, on the copy and the same key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, dir.path().join("authbase.db")).unwrap();
    std::fs::copy(
        ab.dir.path().join("authbase.key"),
        dir.path().join("authbase.key"),
    )
    .unwrap();
    let restored = Authbase::start_in(dir, &test_config(smtp.port, SQLITE_ONLY, ""));
    let mut same = b.clone();
    same.addr = restored.addr.clone();
    let r = same.me().await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["email_address"], "bak@example.com");
}

#[test]
fn version_names_the_git_revision() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want_prefix = format!("authbase {} (", env!("CARGO_PKG_VERSION"));
    assert!(
        text.starts_with(&want_prefix) && text.ends_with(')'),
        "{text}"
    );
    let rev = &text[want_prefix.len()..text.len() - 1];
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output();
    match git {
        Ok(g) if g.status.success() => {
            assert_eq!(rev, String::from_utf8_lossy(&g.stdout).trim(), "{text}")
        }
        _ => assert!(!rev.is_empty(), "{text}"),
    }
}

#[tokio::test]
async fn sigterm_finishes_a_request_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let smtp = Smtp::start();
    // Idle connections are otherwise cut after this; here only the shutdown closes one.
    let mut ab = Authbase::start(&test_config(
        smtp.port,
        "",
        "[server]\nheader_read_timeout = \"60s\"\n",
    ));
    // A sign-in whose body is still arriving when SIGTERM comes.
    let body = "email=late%40example.com";
    let mut s = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
    let head = format!(
        "POST /auth HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\naccept: application/json\r\n\r\n",
        ab.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..10]).await.unwrap();
    // And a keep-alive connection that has been answered and sits idle.
    let mut idle = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", ab.addr).as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 15];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    // One on which nothing was sent (a browser's preconnect), and one whose request
    // head is still arriving.
    let unused = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: slow\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = ab.pid();
    let stopper = std::thread::spawn(move || {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    });
    stopper.join().unwrap();
    // New connections are refused soon (bounded wait); the one in flight completes.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(&ab.addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener is still open {}s after SIGTERM",
            WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other three are closed at once, not kept until the drain timeout: each gets
    // the rest of what it was sent, then end of stream, while the sign-in is in flight.
    async fn closed_soon(mut c: tokio::net::TcpStream, what: &str) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection is closed on SIGTERM"))
            .unwrap();
        rest
    }
    closed_soon(idle, "idle").await;
    let nothing = closed_soon(unused, "unused").await;
    assert!(nothing.is_empty(), "{nothing:?}");
    let cut = closed_soon(partial, "half-sent").await;
    assert!(cut.is_empty(), "{}", String::from_utf8_lossy(&cut));
    s.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .expect("an answer")
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("check_email"), "{resp}");
    // The mail of that sign-in is not lost: delivered before exit, or on the next start.
    assert!(ab.stop().success(), "exit 0 after SIGTERM");
    let logs = ab.logs();
    assert!(
        !logs.contains("did not finish in time"),
        "every connection closed before the drain timeout: {logs}"
    );
    let dir = std::mem::replace(&mut ab.dir, tempfile::tempdir().unwrap());
    let again = Authbase::start_in(dir, &ab.config.clone());
    let mails = smtp.wait_for(1).await;
    assert!(mails[0].header("To").unwrap().contains("late@example.com"));
    drop(again);
}

/// `server.workers` sets the runtime's request threads (read back from the runtime by
/// `/metrics`), whatever the machine's cores.
#[tokio::test]
async fn server_workers_sets_the_request_threads() {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(smtp.port, "", "[server]\nworkers = 3\n"));
    let r = send(&ab.addr, Method::GET, "/metrics", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.lines().any(|l| l == "authbase_workers 3"),
        "{}",
        r.body
    );
}

/// A WAL that grew while a reader held it back (a long backup, an open `sqlite3` shell)
/// is cut back to `journal_size_limit` once it starts over, instead of keeping its
/// largest size on disk for good.
#[tokio::test]
async fn a_wal_grown_while_a_reader_held_it_is_cut_back_once_it_starts_over() {
    const LIMIT: u64 = authbase::store::WAL_SIZE_LIMIT as u64;
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(smtp.port, SQLITE_ONLY, ""));
    let wal = ab.db_path().with_extension("db-wal");
    // The server keeps the WAL file while it runs: a missing one is a failure, not 0.
    let wal_len = || std::fs::metadata(&wal).expect("the -wal file").len();

    // A reader holds a snapshot: nothing written after it can be checkpointed, so the
    // WAL cannot start over and grows with every write.
    let reader = rusqlite::Connection::open(ab.db_path()).unwrap();
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM users;")
        .unwrap();
    // Seven messages with a 9 MB attachment (incompressible bytes), each its own
    // transaction, from the CLI: ~12 MB of WAL apiece once base64-encoded.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..9_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let attachment = ab.dir.path().join("export.bin");
    std::fs::write(&attachment, &bytes).unwrap();
    let text = ab.dir.path().join("body.txt");
    std::fs::write(&text, "Your export is attached.").unwrap();
    for i in 0..7 {
        let out = ab.cli(&[
            "email",
            "send",
            "--to",
            &format!("big{i}@example.com"),
            "--create-user",
            "--subject",
            "Export",
            "--text",
            text.to_str().unwrap(),
            "--attach",
            attachment.to_str().unwrap(),
        ]);
        assert!(out.0.success(), "{out:?}");
    }
    let grown = wal_len();
    assert!(grown > LIMIT, "the WAL grew past the limit: {grown} bytes");

    // The reader lets go; the checkpointer copies the WAL into the database, and the
    // first commit after the WAL starts over truncates the file. Sign-ins make commits.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut b = ab.browser();
    let mut n = 0;
    while wal_len() > LIMIT && std::time::Instant::now() < deadline {
        n += 1;
        let r = b
            .post_form("/auth", &[("email", &format!("w{n}@example.com"))])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let now = wal_len();
    assert!(
        now <= LIMIT,
        "the WAL is still {now} bytes (it grew to {grown}); limit {LIMIT}"
    );
    // Nothing was lost on the way: the seven messages are in the outbox.
    let rows = ab.sql("SELECT COUNT(*) FROM outbox WHERE kind = 'api'");
    assert_eq!(rows[0][0].int(), 7);
}
