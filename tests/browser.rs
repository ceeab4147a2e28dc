//! The sign-in experience in a real browser: Debian's Chromium, headless, driven by
//! `playwright-core` (`tests/browser/e2e.mjs`), against real authbase, real nginx from
//! `deploy/`, a real app behind it and a real SMTP server. Host names
//! (`auth.example.com`, `app.example.com`, `cdn.example.com`) are mapped to 127.0.0.1
//! inside Chromium; every other name fails to resolve, so nothing leaves the machine.
//!
//! The script runs named scenarios and prints one JSON report; this file starts the
//! stack, runs it, and asserts on the report: every flow passed, and axe-core (injected
//! into each page in the browser) found no serious or critical violation in the light or
//! the dark theme. Everything the script needs is installed by `scripts/test`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{free_port, proxied_config, Kind, Proxy};
use common::*;
use hyper::Request;

/// One browser at a time: the machine has two cores, and the stacks share them.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHROMIUM: &str = "/usr/bin/chromium";

/// `target/browser-node`, where `scripts/test` installs tests/browser/package-lock.json.
fn node_modules() -> PathBuf {
    let dir = std::env::var_os("AUTHBASE_TEST_BROWSER_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/browser-node"));
    let lock = std::fs::read(repo().join("tests/browser/package-lock.json")).unwrap();
    assert!(
        dir.join("node_modules/playwright-core/package.json").exists()
            && dir.join("node_modules/axe-core/axe.min.js").exists()
            && std::fs::read(dir.join("package-lock.json")).ok() == Some(lock),
        "playwright-core and axe-core (tests/browser/package-lock.json) are not installed in {} — run the suite with scripts/test, which runs npm ci there",
        dir.display()
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing — run the suite with scripts/test, which installs Debian's chromium"
    );
    dir.join("node_modules")
}

// ------------------------------------------------------------------ the app

/// The protected app behind nginx, and a "CDN" on the same port under other names:
/// - `/spa/`: a public page (a `bypass` rule) with a form, for the README's snippets;
/// - `/brand/…` (any host): a logo and a stylesheet, for `[branding]`;
/// - anything else: an HTML page naming the user from `X-User-Email` and the path.
///
/// Requests are counted per host, so a test can tell that a host was never asked.
struct App {
    addr: String,
    port: u16,
    hosts: Arc<Mutex<HashMap<String, u32>>>,
}

const LOGO_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="64" height="32" viewBox="0 0 64 32"><rect width="64" height="32" rx="6" fill="#ffcc00"/><circle cx="16" cy="16" r="8" fill="#1d1d1f"/></svg>"##;
/// Marks itself in the page (`--brand-check`) and changes something visible.
const SITE_CSS: &str =
    ":root { --brand-check: loaded; }\n.brand span { letter-spacing: .08em; text-transform: uppercase; }\n";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn app_answer(req: &Request<hyper::body::Incoming>) -> (&'static str, String) {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if path.starts_with("/brand/logo.svg") {
        return ("image/svg+xml", LOGO_SVG.into());
    }
    if path.starts_with("/brand/site.css") {
        return ("text/css", SITE_CSS.into());
    }
    if path.starts_with("/spa/") {
        return (
            "text/html; charset=utf-8",
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SPA</title></head>\
             <body><main><h1>Single-page app</h1><form id=\"sign-in\"><label for=\"email\">Email</label>\
             <input id=\"email\" name=\"email\" type=\"email\"></form></main></body></html>"
                .into(),
        );
    }
    let email = header("x-user-email");
    (
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>The app</title></head>\
             <body><main><h1>The app</h1><p>Signed in as <span id=\"email\">{}</span> (user <span id=\"user-id\">{}</span>)</p>\
             <p>Path: <span id=\"path\">{}</span></p></main></body></html>",
            esc(&email),
            esc(&header("x-user-id")),
            esc(&path)
        ),
    )
}

