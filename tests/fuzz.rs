//! Randomised fuzzing, bounded so it runs in the test command: every parser that sees
//! attacker input gets random and mutated input (seeded from the real corpora) and must
//! never panic and must keep its invariants; then the real binary gets random requests
//! and must never answer 5xx, never let `/verify` pass without a session, and keep
//! serving.
//!
//! `AUTHBASE_FUZZ_ITERS` (default 20,000 per parser) and `AUTHBASE_FUZZ_SEED` (printed
//! by every run, to replay a failure) tune it; `scripts/fuzz` runs it long in release
//! mode.

mod common;

use std::time::Duration;

use authbase::config::{Config, Env};
use bytes::Bytes;
use common::*;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Method;

/// splitmix64: small, fast, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("AUTHBASE_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).unwrap();
                u64::from_le_bytes(b)
            });
        println!("AUTHBASE_FUZZ_SEED={seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn iters() -> usize {
    std::env::var("AUTHBASE_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Characters that tend to matter to parsers.
const SPICE: &[&str] = &[
    "@",
    ".",
    "..",
    "/",
    "//",
    "\\",
    "%",
    "%2e",
    "%2f",
    "%00",
    "%0d%0a",
    "\r",
    "\n",
    "\0",
    "\t",
    " ",
    "\"",
    "'",
    "<",
    ">",
    "(",
    ")",
    ",",
    ";",
    ":",
    "?",
    "#",
    "&",
    "=",
    "+",
    "-",
    "_",
    "~",
    "*",
    "[",
    "]",
    "{",
    "}",
    "|",
    "`",
    "^",
    "!",
    "$",
    "é",
    "ü",
    "Ω",
    "日",
    "🙂",
    "\u{202E}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{2028}",
    "\u{85}",
    "\u{7f}",
    "xn--",
    "localhost",
    "127.0.0.1",
    "[::1]",
    "http://",
    "https://",
    "javascript:",
    "a",
    "Z",
    "0",
    "9",
    "example.com",
    "EXAMPLE.COM",
    "%25",
    "%5c",
    "@evil.example",
    "=?utf-8?b?",
];

/// `seed` with a few random edits: insertions from SPICE, deletions, duplications.
fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(4) {
            0 | 1 => {
                let ins: Vec<char> = rng.pick(SPICE).chars().collect();
                s.splice(at..at, ins);
            }
            2 if !s.is_empty() => {
                let end = (at + 1 + rng.below(4)).min(s.len());
                let at = at.min(s.len());
                s.drain(at..end);
            }
            _ => {
                let chunk: Vec<char> = s[at.min(s.len())..].iter().take(6).cloned().collect();
                s.splice(at..at, chunk);
            }
        }
    }
    s.into_iter().collect()
}

fn random_text(rng: &mut Rng) -> String {
    (0..rng.below(12)).map(|_| *rng.pick(SPICE)).collect()
}

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn config() -> Config {
    Config::from_toml(
        "public_url = \"https://auth.example.com\"\nredirect_url = \"https://app.example.com/\"\n\
         allowed_redirect_hosts = [\"*.example.org\"]\n[cookie]\ndomain = \"example.com\"\nsecure = true\n",
        &NoEnv,
    )
    .unwrap()
}

#[test]
fn email_addresses() {
    let mut rng = Rng::from_env();
    let seeds = [
        "ann@example.com",
        "a.b+tag@sub.example.co.uk",
        "\"a b\"@example.com",
        "Ann <ann@example.com>",
        "a@b@example.com",
        "x@[127.0.0.1]",
    ];
    for _ in 0..iters() {
        let input = if rng.below(4) == 0 {
            random_text(&mut rng)
        } else {
            {
                let seed = rng_pick_str(&mut rng, &seeds);
                mutate(&mut rng, seed)
            }
        };
        if let Ok(a) = authbase::email_addr::normalise(&input) {
            assert_eq!(a.matches('@').count(), 1, "{input:?} -> {a:?}");
            assert!(a.len() <= 254, "{input:?}");
            assert!(
                !a.chars()
                    .any(|c| c.is_control() || c.is_whitespace() || !c.is_ascii()),
                "{input:?} -> {a:?}"
            );
            assert!(
                !a.contains(['"', '<', '>', ',', ';', '(', ')', '[', ']', '\\']),
                "{a:?}"
            );
            assert_eq!(
                authbase::email_addr::normalise(&a).as_deref(),
                Ok(a.as_str()),
                "not idempotent"
            );
            assert!(a.parse::<lettre::Address>().is_ok(), "lettre refuses {a:?}");
        }
    }
}

