//! Environment overrides and secrets.
//!
//! Every key can be set by `AUTHBASE_<KEY>` (top level) or `AUTHBASE_<SECTION>_<KEY>`. The
//! list of keys is the serialized `Config::default()`, so a key added to the structs is
//! overridable without touching this file. Overrides are written into the parsed TOML
//! before it is deserialized, so they go through the same types and validation as the
//! file; each value is first tried alone, so a bad one is reported under its variable's
//! name. Tables of tables (`[access.groups]`, `[[access.rules]]`) are file-only.
//!
//! Secrets are read from a file named by a `*_file` key (systemd credentials and
//! Docker/Kubernetes secrets are files), or given as a value in the environment.

use toml::{Table, Value};

use super::{err, Config, ConfigError, Env};

/// `AUTHBASE_*` variables that are not `AUTHBASE_<SECTION>_<KEY>` overrides. Variables
/// starting with `AUTHBASE_TEST_` belong to the test suite and are ignored too.
pub const ENV_ONLY: &[&str] = &[
    // clap: the config file (`--config`).
    "AUTHBASE_CONFIG",
    // The override of `log.format`, which `--log-format` overrides in turn; listed so that
    // it is never taken for a stray variable.
    "AUTHBASE_LOG_FORMAT",
    // The older name of AUTHBASE_EMAIL_SMTP_PASSWORD.
    "AUTHBASE_SMTP_PASSWORD",
    // Build time only (the revision `--version` shows); may linger in a build shell.
    "AUTHBASE_GIT_REV",
];

/// A key set by an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    /// `AUTHBASE_SESSION_LIFETIME`
    pub var: String,
    /// `session.lifetime`
    pub key: String,
}

/// One key the environment can set.
struct EnvKey {
    path: Vec<String>,
    var: String,
    /// Its default, whose TOML type says how to read the variable.
    default: Value,
}

fn var_name<'a>(path: impl IntoIterator<Item = &'a str>) -> String {
    let parts: Vec<&str> = path.into_iter().collect();
    format!("AUTHBASE_{}", parts.join("_").to_ascii_uppercase())
}

/// The overridable keys, in declaration order.
fn env_keys() -> Vec<EnvKey> {
    // Serializing the defaults cannot fail: plain strings, numbers, tables.
    let defaults = Table::try_from(Config::default()).expect("the defaults serialize");
    let mut keys = Vec::new();
    let mut push = |path: Vec<String>, v: Value| {
        if overridable(&path, &v) {
            keys.push(EnvKey {
                var: var_name(path.iter().map(String::as_str)),
                path,
                default: v,
            });
        }
    };
    for (k, v) in defaults {
        match v {
            Value::Table(section) => {
                for (k2, v2) in section {
                    push(vec![k.clone(), k2], v2);
                }
            }
            v => push(vec![k], v),
        }
    }
    keys
}

/// Values and arrays of values; not tables (`[access.groups]`) nor arrays of tables
/// (`[[access.rules]]`).
fn overridable(path: &[String], v: &Value) -> bool {
    match v {
        Value::Table(_) => false,
        // An empty default says nothing about what goes in it: ask serde.
        Value::Array(a) if a.is_empty() => {
            probe(path, Value::Array(vec![Value::String("x".into())])).is_ok()
        }
        Value::Array(a) => !a.iter().any(Value::is_table),
        _ => true,
    }
}

/// Deserialize a config holding only `path = v`: any error is about this value alone.
fn probe(path: &[String], v: Value) -> Result<(), toml::de::Error> {
    let mut t = Table::new();
    set(&mut t, path, v);
    Value::Table(t).try_into::<Config>().map(drop)
}

