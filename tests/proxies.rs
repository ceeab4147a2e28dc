//! Forward auth through the real proxies, using the configs in `deploy/` as shipped (only
//! addresses substituted): nginx `auth_request`, Traefik `forwardAuth`, Caddy
//! `forward_auth`, each in front of a real echo app, with real authbase and real SMTP.

mod common;

use bytes::Bytes;
use common::proxy::{free_port, proxied_config, seen, EchoApp, Kind, Proxy};
use common::*;
use hyper::Method;

struct Stack {
    smtp: Smtp,
    ab: Authbase,
    app: EchoApp,
    proxy: Proxy,
}

async fn stack(kind: Kind) -> Stack {
    stack_with(kind, "").await
}

/// A stack whose authbase config has `sections` appended (e.g. `[access]`).
async fn stack_with(kind: Kind, sections: &str) -> Stack {
    let smtp = Smtp::start();
    let app = EchoApp::start().await;
    let port = free_port();
    let cfg = proxied_config(smtp.port, port, sections);
    let ab = Authbase::start(&cfg);
    let proxy = Proxy::start(kind, port, &ab.addr, &app.addr).await;
    Stack {
        smtp,
        ab,
        app,
        proxy,
    }
}

impl Stack {
    fn browser(&self, site: &str) -> Browser {
        let mut b = Browser::new(&self.proxy.addr());
        b.host = Some(self.proxy.host(site));
        b
    }

    /// Sign `b` in through the portal, the way a browser does after the redirect.
    async fn sign_in(&self, b: &mut Browser, email: &str, rd: Option<&str>) -> String {
        let site = b.host.clone();
        b.host = Some(self.proxy.host("auth"));
        b.origin = Some(format!("http://{}", self.proxy.host("auth")));
        let before = self.smtp.messages().len();
        let mut form = vec![("email", email)];
        if let Some(rd) = rd {
            form.push(("rd", rd));
        }
        let r = b.post_form("/auth", &form).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let sc = r.headers.get("set-cookie").unwrap().to_str().unwrap();
        assert!(sc.contains("Domain=example.com"), "{sc}");
        let mail = self.smtp.wait_for(before + 1).await[before].clone();
        assert!(
            mail.link().starts_with(&format!(
                "http://auth.example.com:{}/sign_in/",
                self.proxy.port
            )),
            "{}",
            mail.link()
        );
        let r = b.get(&mail.link_path()).await;
        assert_eq!(r.status, 303, "{}", r.body);
        b.host = site;
        b.origin = None;
        r.header("location").unwrap().to_string()
    }
}

/// Split `http://host:port/path?q` into (host:port, /path?q).
fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let i = rest.find('/').unwrap_or(rest.len());
    (rest[..i].to_string(), rest[i..].to_string())
}

const FORGED: &[(&str, &str)] = &[
    ("x-user-email", "forged@evil.example"),
    ("x-user-id", "999"),
    ("x-user-id", "998"),
    ("x-user_email", "forged2@evil.example"),
    ("x_user_email", "forged3@evil.example"),
    ("x_user-id", "997"),
    ("x-user-assertion", "forged.assertion.a"),
    ("x-user_assertion", "forged.assertion.b"),
    ("x_user_assertion", "forged.assertion.c"),
];

/// Spellings of the identity headers with other separators than `-` and `_`, which a
/// PHP, WSGI or Rack app reads as the real ones. nginx drops such names, Traefik deletes
/// aliases of the headers it sets (`aliasHeadersStrategy: delete`), Caddy passes them on
/// and authbase refuses the `/verify` (400): never do they reach the app.
const ALIASED: &[(&str, &str)] = &[
    ("x.user.email", "alias@evil.example"),
    ("x~user~email", "alias2@evil.example"),
    ("x!user!id", "996"),
    ("x.user.assertion", "alias.assertion.a"),
    ("x.user.groups", "admins"),
];