impl App {
    async fn start() -> App {
        let hosts = Arc::new(Mutex::new(HashMap::new()));
        let h = hosts.clone();
        let local = common::proxy::serve_app(move |req| {
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            *h.lock().unwrap().entry(host).or_insert(0) += 1;
            app_answer(req)
        })
        .await;
        App {
            addr: local.to_string(),
            port: local.port(),
            hosts,
        }
    }

    fn hits(&self, host: &str) -> u32 {
        self.hosts.lock().unwrap().get(host).copied().unwrap_or(0)
    }
}

// ------------------------------------------------------------------ the stack

struct Stack {
    smtp: Smtp,
    ab: Authbase,
    app: App,
    proxy: Proxy,
}

/// Everything the flows need besides the defaults: a public page for the snippets, a
/// path only someone else may open (the 403 page), and one address limit low enough to
/// reach (the 429 page). The other limits stay off, as in every test config.
fn sections(extra: &str) -> String {
    format!(
        r#"
[[access.rules]]
host = "app.example.com"
paths = ["/spa/"]
policy = "bypass"

[[access.rules]]
host = "app.example.com"
paths = ["/admin"]
emails = ["boss@example.com"]

[limits]
sign_in_per_address = "2/1h"
sign_in_address_gap = "0"
sign_in_per_ip = "off"
sign_in_global = "off"
codes_per_ip = "off"
unknown_links_per_ip = "off"
api_email_per_recipient = "off"
api_email_global = "off"
{extra}"#
    )
}

async fn stack(branding: impl Fn(u16) -> String) -> Stack {
    let smtp = Smtp::start();
    let app = App::start().await;
    let port = free_port();
    let cfg = proxied_config(smtp.port, port, &sections(&branding(app.port))).replace(
        "webapp_name = \"Test App\"",
        "webapp_name = \"Browser Test App\"",
    );
    let ab = Authbase::start(&cfg);
    let proxy = Proxy::start(Kind::Nginx, port, &ab.addr, &app.addr).await;
    Stack {
        smtp,
        ab,
        app,
        proxy,
    }
}

/// Run `tests/browser/e2e.mjs SCENARIO` against `s` (bounded in time) and return its JSON
/// report; stderr (the script's progress) is printed with the test's output.
async fn e2e(s: &Stack, scenario: &str) -> serde_json::Value {
    let modules = node_modules();
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("tests/browser/e2e.mjs"))
        .arg(scenario)
        .env("NODE_MODULES", &modules)
        .env("CHROMIUM", CHROMIUM)
        .env("AUTH", format!("http://auth.example.com:{}", s.proxy.port))
        .env("APP", format!("http://app.example.com:{}", s.proxy.port))
        .env("CDN_PORT", s.app.port.to_string())
        .env("MAIL_DIR", &s.smtp.dir)
        .env("README", repo().join("README.md"))
        // AUTHBASE_TEST_SCREENSHOTS=DIR: a picture of every page checked, per theme.
        .env(
            "SCREENSHOTS",
            std::env::var_os("AUTHBASE_TEST_SCREENSHOTS").unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout ends node and Chromium's processes together.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("node is missing — run the suite with scripts/test, which installs it");
    let group = child.id().expect("running");
    let out = match tokio::time::timeout(Duration::from_secs(150), child.wait_with_output()).await {
        Ok(out) => out.expect("node's output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
            panic!("e2e.mjs {scenario} did not finish in 150 s");
        }
    };
    let (status, stdout, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!(
        "--- e2e.mjs {scenario} ({:.1} s) ---\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("e2e.mjs {scenario} ({status}) printed no JSON report ({e}):\n{stdout}\n{stderr}\n--- authbase:\n{}\n--- nginx:\n{}", s.ab.logs(), s.proxy.log())
    });
    assert!(
        status.success() && report["ok"] == true,
        "e2e.mjs {scenario} failed ({status}): {}\n--- authbase:\n{}",
        serde_json::to_string_pretty(&report).unwrap(),
        s.ab.logs()
    );
    report
}

