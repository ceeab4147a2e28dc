//! What `authbase check-config` prints: the effective configuration as TOML (file,
//! defaults and environment overrides), secrets redacted, and which keys the environment
//! set.

use std::fmt::Write;

use toml::{Table, Value};

use super::{Config, SecretFrom};

/// Shown instead of a secret's value.
pub const REDACTED: &str = "(set, redacted)";
pub const NOT_SET: &str = "(not set)";

impl Config {
    /// The effective configuration as TOML, each secret shown as `"(set, redacted)"` or
    /// `"(not set)"` next to its `*_file` key, then (as comments) the keys set by
    /// environment variables.
    pub fn effective_toml(&self) -> String {
        let mut t = match Table::try_from(self) {
            Ok(t) => t,
            Err(e) => return format!("# cannot show the configuration: {e}\n"),
        };
        // A password written into the URL is shown as `***`.
        t.insert(
            "database".into(),
            Value::String(crate::store::db::shown(&self.database)),
        );
        for (name, from) in &self.derived.secrets {
            let shown = if from.is_some() { REDACTED } else { NOT_SET };
            put_after_file_key(&mut t, name, Value::String(shown.into()));
        }
        let mut out = toml::to_string(&t)
            .unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"));
        let from_env: Vec<(&str, &str)> = self
            .derived
            .env
            .iter()
            .map(|o| (o.var.as_str(), o.key.as_str()))
            .chain(
                self.derived
                    .secrets
                    .iter()
                    .filter_map(|(name, from)| match from {
                        Some(SecretFrom::Env(var)) => Some((var.as_str(), *name)),
                        _ => None,
                    }),
            )
            .collect();
        if from_env.is_empty() {
            out.push_str("\n# No key is set by an environment variable.\n");
        } else {
            out.push_str("\n# Set by environment variables:\n");
            for (var, key) in from_env {
                let _ = writeln!(out, "#   {var} -> {key}");
            }
        }
        out
    }
}

/// `section.name = v`, placed right after `section.name_file` (or last).
fn put_after_file_key(t: &mut Table, name: &str, v: Value) {
    let (section, key) = name.split_once('.').unwrap_or(("", name));
    let table = if section.is_empty() {
        Some(t)
    } else {
        t.get_mut(section).and_then(Value::as_table_mut)
    };
    let Some(table) = table else { return };
    let file_key = format!("{key}_file");
    let old = std::mem::take(table);
    let mut placed = false;
    for (k, x) in old {
        let after = k == file_key;
        table.insert(k, x);
        if after {
            table.insert(key.to_string(), v.clone());
            placed = true;
        }
    }
    if !placed {
        table.insert(key.to_string(), v);
    }
}
