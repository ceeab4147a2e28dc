//! Several authbase replicas on one PostgreSQL database (the throwaway server
//! `scripts/test` starts, named by `AUTHBASE_TEST_POSTGRES`), each a real process, with a
//! real SMTP server and, where it matters, real nginx in front of all three.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::{free_port, proxied_config, EchoApp, Kind, Proxy};
use common::*;
use hyper::Method;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-replicas";

/// Three replicas on one new PostgreSQL database, sharing one server key file (as
/// replicas must: links, codes and signing keys are derived from it).
struct Replicas {
    smtp: Smtp,
    servers: Vec<Authbase>,
    _shared: tempfile::TempDir,
}

impl Replicas {
    /// `config(smtp_port)` is a test config (its `database`, `secret_key_file` and API
    /// token file are replaced).
    fn start(config: impl Fn(u16) -> String) -> Replicas {
        let smtp = Smtp::start();
        let config = config(smtp.port);
        let url = new_postgres_database(&postgres_server());
        let shared = tempfile::tempdir().unwrap();
        let key = shared.path().join("authbase.key");
        std::fs::write(shared.path().join("api_token"), format!("{TOKEN}\n")).unwrap();
        let config = config
            .replace(
                "database = \"authbase.db\"",
                &format!("database = \"{url}\""),
            )
            .replace(
                "secret_key_file = \"authbase.key\"",
                &format!("secret_key_file = \"{}\"", key.display()),
            )
            .replace(
                "token_file = \"api_token\"",
                &format!(
                    "token_file = \"{}\"",
                    shared.path().join("api_token").display()
                ),
            );
        assert!(config.contains(&url), "a config with the default database");
        // The first one creates the key file and the schema; the others find both.
        let servers = (0..3).map(|_| Authbase::start(&config)).collect();
        Replicas {
            smtp,
            servers,
            _shared: shared,
        }
    }

    /// Sign `email` in on replica `i` (link clicked there); the browser holding it.
    async fn sign_in(&self, i: usize, email: &str) -> Browser {
        let mut b = self.servers[i].browser();
        let (_, mail) = request_link(&mut b, &self.smtp, email).await;
        assert_eq!(b.get(&mail.link_path()).await.status, 303);
        b
    }
}

/// A PostgreSQL server of one test's own (`scripts/test-postgres`), stopped and removed
/// when dropped, also when the test fails.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    url: String,
}