/// axe-core's findings in the report: `{page: {theme: [violation, …]}}`. None may be
/// serious or critical; the others are printed.
fn assert_accessible(report: &serde_json::Value, pages: &[&str]) {
    let axe = report["axe"].as_object().expect("an axe section");
    for page in pages {
        let themes = axe
            .get(*page)
            .unwrap_or_else(|| panic!("axe did not check the {page} page: {report}"));
        for theme in ["light", "dark"] {
            let v = themes[theme]
                .as_array()
                .unwrap_or_else(|| panic!("axe did not check {page} in the {theme} theme"));
            let bad: Vec<_> = v
                .iter()
                .filter(|x| matches!(x["impact"].as_str(), Some("serious" | "critical")))
                .collect();
            assert!(
                bad.is_empty(),
                "axe: serious or critical violations on {page} ({theme}): {}",
                serde_json::to_string_pretty(&bad).unwrap()
            );
            for x in v {
                eprintln!(
                    "axe note on {page} ({theme}): {} ({})",
                    x["id"], x["impact"]
                );
            }
        }
    }
}

// ------------------------------------------------------------------ mail checks

/// The decoded parts of a MIME message: (content type, body).
fn parts(raw: &str) -> Vec<(String, String)> {
    let head_end = raw.find("\r\n\r\n").expect("headers");
    let head = raw[..head_end].replace("\r\n ", " ").replace("\r\n\t", " ");
    let b = head
        .split("boundary=")
        .nth(1)
        .expect("a multipart message")
        .trim_start_matches('"');
    let boundary = &b[..b.find(['"', ';', '\r', '\n']).unwrap_or(b.len())];
    raw.split(&format!("--{boundary}"))
        .skip(1)
        .filter(|p| !p.starts_with("--"))
        .map(|p| {
            let p = p.trim_start_matches("\r\n");
            let (h, body) = p.split_once("\r\n\r\n").unwrap_or((p, ""));
            let h = h.to_ascii_lowercase();
            let ctype = h
                .lines()
                .find_map(|l| l.strip_prefix("content-type: "))
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap()
                .to_string();
            let body = body.trim_end_matches("\r\n");
            let decoded = if h.contains("quoted-printable") {
                authbase::mail::decode_qp(body)
            } else if h.contains("base64") {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD
                    .decode(body.replace("\r\n", ""))
                    .expect("base64 part");
                String::from_utf8(b).unwrap()
            } else {
                body.to_string()
            };
            (ctype, decoded.replace("\r\n", "\n"))
        })
        .collect()
}

/// The sign-in email as a person gets it: a plain-text alternative first, then HTML that
/// mail clients render (inline styles, no tables, no images, nothing remote), with the
/// link and the code, who asked and when, and what to do if it wasn't them.
fn check_sign_in_mail(m: &Mail) {
    assert!(m.raw.contains("multipart/alternative"), "{}", m.raw);
    let parts = parts(&m.raw);
    let kinds: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(kinds, ["text/plain", "text/html"], "{}", m.raw);
    let (text, html) = (&parts[0].1, &parts[1].1);
    let link = m.link();
    let code = m.code();
    for part in [text, html] {
        assert!(part.contains(&link), "the link in every part:\n{part}");
        assert!(part.contains(&code), "the code in every part:\n{part}");
        assert!(part.contains("Chrom"), "which browser asked:\n{part}");
        assert!(part.contains(" UTC"), "when it was asked:\n{part}");
        assert!(part.contains("Wasn't you?"), "{part}");
        assert!(part.contains("Browser Test App"), "{part}");
    }
    let lower = html.to_ascii_lowercase();
    for banned in [
        "<table", "<img", "<script", "<link", "<style", "<iframe", "src=", "url(", "@import",
    ] {
        assert!(
            !lower.contains(banned),
            "{banned} in the HTML part:\n{html}"
        );
    }
    // Every link is the sign-in link itself: no tracking redirector, no other address.
    let hrefs: Vec<&str> = html
        .split("href=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(
        hrefs.len(),
        2,
        "the button and the written-out link: {html}"
    );
    assert!(hrefs
        .iter()
        .all(|h| *h == link.replace('&', "&amp;") || *h == link));
    assert_eq!(
        html.matches("http").count(),
        3,
        "no other URL than the link (twice as href, once written out):\n{html}"
    );
    assert!(lower.contains("<html lang=\"en\""), "{html}");
    assert!(lower.contains("style=\""), "inline styles: {html}");
}

