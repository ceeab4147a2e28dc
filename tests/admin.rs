//! The admin CLI (`authbase users …`, `sessions revoke`, `audit`) on the database of a
//! running server. Changes that end access are acknowledged by the running server before
//! the command returns, so the very next request sees them: no test here retries.

mod common;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};

type Out = (ExitStatus, String, String);

async fn start() -> (Smtp, Authbase) {
    let smtp = Smtp::start();
    let ab = Authbase::start(&test_config(
        smtp.port,
        "",
        "[cookie]\ndomain = \"test.localhost\"\n",
    ));
    (smtp, ab)
}

/// Sign `email` in through the emailed link; returns the `Cookie` header value.
async fn sign_in(ab: &Authbase, smtp: &Smtp, email: &str) -> String {
    let mut b = ab.browser();
    let (_, mail) = request_link(&mut b, smtp, email).await;
    assert_eq!(b.get(&mail.link_path()).await.status, 303);
    format!("session_id={}", b.session().unwrap())
}

async fn verify(ab: &Authbase, cookie: &str) -> StatusCode {
    let h = [
        ("cookie", cookie),
        ("x-forwarded-host", "app.test.localhost"),
    ];
    send(&ab.addr, Method::GET, "/verify", &h, Bytes::new())
        .await
        .status
}

async fn me(ab: &Authbase, cookie: &str) -> StatusCode {
    send(
        &ab.addr,
        Method::GET,
        "/me",
        &[("cookie", cookie)],
        Bytes::new(),
    )
    .await
    .status
}

#[track_caller]
fn ok(out: &Out) -> &str {
    assert!(
        out.0.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.0.code(),
        out.1,
        out.2
    );
    &out.1
}

#[track_caller]
fn fails(out: &Out, code: i32, message: &str) {
    assert_eq!(
        out.0.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        out.1,
        out.2
    );
    assert!(out.2.contains(message), "stderr: {}", out.2);
}

/// Applied by the one running server before the command returned, with no warning.
#[track_caller]
fn acknowledged(out: &Out) {
    assert!(
        ok(out).contains("1 running server applied it"),
        "stdout: {}",
        out.1
    );
    assert!(!out.2.contains("warning"), "stderr: {}", out.2);
}

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(ok(out)).unwrap_or_else(|e| panic!("{e}: {}", out.1))
}

/// Mails sent to `email` so far.
fn mails_to(smtp: &Smtp, email: &str) -> usize {
    smtp.messages()
        .iter()
        .filter(|m| m.envelope.contains(&format!("RCPT TO {email}")))
        .count()
}

/// `POST /auth` answered JSON for `email`.
async fn ask(ab: &Authbase, email: &str) -> Resp {
    let mut b = ab.browser();
    b.request(
        Method::POST,
        "/auth",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        format!("{{\"email\": \"{email}\"}}"),
    )
    .await
}

