//! Configuration from the environment, against the real binary: `AUTHBASE_*` overrides
//! reach a running server, `*_file` secrets are read and never printed, `check-config`
//! shows the effective configuration, and a bad variable exits 64 naming it.

mod common;

use common::*;

/// Everything after `check-config`'s first line, as TOML.
fn effective(stdout: &str) -> toml::Table {
    let (_, rest) = stdout.split_once('\n').expect("more than the first line");
    rest.parse()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{stdout}"))
}

fn get<'a>(t: &'a toml::Table, key: &str) -> &'a toml::Value {
    let (section, k) = key.split_once('.').unwrap_or(("", key));
    let t = if section.is_empty() {
        t
    } else {
        t[section].as_table().unwrap()
    };
    &t[k]
}

#[tokio::test]
async fn env_overrides_reach_a_running_server() {
    let smtp = Smtp::start();
    // The file names a port where nothing listens and a different name: only the
    // environment makes mail arrive with this name.
    let cfg = test_config(9, "", "");
    let port = smtp.port.to_string();
    let ab = Authbase::start_with_env(
        &cfg,
        &[
            ("AUTHBASE_WEBAPP_NAME", "Env Named App"),
            ("AUTHBASE_EMAIL_SMTP_PORT", &port),
            // The file turns the limits off; one sign-in per address from here.
            ("AUTHBASE_LIMITS_SIGN_IN_PER_ADDRESS", "1/1h"),
            ("AUTHBASE_BRANDING_ACCENT_COLOR", "#C0FFEE"),
            ("AUTHBASE_BRANDING_LOGO_URL", "/brand/logo.svg"),
        ],
    );
    let mut b = ab.browser();
    let page = b.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Env Named App</title>"), "{}", page.body);
    assert!(!page.body.contains("Test App"));
    // [branding] from the environment too: the logo, and the accent in the stylesheet the
    // page links (under a version that names this theme).
    assert!(
        page.body.contains("<img src=\"/brand/logo.svg\""),
        "{}",
        page.body
    );
    let i = page
        .body
        .find("/static/style.css?v=")
        .expect("a versioned stylesheet");
    let href = &page.body[i..i + page.body[i..].find('"').unwrap()];
    let css = b.get(href).await;
    assert_eq!(css.status, 200);
    assert!(css.body.contains("--accent: #c0ffee;"), "{}", css.body);

    let (_, mail) = request_link(&mut b, &smtp, "pat@example.com").await;
    assert!(mail.text().contains("Env Named App"), "{}", mail.text());
    let again = b.post_form("/auth", &[("email", "pat@example.com")]).await;
    assert_eq!(again.status, 429, "{}", again.body);
    assert!(!ab.logs().contains("is not a configuration key"));
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    const SECRET: &str = "Tr0ub4dor-and-3-horses";
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("authbase.toml");
    std::fs::write(
        &conf,
        "webapp_name = \"File App\"\n[session]\nlifetime = \"7d\"\nlink_ttl = \"5m\"\n",
    )
    .unwrap();
    // As systemd's LoadCredential or a Kubernetes secret volume provides it.
    let secret = dir.path().join("smtp_password");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let conf_s = conf.to_str().unwrap();
    let secret_s = secret.to_str().unwrap();

    let (status, out, err) = cli_env(
        dir.path(),
        &["check-config"],
        &[
            ("AUTHBASE_CONFIG", conf_s),
            ("AUTHBASE_SESSION_LIFETIME", "12h"),
            ("AUTHBASE_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            ("AUTHBASE_EMAIL_SMTP_USERNAME", "mailer"),
            ("AUTHBASE_EMAIL_SMTP_PASSWORD_FILE", secret_s),
            ("AUTHBASE_LOG_FORMAT", "json"),
            ("AUTHBASE_SESION_IDLE_TIMEOUT", "1h"),
        ],
    );
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().next(), Some(format!("{conf_s}: ok").as_str()));
    let t = effective(&out);
    // File, defaults and environment, each where it applies.
    assert_eq!(get(&t, "webapp_name").as_str(), Some("File App"));
    assert_eq!(get(&t, "session.lifetime").as_str(), Some("12h"));
    assert_eq!(get(&t, "session.link_ttl").as_str(), Some("5m"));
    assert_eq!(get(&t, "session.idle_timeout").as_str(), Some("7d"));
    assert_eq!(get(&t, "limits.sign_in_per_address").as_str(), Some("5/1h"));
    assert_eq!(
        get(&t, "trusted_proxies").to_string(),
        r#"["10.0.0.0/8", "127.0.0.1"]"#
    );
    assert_eq!(get(&t, "log.format").as_str(), Some("json"));
    assert_eq!(get(&t, "email.smtp_password_file").as_str(), Some(secret_s));
    assert_eq!(
        get(&t, "email.smtp_password").as_str(),
        Some("(set, redacted)")
    );
    for line in [
        "#   AUTHBASE_SESSION_LIFETIME -> session.lifetime",
        "#   AUTHBASE_TRUSTED_PROXIES -> trusted_proxies",
        "#   AUTHBASE_EMAIL_SMTP_PASSWORD_FILE -> email.smtp_password_file",
        "#   AUTHBASE_LOG_FORMAT -> log.format",
    ] {
        assert!(out.contains(line), "{line} missing from\n{out}");
    }
    assert!(!out.contains("AUTHBASE_CONFIG"), "{out}");
    // A misspelt variable is a warning (with the likely name), not an error.
    assert!(
        err.contains("warning: environment variable AUTHBASE_SESION_IDLE_TIMEOUT is not a configuration key and is ignored; did you mean AUTHBASE_SESSION_IDLE_TIMEOUT?"),
        "{err}"
    );
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    // The value itself in the environment: wins over the file, still never printed.
    let (status, out, err) = cli_env(
        dir.path(),
        &["check-config", "--config", conf_s],
        &[
            ("AUTHBASE_EMAIL_SMTP_USERNAME", "mailer"),
            ("AUTHBASE_EMAIL_SMTP_PASSWORD_FILE", secret_s),
            ("AUTHBASE_EMAIL_SMTP_PASSWORD", SECRET),
        ],
    );
    assert!(status.success(), "{err}");
    assert!(
        out.contains("#   AUTHBASE_EMAIL_SMTP_PASSWORD -> email.smtp_password"),
        "{out}"
    );
    assert!(err.contains("email.smtp_password_file is ignored"), "{err}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    // No secret, no variable.
    let (status, out, _) = cli_env(dir.path(), &["check-config", "--config", conf_s], &[]);
    assert!(status.success());
    let t = effective(&out);
    assert_eq!(get(&t, "email.smtp_password").as_str(), Some("(not set)"));
    assert!(out.contains("# No key is set by an environment variable."));
}

#[test]
fn a_bad_variable_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("AUTHBASE_SESSION_CODE_ATTEMPTS", "many"),
        ("AUTHBASE_SESSION_CODE_ATTEMPTS", "50"),
        ("AUTHBASE_EMAIL_SMTP_PORT", "70000"),
        ("AUTHBASE_LIMITS_SIGN_IN_PER_IP", "lots"),
        ("AUTHBASE_TRUSTED_PROXIES", "[\"10.0.0.1\""),
        ("AUTHBASE_BRANDING_ACCENT_COLOR", "blue"),
        ("AUTHBASE_BRANDING_LOGO_URL", "//cdn.example.org/logo.svg"),
        // Once clap's own: it exited 2 with its usage text.
        ("AUTHBASE_LOG_FORMAT", "xml"),
        (
            "AUTHBASE_EMAIL_SMTP_PASSWORD_FILE",
            "/nonexistent/smtp_password",
        ),
    ] {
        for cmd in ["check-config", "serve"] {
            let (status, out, err) = cli_env(dir.path(), &[cmd], &[(var, value)]);
            assert_eq!(status.code(), Some(64), "{cmd} {var}={value}: {out}{err}");
            assert!(
                err.starts_with(&format!("authbase: config error: `{var}`: ")),
                "{var}={value}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    // An error about a key whose value came with a secret does not print the secret.
    let (status, _, err) = cli_env(
        dir.path(),
        &["check-config"],
        &[("AUTHBASE_EMAIL_SMTP_PASSWORD", "s3cret-value")],
    );
    assert_eq!(status.code(), Some(64));
    assert!(err.contains("email.smtp_username"), "{err}");
    assert!(!err.contains("s3cret-value"));
    // Nothing was created in the folder: the config is checked before anything else.
    assert!(!dir.path().join("authbase.db").exists());
}