fn set(t: &mut Table, path: &[String], v: Value) {
    match path {
        [k] => {
            t.insert(k.clone(), v);
        }
        [section, k] => {
            let s = t
                .entry(section.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            // The file was deserialized already, so a section present is a table.
            if let Value::Table(s) = s {
                s.insert(k.clone(), v);
            }
        }
        _ => {}
    }
}

/// The text of a variable read as the TOML type of the key's default.
fn parse_value(raw: &str, like: &Value) -> Result<Value, String> {
    let t = raw.trim();
    Ok(match like {
        // Durations and rates are strings too: serde reads them as in the file.
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => Value::Integer(
            t.parse()
                .map_err(|_| format!("`{raw}` is not a whole number"))?,
        ),
        Value::Boolean(_) => Value::Boolean(match t.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(format!("`{raw}` is not true or false")),
        }),
        Value::Array(_) if t.starts_with('[') => match t.parse::<Value>() {
            Ok(v @ Value::Array(_)) => v,
            _ => {
                return Err(format!(
                    "`{raw}` is not an array like [\"a\", \"b\"] (or write a, b)"
                ))
            }
        },
        Value::Array(_) => Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => t
            .parse::<Value>()
            .map_err(|e| format!("`{raw}` is not a TOML value: {}", e.message().trim_end()))?,
    })
}

fn env_error(o: &EnvOverride, message: &str) -> ConfigError {
    err(&o.var, format!("{message} (overrides `{}`)", o.key))
}

/// Write every `AUTHBASE_*` override into the parsed file; returns what was set.
pub(super) fn apply_env(table: &mut Table, env: &dyn Env) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut applied = Vec::new();
    for k in env_keys() {
        let Some(raw) = env.var(&k.var) else {
            continue;
        };
        let o = EnvOverride {
            var: k.var,
            key: k.path.join("."),
        };
        let v = parse_value(&raw, &k.default).map_err(|m| env_error(&o, &m))?;
        probe(&k.path, v.clone()).map_err(|e| env_error(&o, e.message().trim_end()))?;
        set(table, &k.path, v);
        applied.push(o);
    }
    Ok(applied)
}

/// A validation error about a key the environment set names the variable instead.
pub(super) fn name_the_variable(e: ConfigError, env: &[EnvOverride]) -> ConfigError {
    let about = |o: &&EnvOverride| {
        e.key == o.key
            || e.key.starts_with(&format!("{}.", o.key))
            || e.key.starts_with(&format!("{}[", o.key))
    };
    match env.iter().find(about) {
        Some(o) => env_error(o, &e.message),
        None => e,
    }
}

/// An `AUTHBASE_*` variable that is neither a key nor in [`ENV_ONLY`], and the variable
/// it was likely meant to be.
pub(super) struct UnknownVar {
    pub name: String,
    pub likely: Option<String>,
}

impl UnknownVar {
    /// The start-up warning.
    pub fn warning(&self) -> String {
        let hint = match &self.likely {
            Some(k) => format!("; did you mean {k}?"),
            None => String::new(),
        };
        format!(
            "environment variable {} is not a configuration key and is ignored{hint}",
            self.name
        )
    }
}

/// Every set `AUTHBASE_*` variable that is neither a key nor in [`ENV_ONLY`].
pub(super) fn unknown_vars(env: &dyn Env) -> Vec<UnknownVar> {
    let known: Vec<String> = env_keys()
        .into_iter()
        .map(|k| k.var)
        .chain(SECRETS.iter().map(SecretKey::var))
        .chain(ENV_ONLY.iter().map(|s| s.to_string()))
        .collect();
    let mut names = env.names();
    names.sort();
    names
        .into_iter()
        .filter(|n| n.starts_with("AUTHBASE_") && !n.starts_with("AUTHBASE_TEST_"))
        .filter(|n| !known.contains(n))
        .map(|name| UnknownVar {
            likely: known
                .iter()
                .map(|k| (distance(&name, k), k))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, k)| k.clone()),
            name,
        })
        .collect()
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A secret: read from the file its `*_file` key names (set in the file, or by the
/// environment like any key: `AUTHBASE_EMAIL_SMTP_PASSWORD_FILE`), or given as a value in
/// the variable of its own name (`AUTHBASE_EMAIL_SMTP_PASSWORD`) or an older alias. A value
/// in the environment wins over the file.
#[derive(Debug)]
pub struct SecretKey {
    /// The `*_file` key, e.g. `email.smtp_password_file`.
    pub file_key: &'static str,
    /// Older names of the value variable, honoured after it.
    pub aliases: &'static [&'static str],
}