// ------------------------------------------------------------------ the tests

#[tokio::test]
async fn sign_in_flows_work_in_chromium_and_every_page_passes_axe() {
    let _one = ONE_BROWSER.lock().await;
    let s = stack(|_| String::new()).await;

    let report = e2e(&s, "flows").await;
    let flows = report["flows"].as_object().expect("flows");
    for name in [
        "redirect_then_link",
        "keyboard_and_focus",
        "signed_in_page",
        "forbidden_page",
        "used_and_unknown_links",
        "other_device_approval",
        "code_without_javascript",
        "spa_snippets",
        "sign_out",
        "rate_limited",
        "email_in_browser",
        "phone_layout",
    ] {
        assert_eq!(
            flows.get(name).map(|f| &f["ok"]),
            Some(&serde_json::Value::Bool(true)),
            "{name}: {}",
            serde_json::to_string_pretty(&report).unwrap()
        );
    }
    assert_accessible(
        &report,
        &[
            "sign_in",
            "check_email",
            "check_email_wrong_code",
            "confirm",
            "approved",
            "signed_in",
            "forbidden",
            "link_used",
            "signed_out",
            "rate_limited",
            "not_found",
        ],
    );
    // The email's HTML part, rendered by Chromium: checked in the light theme only (it has
    // no dark one; mail clients adapt it themselves).
    let mail_axe = report["axe"]["email"]["light"].as_array().expect("email");
    assert!(
        mail_axe
            .iter()
            .all(|x| !matches!(x["impact"].as_str(), Some("serious" | "critical"))),
        "{mail_axe:?}"
    );

    // Every sign-in email sent during the flows, checked as a mail client would get it.
    let mails = s.smtp.messages();
    assert!(mails.len() >= 5, "{} mails", mails.len());
    for m in &mails {
        check_sign_in_mail(m);
    }

    // A server error, for real: the database is locked by another writer for longer than
    // authbase waits, so POST /auth answers 503 with the error page and a reference id
    // that is also in the log.
    let lock = s.ab.hold_write_lock();
    let report = e2e(&s, "server_error").await;
    drop(lock);
    let reference = report["flows"]["server_error"]["reference"]
        .as_str()
        .expect("the page shows a reference");
    assert_eq!(reference.len(), 12, "{reference}");
    assert!(
        s.ab.logs().contains(reference),
        "the reference is in the log:\n{}",
        s.ab.logs()
    );
    assert_accessible(&report, &["server_error"]);
}

#[tokio::test]
async fn branding_from_configuration_reaches_the_pages_and_the_csp_admits_only_its_origins() {
    let _one = ONE_BROWSER.lock().await;
    let s = stack(|cdn| {
        format!(
            "\n[branding]\nlogo_url = \"http://cdn.example.com:{cdn}/brand/logo.svg\"\n\
             accent_color = \"#ffcc00\"\n\
             stylesheet_url = \"http://cdn.example.com:{cdn}/brand/site.css\"\n"
        )
    })
    .await;
    let report = e2e(&s, "branding").await;
    assert_eq!(
        report["flows"]["branding"]["ok"],
        true,
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    assert_accessible(&report, &["branded_sign_in", "branded_check_email"]);
    assert!(s.app.hits("cdn.example.com") >= 2, "logo and stylesheet");
    assert_eq!(
        s.app.hits("evil.example.com"),
        0,
        "the CSP stopped the page from loading anything from another origin"
    );
    // The email carries the accent too (no logo: a remote image would track opens).
    let mails = s.smtp.wait_for(1).await;
    let html = &parts(&mails[0].raw)[1].1;
    assert!(
        html.contains("background-color:#ffcc00;color:#000000"),
        "{html}"
    );
    assert!(!html.contains("logo.svg"), "{html}");
}