fn rng_pick_str<'a>(rng: &mut Rng, items: &'a [&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

#[test]
fn return_urls() {
    let mut rng = Rng::from_env();
    let cfg = config();
    let corpus: Vec<String> = std::fs::read_to_string(repo().join("tests/data/openredirects.txt"))
        .unwrap()
        .lines()
        .map(|l| l.replace("www.whitelisteddomain.tld", "app.example.com"))
        .collect();
    let mut accepted = 0;
    for _ in 0..iters() {
        let input = match rng.below(3) {
            0 => mutate(&mut rng, "https://app.example.com/path?q=1"),
            1 => {
                let seed = rng.pick(&corpus).clone();
                mutate(&mut rng, &seed)
            }
            _ => random_text(&mut rng),
        };
        if let Some(u) = authbase::redirect::validate(&input, &cfg) {
            accepted += 1;
            let parsed = url::Url::parse(&u).unwrap_or_else(|e| panic!("{input:?} -> {u:?}: {e}"));
            assert_eq!(parsed.scheme(), "https", "{input:?} -> {u:?}");
            let host = parsed.host_str().unwrap();
            assert!(
                authbase::redirect::host_allowed(host, &cfg),
                "{input:?} -> {u:?}"
            );
            assert!(
                host == "example.com"
                    || host.ends_with(".example.com")
                    || host.ends_with(".example.org"),
                "{input:?} -> {u:?}"
            );
            assert!(
                !u.chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '\\'),
                "{u:?}"
            );
        }
    }
    println!("return URLs accepted: {accepted}");
}

#[test]
fn rule_paths() {
    let mut rng = Rng::from_env();
    for _ in 0..iters() {
        let input = if rng.below(3) == 0 {
            format!("/{}", random_text(&mut rng))
        } else {
            mutate(&mut rng, "/public/docs/../admin;x?y=/public#z")
        };
        let (c, _ambiguous) = authbase::access::canonical(&input);
        assert!(c.starts_with('/'), "{input:?} -> {c:?}");
        assert!(
            !c.contains("/../") && !c.ends_with("/.."),
            "{input:?} -> {c:?}"
        );
        let l = authbase::access::lenient(&input);
        assert!(l.starts_with('/'), "{input:?} -> {l:?}");
        assert_eq!(l, l.to_lowercase(), "{input:?}");
    }
}

#[test]
fn forwarded_headers() {
    let mut rng = Rng::from_env();
    let names = [
        "x-original-url",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-original-method",
        "forwarded",
        "host",
    ];
    let seeds = [
        "https://app.example.com/a?b",
        "app.example.com",
        "https",
        "/path",
        "GET",
        "host=app.example.com;proto=https",
        "APP.Example.COM:8443",
        "[::1]:8080",
    ];
    let mut ok = 0;
    for _ in 0..iters() {
        let mut h = HeaderMap::new();
        for _ in 0..1 + rng.below(5) {
            let name: &'static str = names[rng.below(names.len())];
            let name = HeaderName::from_static(name);
            let v = {
                let seed = rng_pick_str(&mut rng, &seeds);
                mutate(&mut rng, seed)
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.append(name, v);
            }
        }
        if let Ok(o) = authbase::forwarded::original(&h) {
            ok += 1;
            let host = o.host();
            assert!(!host.is_empty(), "{h:?}");
            assert_eq!(host, host.to_ascii_lowercase(), "{h:?}");
            assert!(
                !host
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || "/?#@\\".contains(c)),
                "{h:?} -> {host:?}"
            );
            assert!(url::Url::parse(&o.url()).is_ok(), "{h:?} -> {}", o.url());
        }
    }
    println!("forwarded header sets accepted: {ok}");
}

