//! `X-User-Assertion` and `/.well-known/jwks.json`, end to end: real authbase, real
//! nginx from `deploy/`, a real echo app, and verification by independent
//! implementations — PyJWT (with `PyJWKClient` fetching the JWKS over HTTP) and the
//! examples in `deploy/examples/` (Python, and Node with `jose` installed from npm into
//! `target/`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::{free_port, proxied_config, seen, EchoApp, Kind, Proxy};
use common::*;
use hyper::Method;

const SECTIONS: &str = r#"
[access.groups]
admins = ["alice@example.com"]

[[access.rules]]
host = "app.example.com"
paths = ["/public/"]
policy = "bypass"
"#;

const FORGED: &[(&str, &str)] = &[
    ("x-user-assertion", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."),
    ("x-user_assertion", "forged.assertion.b"),
    ("x_user-assertion", "forged.assertion.c"),
    ("x_user_assertion", "forged.assertion.d"),
];

struct Stack {
    smtp: Smtp,
    ab: Authbase,
    _app: EchoApp,
    proxy: Proxy,
}

async fn nginx_stack() -> Stack {
    let smtp = Smtp::start();
    let app = EchoApp::start().await;
    let port = free_port();
    let cfg = proxied_config(smtp.port, port, SECTIONS);
    let ab = Authbase::start(&cfg);
    let proxy = Proxy::start(Kind::Nginx, port, &ab.addr, &app.addr).await;
    Stack {
        smtp,
        ab,
        _app: app,
        proxy,
    }
}

impl Stack {
    fn browser(&self, site: &str) -> Browser {
        let mut b = Browser::new(&self.proxy.addr());
        b.host = Some(self.proxy.host(site));
        b
    }

    async fn sign_in(&self, b: &mut Browser, email: &str) {
        let site = b.host.clone();
        b.host = Some(self.proxy.host("auth"));
        b.origin = Some(format!("http://{}", self.proxy.host("auth")));
        let before = self.smtp.messages().len();
        let r = b.post_form("/auth", &[("email", email)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mail = self.smtp.wait_for(before + 1).await[before].clone();
        let r = b.get(&mail.link_path()).await;
        assert_eq!(r.status, 303, "{}", r.body);
        b.host = site;
        b.origin = None;
    }

    fn jwks_url(&self) -> String {
        self.ab.url("/.well-known/jwks.json")
    }

    fn issuer(&self) -> String {
        format!("http://auth.example.com:{}", self.proxy.port)
    }

    /// The one assertion the app saw for this request; its other identity headers too.
    async fn assertion(&self, b: &mut Browser, path: &str) -> (String, serde_json::Value) {
        let r = b.request(Method::GET, path, FORGED, Bytes::new()).await;
        assert_eq!(r.status, 200, "{}\n{}", r.body, self.proxy.log());
        let echo = r.json();
        let a = seen(&echo, "x-user-assertion");
        assert_eq!(
            a.len(),
            1,
            "exactly one assertion, not a forged one: {echo}"
        );
        assert!(!a[0].starts_with("eyJhbGciOiJub25l") && !a[0].starts_with("forged"));
        (a[0].clone(), echo)
    }
}

/// Run a command with a bounded wait: (exit success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// PyJWT, run by the test: fetch the JWKS over HTTP (`PyJWKClient`), pick the key by
/// `kid`, verify signature, `iss`, `aud` and `exp` (with `leeway` seconds; negative
/// pretends it is that much later, to check expiry without waiting). Prints `{"header", "claims"}` or the error's class name.
const PYJWT: &str = r#"
import json, sys, jwt
jwks_url, iss, aud, leeway, token = sys.argv[1:]
try:
    key = jwt.PyJWKClient(jwks_url, cache_keys=False).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"], issuer=iss, audience=aud,
                        leeway=float(leeway),
                        options={"require": ["iss", "aud", "sub", "iat", "exp"],
                                 # "later" makes iat look fine: only exp is in question
                                 "verify_iat": float(leeway) >= 0})
    print(json.dumps({"header": jwt.get_unverified_header(token), "claims": claims}))
except jwt.PyJWTError as e:
    print(type(e).__name__)
    sys.exit(1)
"#;

fn pyjwt(s: &Stack, aud: &str, leeway: i64, token: &str) -> Result<serde_json::Value, String> {
    let (ok, out, err) = run(Command::new(venv().join("bin/python"))
        .args(["-c", PYJWT, &s.jwks_url(), &s.issuer(), aud])
        .arg(leeway.to_string())
        .arg(token));
    if ok {
        Ok(serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
    } else {
        assert!(!out.is_empty(), "PyJWT failed to run: {err}");
        Err(out.trim().to_string())
    }
}

fn tamper(token: &str) -> String {
    // Another user's address in a well-formed payload: the signature no longer matches.
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let forged = payload.replace("@example.com", "@example.org");
    assert_ne!(forged, payload);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged),
        parts[2]
    )
}

#[tokio::test]
async fn the_assertion_reaches_the_app_through_nginx_and_verifies_with_pyjwt() {
    let s = nginx_stack().await;
    let app_host = s.proxy.host("app");
    let wiki_host = s.proxy.host("wiki");
    assert!(app_host.ends_with(&format!(":{}", s.proxy.port)));

    let mut b = s.browser("app");
    s.sign_in(&mut b, "alice@example.com").await;
    let (token, echo) = s.assertion(&mut b, "/page").await;

    // Verified by PyJWT against the JWKS fetched over HTTP; `aud` is the requested host.
    let v = pyjwt(&s, &app_host, 0, &token).expect("a valid assertion");
    let (h, c) = (&v["header"], &v["claims"]);
    assert_eq!(h["alg"], "EdDSA");
    assert_eq!(h["typ"], "JWT");
    let kid = h["kid"].as_str().unwrap().to_string();
    assert_eq!(c["iss"], s.issuer().as_str());
    assert_eq!(c["aud"], app_host.as_str());
    assert_eq!(
        c["sub"].as_str().unwrap(),
        seen(&echo, "x-user-id")[0],
        "sub is the user id, as a string"
    );
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["groups"], serde_json::json!(["admins"]));
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert_eq!(exp - iat, 120, "assertion.ttl defaults to 2m");
    let sid = c["sid"].as_str().unwrap();
    assert_eq!(sid.len(), 22);
    let cookie = b.session().unwrap().clone();
    assert!(!token.contains(cookie.as_str()) && !cookie.contains(sid));
    let mut names: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["aud", "email", "exp", "groups", "iat", "iss", "sid", "sub"],
        "exactly the documented claims (no jti: a token serves many requests)"
    );

    // The same session and host gets the same token while it is fresh (signed once).
    let (again, _) = s.assertion(&mut b, "/other").await;
    assert_eq!(again, token);

    // Rejected: another host's audience, a tampered token, an expired one.
    assert_eq!(
        pyjwt(&s, &wiki_host, 0, &token).unwrap_err(),
        "InvalidAudienceError"
    );
    assert_eq!(
        pyjwt(&s, &app_host, 0, &tamper(&token)).unwrap_err(),
        "InvalidSignatureError"
    );
    assert_eq!(
        pyjwt(&s, &app_host, -(exp - iat + 10), &token).unwrap_err(),
        "ExpiredSignatureError"
    );

    // The other host gets its own token, for its own audience; A's is no good on B.
    let mut wiki = b.clone();
    wiki.host = Some(wiki_host.clone());
    let (wiki_token, _) = s.assertion(&mut wiki, "/w").await;
    assert_ne!(wiki_token, token);
    let w = pyjwt(&s, &wiki_host, 0, &wiki_token).unwrap();
    assert_eq!(w["claims"]["aud"], wiki_host.as_str());
    assert_eq!(w["claims"]["sid"], sid, "one session, one sid");
    assert_eq!(
        pyjwt(&s, &app_host, 0, &wiki_token).unwrap_err(),
        "InvalidAudienceError"
    );

    // A public (bypass) path: no identity, so no assertion, and no forged one either.
    let mut anon = s.browser("app");
    let r = anon
        .request(Method::GET, "/public/x", FORGED, Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    assert!(seen(&r.json(), "x-user-assertion").is_empty(), "{}", r.body);
    // Signed in, on a bypass path: still none (bypass answers carry no identity).
    let r = b
        .request(Method::GET, "/public/x", FORGED, Bytes::new())
        .await;
    assert!(seen(&r.json(), "x-user-assertion").is_empty(), "{}", r.body);

    // The JWKS: public, cacheable, the one key.
    let r = jwks(&s).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let keys = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], kid.as_str());

    // Sign out: no assertion any more, neither through nginx nor from /verify itself.
    let mut portal = b.clone();
    portal.host = Some(s.proxy.host("auth"));
    let origin = format!("http://{}", s.proxy.host("auth"));
    let r = portal
        .request(
            Method::POST,
            "/sign_out",
            &[("origin", &origin), ("accept", "application/json")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = b.get("/page").await;
    assert_eq!(r.status, 302, "signed out: the app is not reached");
    let r = send(
        &s.ab.addr,
        Method::GET,
        "/verify",
        &[
            ("cookie", &format!("session_id={cookie}")),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", &app_host),
            ("x-forwarded-uri", "/page"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.header("x-user-assertion").is_none());
}

/// `GET /.well-known/jwks.json` from authbase itself.
async fn jwks(s: &Stack) -> Resp {
    send(
        &s.ab.addr,
        Method::GET,
        "/.well-known/jwks.json",
        &[],
        Bytes::new(),
    )
    .await
}

/// The kids in the JWKS, as served.
async fn published(s: &Stack) -> Vec<String> {
    jwks(s).await.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid(s: &Stack, aud: &str, token: &str) -> String {
    pyjwt(s, aud, 0, token).unwrap()["header"]["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `keys rotate` publishes the new key at once and signs with it from `--delay` on (6
/// minutes by default, so that apps have refetched the JWKS before they meet the new
/// `kid`); `--now` signs with it at once, the cached assertions dropped. Old tokens
/// verify throughout.
#[tokio::test]
async fn after_keys_rotate_old_tokens_verify_and_new_ones_use_the_new_key() {
    let s = nginx_stack().await;
    let (app_host, wiki_host) = (s.proxy.host("app"), s.proxy.host("wiki"));
    let mut b = s.browser("app");
    s.sign_in(&mut b, "bob@example.com").await;
    let (old, _) = s.assertion(&mut b, "/").await;
    let old_kid = kid(&s, &app_host, &old);

    // Published ahead.
    let (ok, out, err) = s.ab.cli(&["keys", "rotate", "--delay", "3s"]);
    assert!(ok.success(), "{out}{err}");
    let switch = Instant::now() + Duration::from_secs(3);
    assert!(out.contains("is published now and signs from"), "{out}");
    assert!(out.contains("1 running server applied it"), "{out}{err}");
    let (ok, out, _) = s.ab.cli(&["keys", "list", "--json"]);
    assert!(ok.success());
    let keys: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{out}");
    let next = keys.iter().find(|k| k["kid"] != old_kid.as_str()).unwrap();
    let next_kid = next["kid"].as_str().unwrap().to_string();
    assert_eq!(next["active"], false, "{out}");
    assert_eq!(next["retire_at"], serde_json::Value::Null, "{out}");
    let current = keys.iter().find(|k| k["kid"] == old_kid.as_str()).unwrap();
    assert_eq!(current["active"], true, "{out}");
    assert_eq!(
        current["retire_at"].as_i64().unwrap(),
        next["active_from"].as_i64().unwrap() + 3600,
        "{out}"
    );
    let (_, table, _) = s.ab.cli(&["keys", "list"]);
    assert!(table.contains("next: published, signs from"), "{table}");
    assert!(table.contains("active until the next key signs"), "{table}");
    assert_eq!(published(&s).await, vec![next_kid.clone(), old_kid.clone()]);
    // Until the switch, the old key signs, and cached tokens are kept.
    assert_eq!(s.assertion(&mut b, "/").await.0, old, "the cached token");
    b.host = Some(wiki_host.clone());
    let (wiki, _) = s.assertion(&mut b, "/").await;
    assert_eq!(
        kid(&s, &wiki_host, &wiki),
        old_kid,
        "signed before the switch"
    );
    // From the switch on, the new key signs (a host this session has no token for yet).
    tokio::time::sleep_until((switch + Duration::from_millis(1100)).into()).await;
    b.host = Some(s.proxy.host("app"));
    s.sign_in(&mut b, "carl@example.com").await;
    let (after, _) = s.assertion(&mut b, "/").await;
    assert_eq!(
        kid(&s, &app_host, &after),
        next_kid,
        "signed after the switch"
    );
    let (ok, out, _) = s.ab.cli(&["keys", "list", "--json"]);
    assert!(ok.success());
    let keys: serde_json::Value = serde_json::from_str(&out).unwrap();
    let active: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{out}");
    assert_eq!(active[0]["kid"], next_kid.as_str(), "{out}");
    let (_, table, _) = s.ab.cli(&["keys", "list"]);
    assert!(table.contains("retiring, published until"), "{table}");
    // The old tokens still verify: their key is still published.
    assert_eq!(kid(&s, &app_host, &old), old_kid);
    assert_eq!(kid(&s, &wiki_host, &wiki), old_kid);

    // --now: the very next assertion, for the same session and host, uses the new key.
    let (ok, out, err) = s.ab.cli(&["keys", "rotate", "--now"]);
    assert!(ok.success(), "{out}{err}");
    assert!(out.contains("signs now"), "{out}");
    assert!(out.contains("1 running server applied it"), "{out}{err}");
    let newest = published(&s).await[0].clone();
    assert!(newest != next_kid && newest != old_kid);
    let (now, _) = s.assertion(&mut b, "/").await;
    assert_ne!(now, after);
    assert_eq!(kid(&s, &app_host, &now), newest);
    assert_eq!(
        published(&s).await,
        vec![newest.clone(), next_kid.clone(), old_kid.clone()],
        "newest first"
    );
    // And the new token is then reused like any other.
    let (again, _) = s.assertion(&mut b, "/x").await;
    assert_eq!(again, now);
    assert_eq!(kid(&s, &app_host, &after), next_kid);
    // A plain rotate publishes 6 minutes ahead, and the cached token stays.
    let (ok, out, err) = s.ab.cli(&["keys", "rotate"]);
    assert!(ok.success(), "{out}{err}");
    assert!(out.contains("(in 6m)"), "{out}");
    assert_eq!(s.assertion(&mut b, "/").await.0, now, "still cached");
    let (ok, out, _) = s.ab.cli(&["keys", "list", "--json"]);
    assert!(ok.success());
    let keys: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 4, "{out}");
    assert_eq!(keys[3]["next"], true, "{out}");
    assert_eq!(keys[2]["kid"], newest.as_str(), "{out}");
    assert_eq!(keys[2]["active"], true, "{out}");
    // Bad options are refused before anything changes.
    let (ok, _, err) = s.ab.cli(&["keys", "rotate", "--delay", "soon"]);
    assert_eq!(ok.code(), Some(65), "{err}");
    assert!(err.contains("--delay"), "{err}");
    let (ok, _, err) = s.ab.cli(&["keys", "rotate", "--now", "--delay", "1m"]);
    assert_eq!(ok.code(), Some(2), "{err}");
    assert_eq!(published(&s).await.len(), 4);
}

/// An app that verifies with PyJWT's `PyJWKClient`, as the Python example does, in one
/// long-lived process: its key set cached for `lifespan` seconds, and refetched for an
/// unknown `kid` only after PyJWT's cool-down (30 s). Reads a token a line, answers
/// `ok KID` or `rejected ERROR`.
const LONG_LIVED_APP: &str = r#"
import sys, jwt
jwks_url, iss, aud, lifespan = sys.argv[1:]
client = jwt.PyJWKClient(jwks_url, lifespan=float(lifespan))
for line in sys.stdin:
    token = line.strip()
    try:
        key = client.get_signing_key_from_jwt(token)
        jwt.decode(token, key.key, algorithms=["EdDSA"], issuer=iss, audience=aud)
        print("ok", jwt.get_unverified_header(token)["kid"], flush=True)
    except jwt.PyJWTError as e:
        print("rejected", type(e).__name__, e, flush=True)
"#;

struct LongLivedApp {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl LongLivedApp {
    fn start(s: &Stack, aud: &str, lifespan: u64) -> LongLivedApp {
        let mut child = Command::new(venv().join("bin/python"))
            .args(["-c", LONG_LIVED_APP, &s.jwks_url(), &s.issuer(), aud])
            .arg(lifespan.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        LongLivedApp { child, out }
    }

    fn check(&mut self, token: &str) -> String {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{token}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the app exited");
        line.trim().to_string()
    }
}

impl Drop for LongLivedApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Across a `keys rotate`, an app that keeps its key set cached (for less than the time
/// the new key is published ahead: here 5 s against `--delay 6s`, in production 5 min
/// against 6) accepts every token: tokens issued right after the rotation still carry
/// the old `kid`, which it holds, and by the time the new key signs, its cache has been
/// fetched again with that key in it. With `--now` instead, the token right after is
/// refused (`PyJWKClientError`, PyJWT's 30 s cool-down), which is what a new-user pass
/// saw before rotation published ahead.
#[tokio::test]
async fn an_app_with_a_cached_key_set_accepts_every_token_across_a_rotation() {
    let s = nginx_stack().await;
    let app_host = s.proxy.host("app");
    let mut b = s.browser("app");
    s.sign_in(&mut b, "dora@example.com").await;
    let (first, _) = s.assertion(&mut b, "/").await;
    let old_kid = kid(&s, &app_host, &first);
    let mut app = LongLivedApp::start(&s, &app_host, 5);
    assert_eq!(app.check(&first), format!("ok {old_kid}"));

    let (ok, out, err) = s.ab.cli(&["keys", "rotate", "--delay", "6s"]);
    assert!(ok.success(), "{out}{err}");
    let switch = Instant::now() + Duration::from_secs(6);
    // Right after: a new session's token is still signed with the key the app holds.
    s.sign_in(&mut b, "ed@example.com").await;
    let (right_after, _) = s.assertion(&mut b, "/").await;
    assert_eq!(app.check(&right_after), format!("ok {old_kid}"));
    // After the switch: the new key signs, and the app has it.
    tokio::time::sleep_until((switch + Duration::from_millis(1100)).into()).await;
    s.sign_in(&mut b, "flo@example.com").await;
    let (after, _) = s.assertion(&mut b, "/").await;
    let new_kid = kid(&s, &app_host, &after);
    assert_ne!(new_kid, old_kid);
    assert_eq!(app.check(&after), format!("ok {new_kid}"));
    // And the tokens from before the switch still verify in it.
    assert_eq!(app.check(&right_after), format!("ok {old_kid}"));
}

/// The examples in deploy/examples, run on a real token: Python (PyJWT), Node (`jose`,
/// installed from npm into target/) and Go (built offline against Debian's golang-jwt).
#[tokio::test]
async fn the_python_node_and_go_examples_verify_a_real_token() {
    let s = nginx_stack().await;
    let app_host = s.proxy.host("app");
    let wiki_host = s.proxy.host("wiki");
    let mut b = s.browser("app");
    s.sign_in(&mut b, "carol@example.com").await;
    let (token, _) = s.assertion(&mut b, "/").await;
    let (jwks, iss) = (s.jwks_url(), s.issuer());

    let python = |aud: &str, token: &str| {
        run(Command::new(venv().join("bin/python"))
            .arg(repo().join("deploy/examples/verify_assertion.py"))
            .args([&jwks, &iss, aud, token]))
    };
    let (ok, out, err) = python(&app_host, &token);
    assert!(ok, "{out}{err}");
    let claims: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(claims["email"], "carol@example.com");
    let (ok, _, err) = python(&wiki_host, &token);
    assert!(!ok && err.contains("InvalidAudienceError"), "{err}");
    let says = format!("(the token says aud \"{app_host}\")");
    assert!(err.contains(&says), "{err}");
    let (ok, _, err) = python(&app_host, &tamper(&token));
    assert!(!ok && err.contains("InvalidSignatureError"), "{err}");

    let dir = node_example();
    let node = |aud: &str, token: &str| {
        run(Command::new("node")
            .arg(dir.join("verify-assertion.mjs"))
            .args([&jwks, &iss, aud, token])
            .current_dir(&dir))
    };
    let (ok, out, err) = node(&app_host, &token);
    assert!(ok, "{out}{err}");
    let claims: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(claims["email"], "carol@example.com");
    assert_eq!(claims["aud"], app_host.as_str());
    let (ok, _, err) = node(&wiki_host, &token);
    assert!(
        !ok && err.contains("ERR_JWT_CLAIM_VALIDATION_FAILED"),
        "{err}"
    );
    assert!(err.contains(&says), "{err}");
    // Run through a symlink and from a path with a space, it still runs (it used to
    // exit 0 without a word, taking itself for an imported module), and refuses an
    // empty token; with a missing argument it prints its usage and exits 2.
    let odd = repo().join("target/examples-node link");
    let _ = std::fs::remove_file(&odd);
    std::os::unix::fs::symlink(&dir, &odd).unwrap();
    let via_link = |args: &[&str]| {
        let o = Command::new("node")
            .arg(odd.join("verify-assertion.mjs"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = via_link(&[&jwks, &iss, &app_host, "garbage"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("rejected: "), "{err}");
    let (code, err) = via_link(&[&jwks, &iss, &app_host, ""]);
    assert_eq!(code, Some(1), "{err}");
    let (code, err) = via_link(&[&jwks, &iss, &app_host]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("usage:"), "{err}");
    std::fs::remove_file(&odd).unwrap();
    let (ok, _, err) = node(&app_host, &tamper(&token));
    assert!(
        !ok && err.contains("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        "{err}"
    );

    let bin = go_example();
    let go = |aud: &str, token: &str| run(Command::new(&bin).args([&jwks, &iss, aud, token]));
    let (ok, out, err) = go(&app_host, &token);
    assert!(ok, "{out}{err}");
    let claims: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(claims["email"], "carol@example.com");
    let (ok, _, err) = go(&wiki_host, &token);
    assert!(!ok && err.contains("audience"), "{err}");
    let (ok, _, err) = go(&app_host, &tamper(&token));
    assert!(!ok && err.contains("verification error"), "{err}");
}

/// The Go example built into `target/examples-go/verify`, offline: a copy of
/// deploy/examples/go-verify whose go.mod points golang-jwt v4 at Debian's copy
/// (package golang-github-golang-jwt-jwt-dev, installed by scripts/test).
fn go_example() -> std::path::PathBuf {
    let debian = Path::new("/usr/share/gocode/src/github.com/golang-jwt/jwt");
    assert!(
        debian.join("go.mod").exists(),
        "golang-jwt is not installed at {} — run the suite with scripts/test, which installs golang-go and golang-github-golang-jwt-jwt-dev",
        debian.display()
    );
    let dir = repo().join("target/examples-go");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["main.go", "go.mod"] {
        std::fs::copy(
            repo().join("deploy/examples/go-verify").join(f),
            dir.join(f),
        )
        .unwrap();
    }
    let target = repo().join("target");
    let go = |args: &[&str]| {
        run(Command::new("go")
            .args(args)
            .current_dir(&dir)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOPATH", target.join("gopath"))
            .env("GOCACHE", target.join("gocache")))
    };
    let replace = format!("-replace=github.com/golang-jwt/jwt/v4={}", debian.display());
    let (ok, out, err) = go(&["mod", "edit", &replace]);
    assert!(ok, "go mod edit: {out}{err}");
    let (ok, out, err) = go(&["build", "-o", "verify", "."]);
    assert!(ok, "go build of the Go example: {out}{err}");
    dir.join("verify")
}

/// `target/examples-node/` with the Node example and `jose` (the version in
/// deploy/examples/package.json) installed from npm.
fn node_example() -> std::path::PathBuf {
    let dir = repo().join("target/examples-node");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["verify-assertion.mjs", "package.json"] {
        std::fs::copy(repo().join("deploy/examples").join(f), dir.join(f)).unwrap();
    }
    if !Path::new(&dir.join("node_modules/jose/package.json")).exists() {
        let (ok, out, err) = run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir));
        assert!(ok, "npm install jose: {out}{err}");
    }
    dir
}