async fn full_flow(kind: Kind) {
    let s = stack(kind).await;
    let mut b = s.browser("app");

    // Anonymous page request: redirected to the portal, carrying the original URL.
    let r = b.get("/deep/page?x=1&y=two").await;
    assert_eq!(r.status, 302, "{kind:?}: {}\n{}", r.body, s.proxy.log());
    let loc = r.header("location").unwrap().to_string();
    let want_rd = format!(
        "http://app.example.com:{}/deep/page?x=1&y=two",
        s.proxy.port
    );
    let (host, path) = split(&loc);
    assert_eq!(host, s.proxy.host("auth"), "{loc}");
    let rd: String = url::form_urlencoded::parse(path.trim_start_matches("/?").as_bytes())
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned())
        .expect("rd in the sign-in URL");
    assert_eq!(rd, want_rd, "the & parameters survive");
    assert_eq!(s.app.hits(), 0, "the app was never reached");

    // API calls get 401, not a redirect.
    let r = b
        .request(
            Method::GET,
            "/api/data",
            &[("accept", "application/json")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401, "{kind:?}");
    let r = b
        .request(Method::POST, "/api/data", &[], Bytes::from("x"))
        .await;
    assert_eq!(r.status, 401, "{kind:?}");
    let r = b
        .request(
            Method::GET,
            "/api/data",
            &[("x-requested-with", "XMLHttpRequest")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401, "{kind:?}");

    // Forged identity without a session: still the sign-in redirect, app not reached.
    let r = b.request(Method::GET, "/", FORGED, Bytes::new()).await;
    assert_eq!(r.status, 302, "{kind:?}");
    assert_eq!(s.app.hits(), 0);

    // The portal shows the sign-in page with the return URL; sign in; land on the page.
    let mut portal = b.clone();
    portal.host = Some(host.clone());
    let page = portal.get(&path).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.input_value("rd").as_deref(),
        Some(want_rd.as_str()),
        "{}",
        page.body
    );
    let landing = s.sign_in(&mut b, "Alice@Example.com", Some(&rd)).await;
    assert_eq!(
        landing, want_rd,
        "{kind:?}: back to the page first asked for"
    );

    // Signed in: the app gets the identity, exactly once each, and nothing forged.
    let (_, p) = split(&landing);
    let r = b.request(Method::GET, &p, FORGED, Bytes::new()).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.body);
    let echo = r.json();
    assert_eq!(echo["path"], "/deep/page?x=1&y=two");
    assert_eq!(
        seen(&echo, "x-user-email"),
        vec!["Alice@example.com".to_string()],
        "{kind:?}: {echo}"
    );
    let ids = seen(&echo, "x-user-id");
    assert_eq!(ids.len(), 1, "{kind:?}: {echo}");
    assert!(ids[0].parse::<i64>().is_ok() && ids[0] != "999" && ids[0] != "998");
    // authbase's signed assertion, once; none of the forged ones (tests/assertion.rs
    // verifies its signature and claims).
    let assertions = seen(&echo, "x-user-assertion");
    assert_eq!(assertions.len(), 1, "{kind:?}: {echo}");
    assert!(
        assertions[0].starts_with("eyJ") && assertions[0].split('.').count() == 3,
        "{kind:?}: {echo}"
    );

    // Other separators: dropped by the proxy, or the request is refused by authbase.
    let hits = s.app.hits();
    let r = b.request(Method::GET, &p, ALIASED, Bytes::new()).await;
    match kind {
        Kind::Nginx | Kind::Traefik => {
            assert_eq!(r.status, 200, "{kind:?}: {}", r.body);
            let echo = r.json();
            assert_eq!(
                seen(&echo, "x-user-email"),
                vec!["Alice@example.com".to_string()],
                "{kind:?}: {echo}"
            );
            assert_eq!(seen(&echo, "x-user-id"), ids, "{kind:?}: {echo}");
            assert_eq!(seen(&echo, "x-user-assertion").len(), 1, "{kind:?}: {echo}");
            assert!(seen(&echo, "x-user-groups").is_empty(), "{kind:?}: {echo}");
        }
        Kind::Caddy => {
            assert_eq!(r.status, 400, "{kind:?}: {}", r.body);
            assert_eq!(s.app.hits(), hits, "{kind:?}: the app was not reached");
        }
    }

    // Single sign-on: the other protected host accepts the same session.
    let mut wiki = b.clone();
    wiki.host = Some(s.proxy.host("wiki"));
    let r = wiki.get("/w").await;
    assert_eq!(r.status, 200, "{kind:?}");
    assert_eq!(
        seen(&r.json(), "x-user-email"),
        vec!["Alice@example.com".to_string()]
    );

    // Sign out from a page on the app (a credentialed fetch to the portal): ends it everywhere.
    let mut spa = b.clone();
    spa.host = Some(s.proxy.host("auth"));
    let origin = format!("http://{}", s.proxy.host("app"));
    let r = spa
        .request(
            Method::POST,
            "/sign_out",
            &[("origin", &origin), ("accept", "application/json")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(origin.as_str())
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // Use the old cookie value on purpose: the session is dead server-side.
    let r = b.get("/deep/page").await;
    assert_eq!(r.status, 302, "{kind:?}: signed out on app");
    let r = wiki.get("/w").await;
    assert_eq!(r.status, 302, "{kind:?}: signed out on wiki");
}

#[tokio::test]
async fn nginx_full_flow() {
    full_flow(Kind::Nginx).await;
}

#[tokio::test]
async fn traefik_full_flow() {
    full_flow(Kind::Traefik).await;
}

#[tokio::test]
async fn caddy_full_flow() {
    full_flow(Kind::Caddy).await;
}

const RULES: &str = r#"
[access.groups]
wiki-editors = ["alice@example.com"]

[[access.rules]]
host = "app.example.com"
paths = ["/public/"]
policy = "bypass"

[[access.rules]]
host = "wiki.example.com"
groups = ["wiki-editors"]
"#;

const FORGED_GROUPS: &[(&str, &str)] = &[
    ("x-user-groups", "admins"),
    ("x-user_groups", "admins"),
    ("x_user_groups", "admins"),
    ("x-user-email", "forged@evil.example"),
    ("x-user-assertion", "forged.assertion.a"),
    ("x_user-assertion", "forged.assertion.b"),
];

/// `[access]` rules through each real proxy: a public path reaches the app without a
/// session and without identity; a group-only host lets the member in with
/// `X-User-Groups` and shows everyone else authbase's 403 page; forged group headers
/// never reach the app.
async fn access_rules(kind: Kind) {
    let s = stack_with(kind, RULES).await;

    // Public path: no session needed, no identity passed, forgeries stripped.
    let mut anon = s.browser("app");
    let r = anon
        .request(Method::GET, "/public/logo.svg", FORGED_GROUPS, Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{kind:?}: {}\n{}", r.body, s.proxy.log());
    let echo = r.json();
    assert_eq!(echo["path"], "/public/logo.svg");
    for h in [
        "x-user-groups",
        "x-user-email",
        "x-user-id",
        "x-user-assertion",
    ] {
        assert!(seen(&echo, h).is_empty(), "{kind:?}: {h} in {echo}");
    }
    // Only the public path: the rest of the host still needs a session.
    let r = anon.get("/private").await;
    assert_eq!(r.status, 302, "{kind:?}");
    let r = anon.get("/public/../private").await;
    assert_ne!(r.status, 200, "{kind:?}: {}", r.body);
    let hits = s.app.hits();

    // A group member: in, with X-User-Groups (and no forged value).
    let mut alice = s.browser("wiki");
    s.sign_in(&mut alice, "alice@example.com", None).await;
    let r = alice
        .request(Method::GET, "/w/page", FORGED_GROUPS, Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.body);
    let echo = r.json();
    assert_eq!(
        seen(&echo, "x-user-groups"),
        vec!["wiki-editors".to_string()],
        "{kind:?}: {echo}"
    );
    assert_eq!(
        seen(&echo, "x-user-email"),
        vec!["alice@example.com".to_string()]
    );

    // Someone else: the 403 page, from authbase, through the proxy; the app not reached.
    let mut bob = s.browser("wiki");
    s.sign_in(&mut bob, "bob@example.com", None).await;
    let before = s.app.hits();
    let r = bob
        .request(
            Method::GET,
            "/w/page",
            &[("accept", "text/html")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 403, "{kind:?}: {}", r.body);
    assert!(
        r.body.contains("No access to wiki.example.com"),
        "{kind:?}: {}",
        r.body
    );
    assert!(r.body.contains("bob@example.com"), "{kind:?}: {}", r.body);
    assert_eq!(s.app.hits(), before, "{kind:?}: the app was not reached");
    // Bob elsewhere: in, without groups, and his forged groups are stripped.
    let mut bob_app = bob.clone();
    bob_app.host = Some(s.proxy.host("app"));
    let r = bob_app
        .request(Method::GET, "/x", FORGED_GROUPS, Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.body);
    let echo = r.json();
    assert!(seen(&echo, "x-user-groups").is_empty(), "{kind:?}: {echo}");
    assert_eq!(
        seen(&echo, "x-user-email"),
        vec!["bob@example.com".to_string()]
    );
    assert!(s.app.hits() > hits);
}

#[tokio::test]
async fn nginx_access_rules() {
    access_rules(Kind::Nginx).await;
}

#[tokio::test]
async fn traefik_access_rules() {
    access_rules(Kind::Traefik).await;
}

#[tokio::test]
async fn caddy_access_rules() {
    access_rules(Kind::Caddy).await;
}

/// The portal's own pages work through each proxy for a page on another subdomain:
/// CORS with credentials for allowed origins, never `*`, never an unlisted origin.
#[tokio::test]
async fn spa_cors_through_nginx() {
    let s = stack(Kind::Nginx).await;
    let mut b = s.browser("auth");
    let ok = format!("http://{}", s.proxy.host("app"));
    let r = b
        .request(
            Method::OPTIONS,
            "/auth",
            &[
                ("origin", &ok),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(ok.as_str()));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = b
        .request(
            Method::GET,
            "/me",
            &[("origin", "https://evil.example.org")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = b
        .request(
            Method::OPTIONS,
            "/auth",
            &[
                ("origin", "https://evil.example.org"),
                ("access-control-request-method", "POST"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    // A sign-in from the app's page with the original snippet's multipart FormData.
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nspa@example.com\r\n--b0undary--\r\n";
    let r = b
        .request(
            Method::POST,
            "/auth",
            &[
                ("origin", &ok),
                ("content-type", "multipart/form-data; boundary=b0undary"),
            ],
            Bytes::from(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some(ok.as_str()));
    s.smtp.wait_for(1).await;
    // A cross-site one is refused.
    let r = s
        .browser("auth")
        .request(
            Method::POST,
            "/auth",
            &[
                ("origin", "https://evil.example.org"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Bytes::from("email=victim%40example.com"),
        )
        .await;
    assert_eq!(r.status, 403);
    let _ = &s.ab;
}

/// The compose copies of the proxy configs are the tested files with only the two
/// upstream addresses changed (deploy/compose/README.md says how to regenerate them).
#[test]
fn compose_copies_match_the_tested_configs() {
    for (orig, copy) in [
        ("nginx/nginx.conf", "compose/nginx.conf"),
        ("traefik/traefik.yml", "compose/traefik.yml"),
        ("traefik/dynamic.yml", "compose/dynamic.yml"),
        ("caddy/Caddyfile", "compose/Caddyfile"),
    ] {
        let o = std::fs::read_to_string(repo().join("deploy").join(orig)).unwrap();
        let c = std::fs::read_to_string(repo().join("deploy").join(copy)).unwrap();
        let body: String = c.lines().skip(2).map(|l| format!("{l}\n")).collect();
        let expected = o
            .replace("127.0.0.1:9091", "authbase:9091")
            .replace("127.0.0.1:8080", "app:8080");
        assert_eq!(
            body, expected,
            "deploy/{copy} is out of date with deploy/{orig}"
        );
    } // The replicas demo: the same nginx config with an upstream of three.
    let o = std::fs::read_to_string(repo().join("deploy/nginx/nginx.conf")).unwrap();
    let c = std::fs::read_to_string(repo().join("deploy/compose/replicas-nginx.conf")).unwrap();
    let body: String = c.lines().skip(2).map(|l| format!("{l}\n")).collect();
    let expected = o
        .replace(
            "        server 127.0.0.1:9091;",
            "        server authbase-1:9091;\n        server authbase-2:9091;\n        server authbase-3:9091;",
        )
        .replace("127.0.0.1:8080", "app:8080");
    assert_eq!(
        body, expected,
        "deploy/compose/replicas-nginx.conf is out of date with deploy/nginx/nginx.conf"
    );
}

/// deploy/examples/notify_app.py behind nginx: the signed-in user asks the app for an
/// export, the app calls authbase's email API (on its own listener) with the user id the
/// proxy gave it, and the real SMTP server gets the message with the attachment.
#[tokio::test]
async fn example_app_emails_the_signed_in_user_through_the_api() {
    let token = "example-app-token-0123456789abcdef0123";
    let smtp = Smtp::start();
    let port = free_port();
    let cfg = proxied_config(
        smtp.port,
        port,
        "[api]\ntoken_file = \"api_token\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api_token"), token).unwrap();
    let ab = Authbase::start_in(dir, &cfg);
    let app_port = free_port();
    let mut app = std::process::Command::new("python3")
        .arg(repo().join("deploy/examples/notify_app.py"))
        .env("PORT", app_port.to_string())
        .env("AUTHBASE_API_URL", format!("http://{}", ab.api_addr()))
        .env("AUTHBASE_API_TOKEN", token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(app.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("notify app on"), "{line}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _app = Kill(app);
    let proxy = Proxy::start(
        Kind::Nginx,
        port,
        &ab.addr,
        &format!("127.0.0.1:{app_port}"),
    )
    .await;
    let s = Stack {
        smtp,
        ab,
        app: EchoApp::start().await,
        proxy,
    };
    let mut b = s.browser("app");
    // Not signed in: the proxy stops the POST before the app.
    let r = b.request(Method::POST, "/export", &[], Bytes::new()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    s.sign_in(&mut b, "ann@example.com", None).await;
    let r = b.request(Method::POST, "/export", &[], Bytes::new()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.body.contains("emailing your export to ann@example.com"),
        "{}",
        r.body
    );
    let mails = s.smtp.wait_for(2).await;
    let m = &mails[1];
    assert_eq!(m.header("Subject").as_deref(), Some("Your export is ready"));
    assert!(
        m.envelope.contains("RCPT TO ann@example.com"),
        "{}",
        m.envelope
    );
    assert!(m.raw.contains("filename=\"export.csv\""), "{}", m.raw);
    // The public portal does not serve the API (it has a listener of its own).
    let mut portal = s.browser("auth");
    let r = portal
        .request(
            Method::POST,
            "/api/email",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
}