#[tokio::test]
async fn users_add_list_and_remove() {
    let (smtp, ab) = start().await;
    let bob = sign_in(&ab, &smtp, "bob@example.com").await;
    assert_eq!(verify(&ab, &bob).await, 200, "cached now");

    let out = ab.cli(&[
        "users",
        "add",
        "alice@example.com",
        "--group",
        "ops",
        "--group",
        "admins",
    ]);
    let text = ok(&out);
    assert!(text.contains("added alice@example.com (invited)"), "{text}");
    assert!(text.contains("groups: admins, ops"), "{text}");
    let out = ab.cli(&["users", "add", "Bob@Example.COM"]);
    // Matched case-insensitively, shown as first stored.
    assert!(
        ok(&out).contains("bob@example.com already existed; now invited"),
        "{}",
        out.1
    );

    let out = ab.cli(&["users", "list"]);
    let table = ok(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for col in [
        "ID",
        "EMAIL",
        "STATUS",
        "INVITED",
        "SESSIONS",
        "LAST SEEN",
        "GROUPS",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let bob_row = words(lines[1]);
    assert_eq!(
        &bob_row[1..5],
        ["bob@example.com", "active", "yes", "1"],
        "{table}"
    );
    assert!(lines[1].contains(" UTC"), "{table}");
    let alice_row = words(lines[2]);
    assert_eq!(
        &alice_row[1..6],
        ["alice@example.com", "active", "yes", "0", "-"],
        "{table}"
    );
    assert!(lines[2].ends_with("admins,ops"), "{table}");
    assert_eq!(lines[3], "2 user(s)");

    let rows = json(&ab.cli(&["users", "list", "--json"]));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["email"], "bob@example.com");
    assert_eq!(rows[0]["sessions"], 1);
    assert!(rows[0]["last_seen_at"].is_i64());
    assert_eq!(rows[1]["email"], "alice@example.com");
    assert_eq!(rows[1]["invited"], true);
    assert_eq!(rows[1]["blocked"], false);
    assert_eq!(rows[1]["groups"], serde_json::json!(["admins", "ops"]));
    assert_eq!(rows[1]["sessions"], 0);
    assert!(rows[1]["last_seen_at"].is_null());
    assert!(rows[1]["created_at"].is_i64());
    let one = json(&ab.cli(&["users", "list", "--user", "ALICE@example.com", "--json"]));
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["email"], "alice@example.com");
    fails(
        &ab.cli(&["users", "list", "--user", "nobody@example.com"]),
        65,
        "no user nobody@example.com",
    );

    // Removing a signed-in user ends their access at the next request.
    let out = ab.cli(&["users", "remove", "bob@example.com"]);
    assert!(
        ok(&out).contains("removed bob@example.com (1 session ended)"),
        "{}",
        out.1
    );
    acknowledged(&out);
    assert_eq!(verify(&ab, &bob).await, 401);
    assert_eq!(me(&ab, &bob).await, 401);
    fails(
        &ab.cli(&["users", "remove", "bob@example.com"]),
        65,
        "no user bob@example.com",
    );
    fails(
        &ab.cli(&["users", "add", "not-an-address"]),
        65,
        "not a valid email address",
    );
    fails(
        &ab.cli(&["users", "add", "a@example.com\nBcc: b@example.com"]),
        65,
        "not a valid email address",
    );
    let out = ab.cli(&["users", "list"]);
    assert!(ok(&out).ends_with("1 user(s)\n"), "{}", out.1);
}

#[tokio::test]
async fn blocking_cuts_access_at_the_next_request_and_sends_no_mail() {
    let (smtp, ab) = start().await;
    let vera = sign_in(&ab, &smtp, "vera@example.com").await;
    assert_eq!(verify(&ab, &vera).await, 200, "cached now");
    assert_eq!(me(&ab, &vera).await, 200);

    let out = ab.cli(&["users", "block", "vera@example.com"]);
    assert!(
        ok(&out)
            .contains("blocked vera@example.com: 1 session ended, 0 sign-in requests cancelled"),
        "{}",
        out.1
    );
    acknowledged(&out);
    assert_eq!(verify(&ab, &vera).await, 401);
    assert_eq!(me(&ab, &vera).await, 401);

    // An unknown address can be blocked too: it cannot sign up.
    let out = ab.cli(&["users", "block", "newbie@example.com"]);
    assert!(
        ok(&out).contains("blocked newbie@example.com (a new address: it cannot sign up)"),
        "{}",
        out.1
    );

    // Sign-ins: the same neutral answer as for anyone, but no mail.
    let sent_to_vera = mails_to(&smtp, "vera@example.com");
    assert_eq!(sent_to_vera, 1);
    let before = smtp.messages().len();
    let mut answers = Vec::new();
    for email in ["vera@example.com", "newbie@example.com", "walt@example.com"] {
        let r = ask(&ab, email).await;
        assert_eq!(r.status, 200, "{email}: {}", r.body);
        assert!(r.set_cookie("session_id").is_some(), "{email}");
        let mut j = r.json();
        let n = j["match_number"].take();
        assert!(n.as_str().is_some_and(|n| n.len() == 2), "{email}: {n}");
        answers.push(j);
    }
    assert_eq!(answers[0], answers[2]);
    assert_eq!(answers[1], answers[2]);
    // Walt's mail was queued last; once it is here, the others would have been too.
    let all = smtp.wait_for(before + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.messages().len(),
        before + 1,
        "{:?}",
        all.last().map(|m| &m.envelope)
    );
    assert_eq!(mails_to(&smtp, "walt@example.com"), 1);
    assert_eq!(mails_to(&smtp, "vera@example.com"), sent_to_vera);
    assert_eq!(mails_to(&smtp, "newbie@example.com"), 0);

    let rows = json(&ab.cli(&["users", "list", "--json"]));
    let state: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["email"].as_str().unwrap(),
                r["blocked"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        state,
        [
            ("vera@example.com", true),
            ("newbie@example.com", true),
            ("walt@example.com", false)
        ]
    );

    // Unblocked: signs in again.
    let out = ab.cli(&["users", "unblock", "vera@example.com"]);
    assert!(ok(&out).contains("unblocked vera@example.com"), "{}", out.1);
    acknowledged(&out);
    let again = sign_in(&ab, &smtp, "vera@example.com").await;
    assert_eq!(verify(&ab, &again).await, 200);
    assert_eq!(me(&ab, &again).await, 200);
    assert_eq!(me(&ab, &vera).await, 401, "the old session stays ended");
    fails(
        &ab.cli(&["users", "unblock", "nobody@example.com"]),
        65,
        "no user nobody@example.com",
    );
}