impl SecretKey {
    /// `email.smtp_password`
    pub fn name(&self) -> &'static str {
        self.file_key.strip_suffix("_file").unwrap_or(self.file_key)
    }
    /// `AUTHBASE_EMAIL_SMTP_PASSWORD`
    pub fn var(&self) -> String {
        var_name(self.name().split('.'))
    }
}

pub const SMTP_PASSWORD: SecretKey = SecretKey {
    file_key: "email.smtp_password_file",
    aliases: &["AUTHBASE_SMTP_PASSWORD"],
};

/// The bearer token of the email API (`AUTHBASE_API_TOKEN`).
pub const API_TOKEN: SecretKey = SecretKey {
    file_key: "api.token_file",
    aliases: &[],
};

/// The PostgreSQL password (`AUTHBASE_DATABASE_PASSWORD`), put into the `database` URL.
pub const DATABASE_PASSWORD: SecretKey = SecretKey {
    file_key: "database_password_file",
    aliases: &[],
};

/// Every secret: redacted by `check-config`, value variables known to the env check.
pub const SECRETS: &[SecretKey] = &[SMTP_PASSWORD, API_TOKEN, DATABASE_PASSWORD];

/// Where a secret's value came from; never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    /// This environment variable.
    Env(String),
    /// The file its `*_file` key names.
    File(String),
}