#[test]
fn email_api_messages() {
    use authbase::mail::compose::{check, compose, Attachment, Draft};
    let mut rng = Rng::from_env();
    let cfg = config();
    for i in 0..iters() / 10 {
        let d = Draft {
            to: "ann@example.com".into(),
            subject: mutate(&mut rng, "Your export is ready"),
            text: Some(mutate(&mut rng, "Hello\n.\nBye\r\n")),
            html: (rng.below(2) == 0).then(|| mutate(&mut rng, "<p>Hi</p>")),
            reply_to: (rng.below(3) == 0).then(|| mutate(&mut rng, "support@example.com")),
            attachments: (0..rng.below(3))
                .map(|_| Attachment {
                    filename: mutate(&mut rng, "report.pdf"),
                    content_type: mutate(&mut rng, "text/plain; charset=utf-8"),
                    content: mutate(&mut rng, "a\n.\nMAIL FROM:<x@y>").into_bytes(),
                })
                .collect(),
        };
        if check(&d, 1 << 20).is_err() {
            continue;
        }
        let Ok(m) = compose(&cfg, &d, std::time::UNIX_EPOCH, &(i as u128).to_le_bytes()) else {
            continue;
        };
        let raw = &m.raw;
        for (j, b) in raw.iter().enumerate() {
            assert!(*b != 0, "NUL in {d:?}");
            if *b == b'\n' {
                assert_eq!(raw[j - 1], b'\r', "bare LF for {d:?}");
            }
            if *b == b'\r' {
                assert_eq!(raw.get(j + 1), Some(&b'\n'), "bare CR for {d:?}");
            }
        }
        let text = String::from_utf8_lossy(raw);
        let head = &text[..text.find("\r\n\r\n").unwrap()];
        // One header per line: no header starts inside a value.
        for line in head.split("\r\n") {
            assert!(
                line.starts_with([' ', '\t']) || line.contains(':'),
                "{line:?} in {d:?}"
            );
            assert!(line.len() <= 998, "{d:?}");
        }
        for h in ["From:", "To:", "Subject:", "Message-ID:", "Date:"] {
            assert_eq!(
                head.split("\r\n").filter(|l| l.starts_with(h)).count(),
                1,
                "{h} in {d:?}"
            );
        }
        assert!(!head.to_ascii_lowercase().contains("\r\nbcc:"), "{d:?}");
    }
}

#[test]
fn config_files() {
    let mut rng = Rng::from_env();
    let seed = std::fs::read_to_string(repo().join("authbase.toml")).unwrap();
    for _ in 0..iters() / 20 {
        let text = mutate(&mut rng, &seed);
        // Errors are fine; panics are not.
        let _ = Config::from_toml(&text, &NoEnv);
    }
}

/// Random requests to the real binary: never 5xx, `/verify` never 2xx without a
/// session (no bypass rules here), and the server still answers afterwards.
#[tokio::test]
async fn http_requests_to_the_binary() {
    let mut rng = Rng::from_env();
    let smtp = Smtp::start();
    let ab = Authbase::start_quiet(&test_config(smtp.port, "", ""));
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "G\u{0}T",
    ];
    let paths = [
        "/",
        "/auth",
        "/auth/code",
        "/me",
        "/sign_out",
        "/verify",
        "/verify/redirect",
        "/sign_in/abc",
        "/healthz",
        "/readyz",
        "/metrics",
        "/static/style.css",
        "/.well-known/jwks.json",
        "/api/email",
        "/api/email/1",
    ];
    let headers = [
        "cookie",
        "content-type",
        "origin",
        "x-original-url",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-uri",
        "forwarded",
        "accept",
        "authorization",
        "x-forwarded-for",
        "sec-fetch-site",
        "content-length",
        "transfer-encoding",
    ];
    let n = (iters() / 10).max(200);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..n {
        let method = *rng.pick(&methods);
        let seed = *rng.pick(&paths[..]);
        let path = mutate(&mut rng, seed);
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: auth.test.localhost\r\n");
        for _ in 0..rng.below(5) {
            let name = rng.pick(&headers);
            let value = mutate(&mut rng, "session_id=abc; x=y http://app.test.localhost/");
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = random_text(&mut rng);
        req.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        let answer = tokio::time::timeout(WAIT, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = tokio::net::TcpStream::connect(&ab.addr).await.unwrap();
            let _ = c.write_all(req.as_bytes()).await;
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        })
        .await
        .unwrap_or_else(|_| panic!("no answer in {}s to {req:?}", WAIT.as_secs()));
        // A request hyper cannot parse gets 400 or a closed connection; either is fine.
        let Some(status) = answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            continue;
        };
        *statuses.entry(status).or_insert(0) += 1;
        assert!(status < 500, "{status} for {req:?}:\n{answer}");
        if path.starts_with("/verify") && (200..300).contains(&status) {
            panic!("/verify passed without a session: {req:?}\n{answer}");
        }
    }
    println!("statuses: {statuses:?}");
    let r = send(&ab.addr, Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!ab.logs().contains("panicked"), "{}", ab.logs());
}