#[tokio::test]
async fn sessions_revoke_cuts_access_at_the_next_request() {
    let (smtp, ab) = start().await;
    let vera = sign_in(&ab, &smtp, "vera@example.com").await;
    let walt = sign_in(&ab, &smtp, "walt@example.com").await;
    assert_eq!(verify(&ab, &vera).await, 200);
    assert_eq!(verify(&ab, &walt).await, 200);

    let out = ab.cli(&["sessions", "revoke", "--user", "vera@example.com"]);
    assert!(
        ok(&out).contains("revoked 1 session(s) of vera@example.com"),
        "{}",
        out.1
    );
    acknowledged(&out);
    assert_eq!(verify(&ab, &vera).await, 401);
    assert_eq!(me(&ab, &vera).await, 401);
    assert_eq!(verify(&ab, &walt).await, 200, "only vera's");

    let out = ab.cli(&["sessions", "revoke", "--all"]);
    assert!(ok(&out).contains("revoked all 1 session(s)"), "{}", out.1);
    acknowledged(&out);
    assert_eq!(verify(&ab, &walt).await, 401);
    assert_eq!(me(&ab, &walt).await, 401);
}

#[tokio::test]
async fn groups_are_validated_changed_and_listed() {
    let (smtp, ab) = start().await;
    let ann = sign_in(&ab, &smtp, "ann@example.com").await;
    assert_eq!(verify(&ab, &ann).await, 200);

    let out = ab.cli(&[
        "users",
        "groups",
        "ann@example.com",
        "--add",
        "ops.eu-1",
        "--add",
        "admins",
    ]);
    assert_eq!(
        ok(&out).lines().next(),
        Some("ann@example.com: admins, ops.eu-1")
    );
    acknowledged(&out);
    let out = ab.cli(&["users", "groups", "ann@example.com", "--remove", "admins"]);
    assert_eq!(ok(&out).lines().next(), Some("ann@example.com: ops.eu-1"));
    acknowledged(&out);
    // Read-only: prints the groups, nothing for servers to apply.
    let out = ab.cli(&["users", "groups", "ann@example.com"]);
    assert_eq!(ok(&out), "ann@example.com: ops.eu-1\n");
    // The session works on after a groups change (it is re-read, not ended).
    assert_eq!(verify(&ab, &ann).await, 200);

    let long = "g".repeat(65);
    for bad in ["bad,name", "a b", "", long.as_str(), "x\r\nX-Evil: 1"] {
        let out = ab.cli(&["users", "groups", "ann@example.com", "--add", bad]);
        fails(&out, 65, "invalid group name");
        assert!(
            out.2.contains(&format!("{bad:?}")),
            "names {bad:?}: {}",
            out.2
        );
        fails(
            &ab.cli(&["users", "groups", "ann@example.com", "--remove", bad]),
            65,
            "invalid group name",
        );
    }
    fails(
        &ab.cli(&[
            "users",
            "add",
            "cy@example.com",
            "--group",
            "ok",
            "--group",
            "not;ok",
        ]),
        65,
        "invalid group name \"not;ok\"",
    );
    fails(
        &ab.cli(&["users", "list", "--user", "cy@example.com"]),
        65,
        "no user cy@example.com",
    );
    fails(
        &ab.cli(&[
            "users",
            "groups",
            "ann@example.com",
            "--add",
            "x",
            "--remove",
            "x",
        ]),
        65,
        "both added and removed",
    );
    fails(
        &ab.cli(&["users", "groups", "nobody@example.com", "--add", "x"]),
        65,
        "no user nobody@example.com",
    );
    let rows = json(&ab.cli(&["users", "list", "--json"]));
    assert_eq!(rows[0]["groups"], serde_json::json!(["ops.eu-1"]));
}