impl Config {
    /// The one `*_file` helper: secret `s` from the environment, else from `file` (the
    /// value of its `*_file` key; trailing newlines dropped, as editors and `echo` add
    /// them), else `None`. Records where it came from for `check-config`.
    pub(super) fn read_secret(
        &mut self,
        s: &SecretKey,
        file: &str,
        env: &dyn Env,
    ) -> Result<Option<String>, ConfigError> {
        let mut found: Option<(String, String)> = None;
        for name in std::iter::once(s.var()).chain(s.aliases.iter().map(|a| a.to_string())) {
            let Some(v) = env.var(&name) else { continue };
            match &found {
                Some((first, _)) => self
                    .derived
                    .env_warnings
                    .push(format!("{name} is ignored: {first} is set")),
                None => found = Some((name, v)),
            }
        }
        let (value, from) = match found {
            Some((name, v)) => {
                if !file.is_empty() {
                    self.derived
                        .env_warnings
                        .push(format!("{} is ignored: {name} is set and wins", s.file_key));
                }
                (Some(v), Some(SecretFrom::Env(name)))
            }
            None if file.is_empty() => (None, None),
            None => {
                // Name what the operator wrote: the variable, if the path came from one.
                let key = self
                    .derived
                    .env
                    .iter()
                    .find(|o| o.key == s.file_key)
                    .map_or(s.file_key.to_string(), |o| o.var.clone());
                let text = std::fs::read_to_string(file)
                    .map_err(|e| err(&key, format!("cannot read {file}: {e}")))?;
                (
                    Some(text.trim_end_matches(['\r', '\n']).to_string()),
                    Some(SecretFrom::File(file.to_string())),
                )
            }
        };
        self.derived.secrets.push((s.name(), from));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake environment: tests never touch the process's.
    struct FakeEnv(Vec<(String, String)>);
    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        }
        fn names(&self) -> Vec<String> {
            self.0.iter().map(|(k, _)| k.clone()).collect()
        }
    }
    fn env(pairs: &[(&str, &str)]) -> FakeEnv {
        FakeEnv(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
    fn load(toml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(toml, &env(pairs))
    }

    #[test]
    fn overrides_of_each_type() {
        let file =
            "webapp_name = \"File\"\n[email]\nsmtp_port = 25\n[session]\nlifetime = \"1d\"\n";
        let c = load(
            file,
            &[
                ("AUTHBASE_WEBAPP_NAME", " Env App "),
                ("AUTHBASE_PUBLIC_URL", "https://auth.example.com"),
                ("AUTHBASE_EMAIL_SMTP_PORT", "587"),
                ("AUTHBASE_COOKIE_SECURE", "true"),
                ("AUTHBASE_SESSION_LIFETIME", "12h"),
                ("AUTHBASE_LIMITS_SIGN_IN_PER_IP", "off"),
                ("AUTHBASE_LIMITS_SIGN_IN_GLOBAL", "10/1m"),
                ("AUTHBASE_METRICS_ENABLED", "0"),
                ("AUTHBASE_METRICS_LISTEN", "127.0.0.1:9092"),
                ("AUTHBASE_LOG_LEVEL", "warn"),
            ],
        )
        .unwrap();
        // Strings as they are; everything else as its type.
        assert_eq!(c.webapp_name, " Env App ");
        assert_eq!(c.public_url, "https://auth.example.com");
        assert_eq!(c.email.smtp_port, 587);
        assert!(c.cookie.secure);
        assert_eq!(c.session.lifetime.secs(), 12 * 3600);
        assert_eq!(c.limits.sign_in_per_ip, super::super::Rate(None));
        assert_eq!(c.limits.sign_in_global.to_string(), "10/1m");
        assert!(!c.metrics.enabled);
        assert!(c.derived.metrics_listen.is_some());
        assert_eq!(c.log.level, "warn");
        // Keys the environment did not set keep the file's value.
        assert_eq!(c.session.idle_timeout.secs(), 7 * 86400);
        assert_eq!(c.derived.env.len(), 10);
        assert_eq!(
            c.derived.env[0],
            EnvOverride {
                var: "AUTHBASE_WEBAPP_NAME".into(),
                key: "webapp_name".into()
            }
        );
        // An empty variable counts as unset.
        let c = load(file, &[("AUTHBASE_WEBAPP_NAME", "")]).unwrap();
        assert_eq!(c.webapp_name, "File");
        assert!(c.derived.env.is_empty());
        // AUTHBASE_LOG_FORMAT means what --log-format means, and shows in the config.
        let c = load("", &[("AUTHBASE_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(c.log.format, "json");
    }

    #[test]
    fn arrays_inline_or_comma_separated() {
        let file = "trusted_proxies = [\"10.0.0.1\"]\n";
        let c = load(
            file,
            &[("AUTHBASE_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,")],
        )
        .unwrap();
        assert_eq!(c.trusted_proxies, ["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(c.derived.trusted_proxies.len(), 2);
        let c = load(
            file,
            &[(
                "AUTHBASE_ACCESS_ALLOWED_DOMAINS",
                r#"["acme.com", "*.acme.com"]"#,
            )],
        )
        .unwrap();
        assert_eq!(c.access.allowed_domains, ["acme.com", "*.acme.com"]);
        assert_eq!(c.trusted_proxies, ["10.0.0.1"]);
        // `[]` empties what the file set.
        let c = load(file, &[("AUTHBASE_TRUSTED_PROXIES", "[]")]).unwrap();
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value, says) in [
            (
                "AUTHBASE_SESSION_CODE_ATTEMPTS",
                "many",
                "not a whole number",
            ),
            // Parsed fine, refused by validate(): still the variable's name.
            ("AUTHBASE_SESSION_CODE_ATTEMPTS", "50", "between 1 and 20"),
            ("AUTHBASE_EMAIL_SMTP_PORT", "70000", "u16"),
            ("AUTHBASE_COOKIE_SECURE", "maybe", "true or false"),
            ("AUTHBASE_SESSION_LIFETIME", "3x", "unknown unit"),
            ("AUTHBASE_ASSERTION_TTL", "5", "needs a unit (e.g. \"5s\")"),
            ("AUTHBASE_LIMITS_CODES_PER_IP", "5", "not a rate"),
            ("AUTHBASE_TRUSTED_PROXIES", "[\"10.0.0.1\"", "not an array"),
            ("AUTHBASE_TRUSTED_PROXIES", "[1]", "expected a string"),
            ("AUTHBASE_TRUSTED_PROXIES", "nowhere", "not an IP address"),
            ("AUTHBASE_LOG_FORMAT", "xml", "pretty"),
        ] {
            let e = load("", &[(var, value)]).unwrap_err();
            assert_eq!(e.key, var, "{e}");
            assert!(e.message.contains(says), "{var}={value}: {e}");
            assert!(!e.message.contains("(line"), "{var}={value}: {e}");
        }
        // A variable's value out of range: the variable, not the file's line of the key.
        let e = load(
            "[session]\ncode_attempts = 5\n",
            &[("AUTHBASE_SESSION_CODE_ATTEMPTS", "50")],
        )
        .unwrap_err();
        assert_eq!(e.key, "AUTHBASE_SESSION_CODE_ATTEMPTS", "{e}");
        assert!(!e.message.contains("(line"), "{e}");
        // A mistake in the file is still reported against the file's key and line.
        let e = load(
            "[session]\nlifetime = \"3x\"\n",
            &[("AUTHBASE_SESSION_LIFETIME", "1h")],
        )
        .unwrap_err();
        assert_eq!(e.key, "session.lifetime");
    }

    #[test]
    fn unknown_variables_are_warnings() {
        let c = load(
            "",
            &[
                ("AUTHBASE_SESION_LIFETIME", "1h"),
                ("AUTHBASE_CONFIG", "authbase.toml"),
                ("AUTHBASE_LOG_FORMAT", "json"),
                ("AUTHBASE_SMTP_PASSWORD", "p"),
                ("AUTHBASE_TEST_VENV", "/tmp/venv"),
                ("AUTHBASE_EMAIL_SMTP_USERNAME", "u"),
            ],
        )
        .unwrap();
        let w = c.warnings().join("\n");
        assert!(
            w.contains("AUTHBASE_SESION_LIFETIME is not a configuration key and is ignored; did you mean AUTHBASE_SESSION_LIFETIME?"),
            "{w}"
        );
        for quiet in [
            "AUTHBASE_CONFIG",
            "AUTHBASE_LOG_FORMAT",
            "AUTHBASE_SMTP_PASSWORD",
            "AUTHBASE_TEST_VENV",
            "AUTHBASE_EMAIL_SMTP_USERNAME",
        ] {
            assert!(!w.contains(quiet), "{quiet}: {w}");
        }
        assert_eq!(c.session.lifetime.secs(), 30 * 86400);
    }

    /// An unknown AUTHBASE_ACCESS_* variable is an error, not a warning: a typo would
    /// leave the access lists as the file has them (perhaps empty: open sign-up). Tables
    /// of tables cannot be set from the environment, and the error says so.
    #[test]
    fn unknown_access_variables_are_errors() {
        let e = load("", &[("AUTHBASE_ACCESS_ALLOWED_DOMAIN", "acme.com")]).unwrap_err();
        assert_eq!(e.key, "AUTHBASE_ACCESS_ALLOWED_DOMAIN");
        assert!(
            e.message
                .contains("did you mean AUTHBASE_ACCESS_ALLOWED_DOMAINS?"),
            "{e}"
        );
        assert!(e.message.contains("could let anyone sign in"), "{e}");
        for var in ["AUTHBASE_ACCESS_RULES", "AUTHBASE_ACCESS_GROUPS"] {
            let e = load("", &[(var, "x")]).unwrap_err();
            assert_eq!(e.key, var);
            assert!(e.message.contains("set in the file only"), "{e}");
        }
        assert!(load("", &[("AUTHBASE_ACCESS_ALLOWED_DOMAINS", "acme.com")]).is_ok());
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("smtp_password");
        std::fs::write(&pw, "from-file\n").unwrap();
        let pw = pw.to_str().unwrap();
        let file = format!("[email]\nsmtp_username = \"u\"\nsmtp_password_file = \"{pw}\"\n");
        let c = load(&file, &[]).unwrap();
        assert_eq!(c.derived.smtp_password.as_deref(), Some("from-file"));
        assert_eq!(
            c.derived.secrets,
            [
                ("email.smtp_password", Some(SecretFrom::File(pw.into()))),
                ("api.token", None),
                ("database_password", None)
            ]
        );
        // The path from the environment, like any key (systemd LoadCredential, Docker
        // and Kubernetes secrets).
        let c = load(
            "[email]\nsmtp_username = \"u\"\n",
            &[("AUTHBASE_EMAIL_SMTP_PASSWORD_FILE", pw)],
        )
        .unwrap();
        assert_eq!(c.derived.smtp_password.as_deref(), Some("from-file"));
        // A file that cannot be read names the key, or the variable that named it.
        let e = load("[email]\nsmtp_password_file = \"/nonexistent/pw\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "email.smtp_password_file");
        assert!(e.message.contains("/nonexistent/pw"), "{e}");
        let e = load(
            "",
            &[("AUTHBASE_EMAIL_SMTP_PASSWORD_FILE", "/nonexistent/pw")],
        )
        .unwrap_err();
        assert_eq!(e.key, "AUTHBASE_EMAIL_SMTP_PASSWORD_FILE");
        // None at all.
        let c = load("", &[]).unwrap();
        assert_eq!(c.derived.smtp_password, None);
        assert_eq!(
            c.derived.secrets,
            [
                ("email.smtp_password", None),
                ("api.token", None),
                ("database_password", None)
            ]
        );
    }

    #[test]
    fn secret_precedence_value_then_alias_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file").unwrap();
        let file = format!(
            "[email]\nsmtp_username = \"u\"\nsmtp_password_file = \"{}\"\n",
            pw.display()
        );
        let value = ("AUTHBASE_EMAIL_SMTP_PASSWORD", "from-value");
        let alias = ("AUTHBASE_SMTP_PASSWORD", "from-alias");
        let c = load(&file, &[alias, value]).unwrap();
        assert_eq!(c.derived.smtp_password.as_deref(), Some("from-value"));
        let w = c.warnings().join("\n");
        assert!(w.contains("AUTHBASE_SMTP_PASSWORD is ignored"), "{w}");
        assert!(w.contains("email.smtp_password_file is ignored"), "{w}");
        let c = load(&file, &[alias]).unwrap();
        assert_eq!(c.derived.smtp_password.as_deref(), Some("from-alias"));
        assert_eq!(
            c.derived.secrets,
            [
                (
                    "email.smtp_password",
                    Some(SecretFrom::Env("AUTHBASE_SMTP_PASSWORD".into()))
                ),
                ("api.token", None),
                ("database_password", None)
            ]
        );
        // A value wins even over a file that does not exist.
        let c = load(
            "[email]\nsmtp_username = \"u\"\nsmtp_password_file = \"/nonexistent\"\n",
            &[value],
        )
        .unwrap();
        assert_eq!(c.derived.smtp_password.as_deref(), Some("from-value"));
        // validate() still sees it: a password needs a user name.
        let e = load("", &[value]).unwrap_err();
        assert_eq!(e.key, "email.smtp_username");
    }

    /// A file holding `text`, in a folder kept alive by the first value.
    fn dir_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, format!("{text}\n")).unwrap();
        (dir, p)
    }

    #[test]
    fn effective_config_redacts_secrets_and_reads_back() {
        let c = load(
            "[email]\nsmtp_username = \"u\"\n[session]\nidle_timeout = \"90m\"\n[[access.rules]]\nhost = \"app.example.com\"\n",
            &[
                ("AUTHBASE_EMAIL_SMTP_PASSWORD", "hunter2-secret"),
                ("AUTHBASE_SESSION_LINK_TTL", "45s"),
            ],
        )
        .unwrap();
        let out = c.effective_toml();
        assert!(!out.contains("hunter2-secret"), "{out}");
        assert!(out.contains("smtp_password = \"(set, redacted)\""), "{out}");
        assert!(out.contains("idle_timeout = \"90m\""), "{out}");
        assert!(out.contains("link_ttl = \"45s\""), "{out}");
        assert!(out.contains("sign_in_per_address = \"5/1h\""), "{out}");
        assert!(
            out.contains("#   AUTHBASE_SESSION_LINK_TTL -> session.link_ttl"),
            "{out}"
        );
        assert!(
            out.contains("#   AUTHBASE_EMAIL_SMTP_PASSWORD -> email.smtp_password"),
            "{out}"
        );
        // Without the redacted line it is a config that loads to the same thing.
        let mut t: Table = out.parse().unwrap();
        let email = t.get_mut("email").and_then(Value::as_table_mut).unwrap();
        assert!(email.remove("smtp_password").is_some());
        let api = t.get_mut("api").and_then(Value::as_table_mut).unwrap();
        assert_eq!(api.remove("token"), Some(Value::String("(not set)".into())));
        assert_eq!(
            t.remove("database_password"),
            Some(Value::String("(not set)".into()))
        );
        let again = load(&t.to_string(), &[]).unwrap();
        let body = |s: &str| -> Vec<String> {
            s.lines()
                .take_while(|l| !l.starts_with('#'))
                .filter(|l| !l.starts_with("smtp_password ="))
                .map(String::from)
                .collect()
        };
        assert_eq!(body(&again.effective_toml()), body(&out));
        let c = load("", &[]).unwrap();
        assert!(c.effective_toml().contains("smtp_password = \"(not set)\""));
        // A PostgreSQL password, in the URL or from its file, is never shown.
        let pw = dir_file("s3cret-pg");
        let c = load(
            &format!(
                "database = \"postgres://ab:inline-pw@db.example/ab\"\ndatabase_password_file = \"{}\"\n",
                pw.1.display()
            ),
            &[],
        )
        .unwrap();
        let out = c.effective_toml();
        assert!(
            !out.contains("inline-pw") && !out.contains("s3cret-pg"),
            "{out}"
        );
        assert!(out.contains("postgres://ab:***@db.example/ab"), "{out}");
        assert!(
            out.contains("database_password = \"(set, redacted)\""),
            "{out}"
        );
        assert!(
            c.database_target().contains("s3cret-pg"),
            "the store gets it"
        );
        assert!(
            !format!("{c:?}").contains("s3cret-pg") && !format!("{c:?}").contains("inline-pw"),
            "nor does Debug show it"
        );
        assert!(c
            .effective_toml()
            .contains("# No key is set by an environment variable."));
    }

    #[test]
    fn every_key_has_its_own_variable() {
        let keys = env_keys();
        let vars: Vec<&str> = keys.iter().map(|k| k.var.as_str()).collect();
        for (i, v) in vars.iter().enumerate() {
            assert!(!vars[..i].contains(v), "two keys map to {v}");
            // AUTHBASE_LOG_FORMAT is both, with one meaning (see ENV_ONLY).
            if *v != "AUTHBASE_LOG_FORMAT" {
                assert!(!ENV_ONLY.contains(v), "{v} is a key and env-only");
            }
        }
        for want in [
            "AUTHBASE_PUBLIC_URL",
            "AUTHBASE_TRUSTED_PROXIES",
            "AUTHBASE_EMAIL_SMTP_HOST",
            "AUTHBASE_SESSION_LIFETIME",
            "AUTHBASE_LIMITS_SIGN_IN_PER_IP",
            "AUTHBASE_METRICS_LISTEN",
            "AUTHBASE_LOG_LEVEL",
            "AUTHBASE_LOG_FORMAT",
            "AUTHBASE_ACCESS_ALLOWED_DOMAINS",
            "AUTHBASE_EMAIL_SMTP_PASSWORD_FILE",
        ] {
            assert!(vars.contains(&want), "{want} missing from {vars:?}");
        }
        // Tables of tables stay in the file.
        assert!(!vars.contains(&"AUTHBASE_ACCESS_GROUPS"));
        assert!(!vars.contains(&"AUTHBASE_ACCESS_RULES"));
        // Every secret's file key is a key, and its value variable is no key.
        for s in SECRETS {
            assert!(keys.iter().any(|k| k.path.join(".") == s.file_key), "{s:?}");
            assert!(!vars.contains(&s.var().as_str()), "{s:?}");
        }
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("AUTHBASE_LOG_LEVL", "AUTHBASE_LOG_LEVEL"), 1);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("", "ab"), 2);
    }
}