impl PrivatePostgres {
    /// `scripts/test-postgres start DIR OPTIONS`.
    fn start(options: &[&str]) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("authbase-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut pg = PrivatePostgres {
            dir,
            url: String::new(),
        };
        pg.url = pg.run("start", options);
        pg
    }

    /// `scripts/test-postgres CMD DIR` (`pause`, `resume`).
    fn ctl(&self, cmd: &str) {
        self.run(cmd, &[]);
    }

    fn run(&self, cmd: &str, options: &[&str]) -> String {
        let o = std::process::Command::new(repo().join("scripts/test-postgres"))
            .arg(cmd)
            .arg(self.dir.path())
            .args(options)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/test-postgres"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

async fn verify(addr: &str, b: &Browser) -> u16 {
    let cookie = format!("session_id={}", b.session().expect("signed in"));
    let h = [
        ("x-original-url", "http://app.test.localhost/"),
        ("cookie", cookie.as_str()),
    ];
    send(addr, Method::GET, "/verify", &h, Bytes::new())
        .await
        .status
        .as_u16()
}

/// Poll `/verify` on each of `addrs` until it refuses the session; how long that took
/// on the slowest (bounded by 5 s, then it fails).
async fn refused_on_all(addrs: &[&str], b: &Browser) -> Duration {
    let start = Instant::now();
    for addr in addrs {
        loop {
            let s = verify(addr, b).await;
            if s == 401 {
                break;
            }
            assert_eq!(s, 200, "{addr}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{addr} still accepts the session"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

/// Signed in on one replica, accepted by all; signed out on another, refused by the
/// rest within a second; a CLI revoke and a CLI block hold on all three by the time
/// the command returns (it waits for every running server to confirm).
#[tokio::test]
async fn sign_out_revoke_and_block_on_one_replica_hold_on_all_of_them() {
    let r = Replicas::start(|port| test_config(port, "", ""));
    let addrs: Vec<&str> = r.servers.iter().map(|s| s.addr.as_str()).collect();

    let ann = r.sign_in(0, "ann@example.com").await;
    for a in &addrs {
        assert_eq!(
            verify(a, &ann).await,
            200,
            "{a} accepts a session made on {}",
            addrs[0]
        );
    }
    // Signed out on replica 1: replicas 0 and 2 (which cached the session) refuse it.
    let mut on_1 = ann.clone();
    on_1.addr = addrs[1].to_string();
    assert_eq!(on_1.post_form("/sign_out", &[]).await.status, 200);
    assert_eq!(
        verify(addrs[1], &ann).await,
        401,
        "at once where it was signed out"
    );
    let took = refused_on_all(&[addrs[0], addrs[2]], &ann).await;
    eprintln!("sign-out on one replica refused by the other two after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // `sessions revoke` from the command line (any replica's config will do).
    let bob = r.sign_in(2, "bob@example.com").await;
    for a in &addrs {
        assert_eq!(verify(a, &bob).await, 200);
    }
    let out = r.servers[1].cli(&["sessions", "revoke", "--user", "bob@example.com"]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("3 running servers applied it"), "{out:?}");
    for a in &addrs {
        assert_eq!(verify(a, &bob).await, 401, "{a} after the CLI returned");
    }

    // `sessions revoke --id`: one of dee's two sessions, cached on every replica, is
    // refused by all three once the command returns; the other is not.
    let dee1 = r.sign_in(0, "dee@example.com").await;
    let dee2 = r.sign_in(2, "dee@example.com").await;
    for a in &addrs {
        assert_eq!(verify(a, &dee1).await, 200);
        assert_eq!(verify(a, &dee2).await, 200);
    }
    let out = r.servers[1].cli(&["sessions", "list", "--user", "dee@example.com", "--json"]);
    assert!(out.0.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_str(&out.1).unwrap();
    let newest = rows[0]["id"].as_i64().unwrap().to_string();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let out = r.servers[1].cli(&["sessions", "revoke", "--id", &newest]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("3 running servers applied it"), "{out:?}");
    for a in &addrs {
        assert_eq!(verify(a, &dee2).await, 401, "{a} after the CLI returned");
        assert_eq!(verify(a, &dee1).await, 200, "{a}: the other session");
    }

    // `users block`.
    let cy = r.sign_in(1, "cy@example.com").await;
    for a in &addrs {
        assert_eq!(verify(a, &cy).await, 200);
    }
    let out = r.servers[0].cli(&["users", "block", "cy@example.com"]);
    assert!(out.0.success(), "{out:?}");
    for a in &addrs {
        assert_eq!(verify(a, &cy).await, 401, "{a} after the CLI returned");
    }
    // And a blocked address cannot start a sign-in on any of them (no mail goes out).
    let before = r.smtp.messages().len();
    for s in &r.servers {
        let mut b = s.browser();
        assert_eq!(
            b.post_form("/auth", &[("email", "cy@example.com")])
                .await
                .status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        r.smtp.messages().len(),
        before,
        "no mail to a blocked address"
    );
}

/// `authbase keys rotate` on the shared database: every replica publishes the new key
/// by the time the command returns (it signs 6 minutes later; tests/assertion.rs follows
/// a switch through).
#[tokio::test]
async fn a_key_rotation_reaches_every_replica() {
    let r = Replicas::start(|port| test_config(port, "", ""));
    let kids = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let jwks = |addr: String| async move {
        send(
            &addr,
            Method::GET,
            "/.well-known/jwks.json",
            &[],
            Bytes::new(),
        )
        .await
        .body
    };
    let before = kids(&jwks(r.servers[0].addr.clone()).await);
    assert_eq!(before.len(), 1, "one key, made by the first replica");
    for s in &r.servers[1..] {
        assert_eq!(
            kids(&jwks(s.addr.clone()).await),
            before,
            "the others use it too"
        );
    }
    let out = r.servers[2].cli(&["keys", "rotate"]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("3 running servers applied it"), "{out:?}");
    for s in &r.servers {
        let now = kids(&jwks(s.addr.clone()).await);
        assert_eq!(now.len(), 2, "{}: the new key and the retiring one", s.addr);
        assert!(now.contains(&before[0]));
    }
}

/// 300 API messages, 100 accepted by each replica: every one delivered exactly once,
/// though all three replicas send from the one outbox.
#[tokio::test]
async fn api_mail_spread_over_replicas_is_delivered_once_each() {
    let r = Replicas::start(|port| {
        test_config(
            port,
            "",
            "[api]\ntoken_file = \"api_token\"\nlisten = \"127.0.0.1:0\"\n",
        )
    });
    let auth = format!("Bearer {TOKEN}");
    let mut ids = Vec::new();
    for i in 0..300 {
        let api = r.servers[i % 3].api_addr();
        let body = serde_json::json!({
            "email": format!("user{i}@example.com"),
            "create_user": true,
            "subject": format!("Message {i}"),
            "text": "hello",
        });
        let res = send(
            &api,
            Method::POST,
            "/api/email",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
        assert_eq!(res.status, 202, "{}", res.body);
        ids.push(res.json()["id"].as_i64().unwrap());
    }
    let mails = r.smtp.wait_for(300).await;
    // A moment longer: a duplicate would arrive now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = if r.smtp.messages().len() > mails.len() {
        r.smtp.messages()
    } else {
        mails
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &mails {
        *seen.entry(m.header("Subject").unwrap()).or_default() += 1;
    }
    assert_eq!(mails.len(), 300, "each message once");
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    // How the sending was shared (printed; the outbox is one queue, so which replica
    // sends a message does not depend on which accepted it): together, exactly 300.
    let sent_by: Vec<usize> = r
        .servers
        .iter()
        .map(|s| s.logs().matches("mail sent").count())
        .collect();
    eprintln!("messages sent per replica: {sent_by:?}");
    assert_eq!(sent_by.iter().sum::<usize>(), 300, "{sent_by:?}");
}

/// A bot spreading sign-in requests for one address over the replicas meets the same
/// per-address limit as on one server.
#[tokio::test]
async fn a_per_address_limit_holds_across_replicas() {
    let r = Replicas::start(|port| {
        test_config(
            port,
            "",
            "[limits]\nsign_in_per_address = \"3/1h\"\nsign_in_address_gap = \"0\"\nsign_in_per_ip = \"off\"\nsign_in_global = \"off\"\n",
        )
    });
    let mut statuses = Vec::new();
    for i in 0..6 {
        let mut b = r.servers[i % 3].browser();
        statuses.push(
            b.post_form("/auth", &[("email", "dee+spread@example.com")])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "three allowed in all"
    );
    // Another address is not affected.
    let mut b = r.servers[1].browser();
    assert_eq!(
        b.post_form("/auth", &[("email", "eve@example.com")])
            .await
            .status,
        200
    );
}

/// nginx in front of three replicas (an upstream of three servers), under load through
/// the proxy: SIGKILL one replica, and the protected app keeps being served. Failed
/// requests are counted; nginx retries a failed auth subrequest on the next server, so
/// the target is none.
#[tokio::test]
async fn killing_a_replica_under_load_behind_nginx_fails_no_request() {
    let app = EchoApp::start().await;
    let port = free_port();
    let r = Replicas::start(|smtp| proxied_config(smtp, port, ""));
    let upstreams: Vec<&str> = r.servers.iter().map(|s| s.addr.as_str()).collect();
    let proxy = Proxy::start_upstreams(Kind::Nginx, port, &upstreams, &app.addr).await;
    let b = r.sign_in(0, "fay@example.com").await;
    let cookie = format!("session_id={}", b.session().unwrap());
    let host = proxy.host("app");

    let load = |secs: u64| {
        let (addr, host, cookie) = (proxy.addr(), host.clone(), cookie.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let res = send(
                    &addr,
                    Method::GET,
                    "/",
                    &[("host", host.as_str()), ("cookie", cookie.as_str())],
                    Bytes::new(),
                )
                .await;
                if res.status == 200 {
                    ok += 1;
                } else {
                    failed.push(res.status.as_u16());
                }
            }
            (ok, failed)
        })
    };
    let workers: Vec<_> = (0..8).map(|_| load(4)).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut servers = r.servers;
    servers[1].kill();
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "through nginx while one of three replicas was killed: {ok} served, {} failed {failed:?}",
        failed.len()
    );
    assert!(ok > 100, "the load ran ({ok})");
    assert!(failed.is_empty(), "{failed:?}\n{}", proxy.log());
    // The killed one is gone for good, and the two left go on serving.
    assert!(tokio::net::TcpStream::connect(&servers[1].addr)
        .await
        .is_err());
    for _ in 0..10 {
        let res = send(
            &proxy.addr(),
            Method::GET,
            "/",
            &[("host", host.as_str()), ("cookie", cookie.as_str())],
            Bytes::new(),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.body);
    }
}

/// `authbase copy`: a deployment on the SQLite file moves to PostgreSQL; users stay
/// signed in, and the users, their groups and the audit trail come along.
#[tokio::test]
async fn copy_moves_a_sqlite_deployment_to_postgres_with_its_sessions() {
    let smtp = Smtp::start();
    let cfg = test_config(smtp.port, SQLITE_ONLY, "");
    let mut ab = Authbase::start(&cfg);
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "gil@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    assert!(ab
        .cli(&["users", "add", "hal@example.com", "--group", "ops"])
        .0
        .success());
    assert_eq!(verify(&ab.addr, &b).await, 200);
    ab.stop();

    let url = new_postgres_database(&postgres_server());
    let dir = std::mem::replace(&mut ab.dir, tempfile::tempdir().unwrap());
    let on_pg = cfg.replace(
        "database = \"authbase.db\"",
        &format!("database = \"{url}\""),
    );
    // `authbase migrate` on PostgreSQL, as a deployment step would run it: creates the
    // schema, then finds it current.
    let mig = tempfile::tempdir().unwrap();
    std::fs::write(mig.path().join("authbase.toml"), &on_pg).unwrap();
    let out = cli_in(mig.path(), &["migrate"]);
    assert!(
        out.0.success() && out.1.contains("created postgres://"),
        "{out:?}"
    );
    let out = cli_in(mig.path(), &["migrate"]);
    assert!(out.1.contains("the latest"), "{out:?}");
    let out = cli_in(dir.path(), &["copy", "--from", "authbase.db", "--to", &url]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("users"), "{out:?}");
    // Into a database that has rows already: refused, nothing changed.
    let again = cli_in(dir.path(), &["copy", "--from", "authbase.db", "--to", &url]);
    assert!(!again.0.success(), "{again:?}");
    assert!(again.2.contains("not empty"), "{again:?}");

    let pg = Authbase::start_in(dir, &on_pg);
    assert_eq!(
        pg.sql("SELECT COUNT(*) FROM users")[0][0].int(),
        2,
        "in PostgreSQL"
    );
    assert_eq!(verify(&pg.addr, &b).await, 200, "still signed in");
    let out = pg.cli(&["users", "list", "--json"]);
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("gil@example.com") && out.1.contains("hal@example.com"));
    assert!(out.1.contains("ops"), "{}", out.1);
    // New rows get new ids (the identity columns go on after the copied ones).
    let mut c = pg.browser();
    let (_, mail) = request_link(&mut c, &smtp, "ivy@example.com").await;
    assert_eq!(c.get(&mail.link_path()).await.status, 303);
    assert_eq!(verify(&pg.addr, &c).await, 200);
}

/// PostgreSQL goes away (a private server, stopped with its data kept) and comes back:
/// in between, `/readyz` says so and `/verify` fails closed (503, not a cached "signed
/// in") once the revocation log has been unreadable for a few seconds; after, the same
/// session works again without restarting authbase.
#[tokio::test]
async fn a_postgres_outage_fails_closed_and_authbase_recovers() {
    let pg = PrivatePostgres::start(&[]);

    let url = new_postgres_database(&pg.url);
    let smtp = Smtp::start();
    let cfg = test_config(smtp.port, "", "").replace(
        "database = \"authbase.db\"",
        &format!("database = \"{url}\""),
    );
    let ab = Authbase::start(&cfg);
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "oz@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    assert_eq!(verify(&ab.addr, &b).await, 200);

    pg.ctl("pause");
    let start = Instant::now();
    let status = loop {
        let s = verify(&ab.addr, &b).await;
        if s != 200 {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "still 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "PostgreSQL stopped: /verify answered {status} after {:?}",
        start.elapsed()
    );
    assert_eq!(status, 503, "fails closed");
    let ready = send(&ab.addr, Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let mut other = ab.browser();
    let r = other
        .post_form("/auth", &[("email", "pat@example.com")])
        .await;
    assert_eq!(r.status, 503, "a sign-in cannot be stored:\n{}", ab.logs());

    pg.ctl("resume");
    let start = Instant::now();
    loop {
        if verify(&ab.addr, &b).await == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never recovered:\n{}",
            ab.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "PostgreSQL back: /verify 200 again after {:?}",
        start.elapsed()
    );
    let ready = send(&ab.addr, Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let (_, mail) = request_link(&mut other, &smtp, "pat@example.com").await;
    assert_eq!(other.get(&mail.link_path()).await.status, 303);
}

/// TLS to PostgreSQL (a private server whose certificate for 127.0.0.1 a throwaway CA
/// signed): with that CA as `sslrootcert` authbase connects over TLS and works; without
/// it, it refuses the server it cannot verify, with `sslmode=require` and with the
/// default `prefer` alike, and says why.
#[tokio::test]
async fn tls_to_postgres_verifies_the_server_certificate() {
    let pg = PrivatePostgres::start(&["ssl"]);

    let url = new_postgres_database(&pg.url);
    let ca = pg.dir.path().join("ca.crt");
    let smtp = Smtp::start();
    let with = |query: &str| {
        test_config(smtp.port, "", "").replace(
            "database = \"authbase.db\"",
            &format!("database = \"{url}{query}\""),
        )
    };
    for query in ["?sslmode=require", ""] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("authbase.toml"), with(query)).unwrap();
        let out = cli_in(dir.path(), &["migrate"]);
        assert!(
            !out.0.success(),
            "{query:?}: an unverifiable server is refused: {out:?}"
        );
        assert!(
            out.2.to_lowercase().contains("certificate"),
            "{query:?}: {out:?}"
        );
    }
    let ab = Authbase::start(&with(&format!(
        "?sslmode=verify-full&sslrootcert={}",
        ca.display()
    )));
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, &smtp, "tls@example.com").await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    assert_eq!(verify(&ab.addr, &b).await, 200);
    let name = url.rsplit('/').next().unwrap();
    let tls = postgres_sql(
        &url,
        &format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a
           JOIN pg_stat_ssl s ON s.pid = a.pid
          WHERE a.datname = '{name}' AND a.pid <> pg_backend_pid()"
        ),
    );
    let (all, encrypted) = (tls[0][0].int(), tls[0][1].int());
    assert!(all >= 2, "authbase's connections are there: {all}");
    assert_eq!(all, encrypted, "every one of them over TLS");
}