#[tokio::test]
async fn audit_lists_admin_events_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authbase.toml"), test_config(2525, "", "")).unwrap();
    let cli = |args: &[&str]| cli_in(dir.path(), args);
    // Admin commands never create a database (a wrong working directory or a typo in
    // `database` must not "succeed" on a new empty file) ...
    let out = cli(&["users", "add", "ann@example.com"]);
    assert_eq!(out.0.code(), Some(69), "{out:?}");
    assert!(out.2.contains("does not exist"), "{}", out.2);
    assert!(!dir.path().join("authbase.db").exists());
    // ... but work on an existing one, even one no server has migrated yet.
    std::fs::write(dir.path().join("authbase.db"), b"").unwrap();
    for args in [
        &["users", "add", "ann@example.com", "--group", "admins"][..],
        &["users", "add", "Bob@example.com"],
        &["users", "block", "bob@example.com"],
        &["users", "unblock", "bob@example.com"],
        &["users", "groups", "ann@example.com", "--remove", "admins"],
        &["sessions", "revoke", "--user", "ann@example.com"],
        &["users", "remove", "bob@example.com"],
    ] {
        let out = cli(args);
        ok(&out);
        if args[1] != "add" {
            assert!(
                out.1.contains("no running server to notify"),
                "{args:?}: {}",
                out.1
            );
        }
    }
    let events = |out: Out| -> Vec<(String, String, String)> {
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(
                    (r["ip"].as_str(), r["user_agent"].as_str()),
                    (Some(""), Some("cli"))
                );
                (
                    r["event"].as_str().unwrap().to_string(),
                    r["email"].as_str().unwrap().to_string(),
                    r["detail"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let e = |ev: &str, email: &str, detail: &str| {
        (ev.to_string(), email.to_string(), detail.to_string())
    };
    let everything = vec![
        e("user_added", "ann@example.com", "new user"),
        e("groups_changed", "ann@example.com", "+admins"),
        e("user_added", "Bob@example.com", "new user"),
        e(
            "user_blocked",
            "Bob@example.com",
            "0 session(s) ended, 0 sign-in request(s) cancelled, 0 queued email(s) dropped",
        ),
        e("user_unblocked", "Bob@example.com", ""),
        e("groups_changed", "ann@example.com", "-admins"),
        e("sessions_revoked", "ann@example.com", "0"),
        e("user_removed", "Bob@example.com", "0 session(s) ended"),
    ];
    assert_eq!(events(cli(&["audit", "--json"])), everything);
    assert_eq!(
        events(cli(&["audit", "--since", "1h", "--json"])),
        everything
    );
    assert_eq!(
        events(cli(&["audit", "--since", "2020-01-01T00:00:00Z", "--json"])),
        everything
    );
    assert!(events(cli(&["audit", "--since", "2999-01-01", "--json"])).is_empty());
    assert_eq!(
        events(cli(&["audit", "--user", "BOB@example.com", "--json"])),
        [
            &everything[2],
            &everything[3],
            &everything[4],
            &everything[7]
        ]
        .map(Clone::clone)
    );
    assert_eq!(
        events(cli(&["audit", "--event", "groups_changed", "--json"])),
        [&everything[1], &everything[5]].map(Clone::clone)
    );
    assert_eq!(
        events(cli(&[
            "audit",
            "--user",
            "ann@example.com",
            "--event",
            "user_added",
            "--json"
        ])),
        [everything[0].clone()]
    );
    assert_eq!(
        events(cli(&["audit", "--limit", "2", "--json"])),
        everything[6..].to_vec(),
        "the newest two, oldest first"
    );

    let out = cli(&["audit"]);
    let table = ok(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 10, "{table}");
    for col in ["TIME", "EVENT", "EMAIL", "FROM", "DETAIL"] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(
        lines[1].contains(" UTC ") && lines[1].contains("user_added"),
        "{table}"
    );
    assert!(
        lines[1].contains("ann@example.com") && lines[1].contains("cli"),
        "{table}"
    );
    assert!(lines[8].contains("user_removed"), "{table}");
    assert_eq!(lines[9], "8 event(s)");
    let out = cli(&["audit", "--since", "2999-01-01"]);
    assert!(ok(&out).ends_with("0 event(s)\n"), "{}", out.1);

    for bad in ["yesterday", "2026-02-30", "2026-11-28T10:00", "1w"] {
        fails(&cli(&["audit", "--since", bad]), 65, "--since");
    }
    fails(&cli(&["audit", "--user", "not-an-address"]), 65, "--user");
}

#[tokio::test]
async fn an_unusable_database_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let config = |db: &str| {
        test_config(2525, &format!("database = \"{db}\""), "")
            .replace("database = \"authbase.db\"\n", "")
    };
    std::fs::write(
        dir.path().join("authbase.toml"),
        config("missing/dir/authbase.db"),
    )
    .unwrap();
    for args in [
        &["users", "list"][..],
        &["users", "block", "a@example.com"],
        &["sessions", "revoke", "--all"],
        &["audit"],
    ] {
        fails(
            &cli_in(dir.path(), args),
            69,
            "database missing/dir/authbase.db",
        );
    }
    // Not a database at all.
    std::fs::write(dir.path().join("junk.db"), "not a database\n".repeat(100)).unwrap();
    std::fs::write(dir.path().join("authbase.toml"), config("junk.db")).unwrap();
    fails(
        &cli_in(dir.path(), &["users", "list"]),
        69,
        "database junk.db",
    );
    fails(
        &cli_in(dir.path(), &["audit", "--json"]),
        69,
        "database junk.db",
    );
}

#[tokio::test]
async fn only_running_servers_are_waited_for_and_silent_ones_are_reported() {
    let (_smtp, mut ab) = start().await;
    ok(&ab.cli(&["users", "add", "ann@example.com"]));
    acknowledged(&ab.cli(&["users", "groups", "ann@example.com", "--add", "a"]));

    // A server that stopped cleanly has unregistered: nothing to wait for.
    ab.stop();
    let t = Instant::now();
    let out = cli_in(
        ab.dir.path(),
        &["users", "groups", "ann@example.com", "--add", "b"],
    );
    assert!(
        ok(&out).contains("no running server to notify"),
        "{}",
        out.1
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let dir = std::mem::replace(&mut ab.dir, tempfile::tempdir().unwrap());
    let mut ab = Authbase::start_in(dir, &ab.config);
    acknowledged(&ab.cli(&["users", "groups", "ann@example.com", "--add", "c"]));

    // A killed server cannot confirm: the change is made, and the CLI says so after 5 s.
    ab.kill();
    let t = Instant::now();
    let out = cli_in(ab.dir.path(), &["users", "block", "ann@example.com"]);
    let waited = t.elapsed();
    assert!(ok(&out).contains("blocked ann@example.com"), "{}", out.1);
    assert!(out.1.contains("0 running servers applied it"), "{}", out.1);
    assert!(
        out.2
            .contains("warning: 1 running server did not confirm within 5 s"),
        "{}",
        out.2
    );
    assert!(
        out.2.contains("within 5 minutes at the latest"),
        "{}",
        out.2
    );
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(12),
        "{waited:?}"
    );
    let rows = json(&cli_in(ab.dir.path(), &["users", "list", "--json"]));
    assert_eq!(rows[0]["blocked"], true);
}
