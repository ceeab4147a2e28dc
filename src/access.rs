//! Who may sign in, and who may reach which protected host: `[access]`, compiled once at
//! start-up into a [`Policy`] that `/verify` consults on every request without
//! allocating when no rule names paths.
//!
//! - Global policy: `allowed_domains` / `allowed_emails`; both empty is open sign-up.
//!   Users added by an admin (`authbase users add`) may sign in whatever these say.
//! - Rules, first match wins: a host (exact, or `*.example.com` for its subdomains),
//!   optionally path prefixes, and a policy: `allow` (optionally only for some emails,
//!   domains or groups), `bypass` (public, no sign-in needed) or `deny`.
//!
//! Path prefixes match whole segments: `/admin` matches `/admin` and `/admin/x`, not
//! `/administrator`; `/static/` matches `/static` and everything under it.
//!
//! Paths are compared after [`canonical`]: percent-encoded unreserved characters
//! decoded, `.`/`..` segments resolved, repeated slashes merged, query dropped. A path
//! that is ambiguous (encoded `/`, `\`, `#`, `?`, `;`, `%`, NUL, control bytes, or a
//! broken escape) never matches a `bypass` rule, so no spelling of a protected path can
//! reach it through a public one. `allow` and `deny` rules (the ones that restrict) also
//! match the path as the most lenient backend could read it ([`lenient`]: every escape
//! decoded, `\` as `/`, `;params` dropped, lower case), so `/%2Fadmin`, `/x/..;/admin`
//! and `/ADMIN` cannot slip past them either: restricting too much is the safe error.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::config::{err, AccessConfig, ConfigError};
use crate::email_addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePolicy {
    Allow,
    Bypass,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, not the domain itself.
    Subdomains(String),
}

/// IPv6 literals in one spelling (`[0::1]` and `[::1]` are the same host).
fn canonical_host(host: &str) -> std::borrow::Cow<'_, str> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<std::net::Ipv6Addr>() {
            return std::borrow::Cow::Owned(format!("[{ip}]"));
        }
    }
    std::borrow::Cow::Borrowed(host)
}

impl HostPattern {
    /// Whether every host `other` matches, this matches too.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Exact(h)) => self.matches(h),
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// 1-based position in the config, for logs and the 403 page.
    pub index: usize,
    host: HostPattern,
    paths: Vec<String>,
    pub policy: RulePolicy,
    emails: HashSet<String>,
    domains: Vec<HostPattern>,
    groups: Vec<String>,
}

impl Rule {
    /// Whether this signed-in user may pass an `allow` rule.
    pub fn admits(&self, email: &str, groups: &[String]) -> bool {
        if self.emails.is_empty() && self.domains.is_empty() && self.groups.is_empty() {
            return true;
        }
        let lower = email.to_ascii_lowercase();
        self.emails.contains(&lower)
            || domain_of(&lower).is_some_and(|d| self.domains.iter().any(|p| p.matches(d)))
            || self.groups.iter().any(|g| groups.contains(g))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    emails: HashSet<String>,
    domains: Vec<HostPattern>,
    /// Address (lowercase) -> its groups from config.
    config_groups: HashMap<String, Vec<String>>,
    rules: Vec<Rule>,
}

fn domain_of(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

/// `[A-Za-z0-9_.-]{1,64}`: group names end up in a comma-separated header.
pub fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn address(key: &str, e: &str) -> Result<String, ConfigError> {
    if e.trim().starts_with("*@") {
        return Err(err(
            key,
            format!("`{e}` is a pattern, and addresses here are exact: for everyone at a domain, list the domain (access.allowed_domains, or a rule's domains)"),
        ));
    }
    email_addr::normalise(e)
        .map(|a| a.to_ascii_lowercase())
        .map_err(|x| err(key, format!("`{e}`: {x}")))
}

fn domain_pattern(key: &str, d: &str) -> Result<HostPattern, ConfigError> {
    let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
    let (wild, name) = match d.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, d.clone()),
    };
    if !crate::config::is_hostname(&name) || !name.contains('.') {
        return Err(err(
            key,
            format!("`{d}` is not a domain like example.com or *.example.com"),
        ));
    }
    Ok(if wild {
        HostPattern::Subdomains(format!(".{name}"))
    } else {
        HostPattern::Exact(name)
    })
}

fn host_pattern(key: &str, h: &str) -> Result<HostPattern, ConfigError> {
    let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let v6 = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    let ip = name.parse::<std::net::Ipv4Addr>().is_ok() || v6;
    if !(crate::config::is_dns_name(name, true) || (ip && !wild)) {
        return Err(err(
            key,
            format!(
                "`{h}` is not a host like app.example.com or *.example.com (no port, no scheme)"
            ),
        ));
    }
    Ok(if wild {
        HostPattern::Subdomains(format!(".{name}"))
    } else {
        HostPattern::Exact(canonical_host(name).into_owned())
    })
}

/// Does `path` fall under `prefix`, by whole segments?
fn under(path: &str, prefix: &str) -> bool {
    match prefix.strip_suffix('/') {
        // `/static/`: `/static` itself and everything below.
        Some(dir) => path.starts_with(prefix) || path == dir,
        // `/admin`: itself and everything below, not `/administrator`.
        None => path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
    }
}

impl Policy {
    /// Rules that can never apply, because an earlier rule matches every request they
    /// would (the first match wins): a `deny` for `/admin` after a rule for the whole
    /// host, say. One warning each, for `check-config` and the start-up log.
    pub fn hidden_rules(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (j, later) in self.rules.iter().enumerate() {
            let hidden_by = self.rules[..j].iter().find(|earlier| {
                earlier.host.covers(&later.host)
                    && (earlier.paths.is_empty()
                        || (!later.paths.is_empty()
                            && later
                                .paths
                                .iter()
                                .all(|p| earlier.paths.iter().any(|q| under(p, q)))))
            });
            if let Some(earlier) = hidden_by {
                w.push(format!(
                    "access.rules[{}] never applies: access.rules[{}] comes first and matches every request it would (the first match wins; put the narrower rule, a deny in particular, first)",
                    later.index, earlier.index
                ));
            }
        }
        w
    }

    pub fn compile(c: &AccessConfig) -> Result<Policy, ConfigError> {
        let mut p = Policy::default();
        for e in &c.allowed_emails {
            p.emails.insert(address("access.allowed_emails", e)?);
        }
        for d in &c.allowed_domains {
            p.domains.push(domain_pattern("access.allowed_domains", d)?);
        }
        let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (g, members) in &c.groups {
            if !valid_group(g) {
                return Err(err(
                    &format!("access.groups.{g}"),
                    "a group name is 1-64 letters, digits, `_`, `.` or `-`",
                ));
            }
            for m in members {
                let a = address(&format!("access.groups.{g}"), m)?;
                by_user.entry(a).or_default().insert(g.clone());
            }
        }
        p.config_groups = by_user
            .into_iter()
            .map(|(a, gs)| (a, gs.into_iter().collect()))
            .collect();
        for (i, r) in c.rules.iter().enumerate() {
            let key = |k: &str| format!("access.rules[{}].{k}", i + 1);
            let policy = match r.policy.as_str() {
                "allow" => RulePolicy::Allow,
                "bypass" => RulePolicy::Bypass,
                "deny" => RulePolicy::Deny,
                other => {
                    return Err(err(
                        &key("policy"),
                        format!(
                            "`{other}`: must be \"allow\", \"bypass\" or \"deny\" (lower case)"
                        ),
                    ))
                }
            };
            let restricted = !(r.emails.is_empty() && r.domains.is_empty() && r.groups.is_empty());
            if policy != RulePolicy::Allow && restricted {
                return Err(err(
                    &key("policy"),
                    format!("is \"{}\", so emails, domains and groups would be ignored; they belong to policy = \"allow\"", r.policy),
                ));
            }
            let mut paths = Vec::new();
            for path in &r.paths {
                // A pattern would be taken literally and never match: a deny rule written
                // `/admin/*` would leave /admin open.
                if path.contains(['*', '?']) {
                    let prefix =
                        path[..path.find(['*', '?']).unwrap_or(path.len())].trim_end_matches('/');
                    let prefix = if prefix.is_empty() { "/" } else { prefix };
                    return Err(err(
                        &key("paths"),
                        format!("`{path}`: paths are prefixes, not patterns: `{prefix}` covers `{prefix}` and everything below it"),
                    ));
                }
                if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
                {
                    return Err(err(
                        &key("paths"),
                        format!("`{path}` must be a path starting with /"),
                    ));
                }
                let (canon, ambiguous) = canonical(path);
                if ambiguous || canon != *path {
                    return Err(err(
                        &key("paths"),
                        format!("`{path}` is not in canonical form (write it as `{canon}`, without escapes, `;`, `//`, `.` or `..`)"),
                    ));
                }
                paths.push(canon);
            }
            let mut emails = HashSet::new();
            for e in &r.emails {
                emails.insert(address(&key("emails"), e)?);
            }
            let domains = r
                .domains
                .iter()
                .map(|d| domain_pattern(&key("domains"), d))
                .collect::<Result<_, _>>()?;
            for g in &r.groups {
                if !valid_group(g) {
                    return Err(err(&key("groups"), format!("`{g}` is not a group name")));
                }
            }
            p.rules.push(Rule {
                index: i + 1,
                host: host_pattern(&key("host"), &r.host)?,
                paths,
                policy,
                emails,
                domains,
                groups: r.groups.clone(),
            });
        }
        Ok(p)
    }

    /// Both allow lists empty: anyone may sign up.
    pub fn open_sign_up(&self) -> bool {
        self.emails.is_empty() && self.domains.is_empty()
    }

    /// Whether this address may sign in by the global policy (admins can add more).
    pub fn may_sign_in(&self, email: &str) -> bool {
        if self.open_sign_up() {
            return true;
        }
        let lower = email.to_ascii_lowercase();
        self.emails.contains(&lower)
            || domain_of(&lower).is_some_and(|d| self.domains.iter().any(|p| p.matches(d)))
    }

    /// Groups given to this address in config, sorted.
    pub fn config_groups(&self, email: &str) -> &[String] {
        self.config_groups
            .get(&email.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The first rule matching this (lowercase) host and path-and-query.
    pub fn rule_for(&self, host: &str, path: &str) -> Option<&Rule> {
        let host = canonical_host(host);
        let mut canon: Option<(String, bool)> = None;
        let mut loose: Option<String> = None;
        self.rules.iter().find(|r| {
            if !r.host.matches(&host) {
                return false;
            }
            if r.paths.is_empty() {
                return true;
            }
            let (c, ambiguous) = canon.get_or_insert_with(|| canonical(path));
            if r.policy == RulePolicy::Bypass {
                return !*ambiguous && r.paths.iter().any(|p| under(c, p));
            }
            if r.paths.iter().any(|p| under(c, p)) {
                return true;
            }
            let l = loose.get_or_insert_with(|| lenient(path));
            r.paths.iter().any(|p| under(l, &p.to_ascii_lowercase()))
        })
    }
}

/// The path as the most lenient backend could read it, lower case: every escape decoded
/// (twice, for double encoding), `\` as `/`, `;params` dropped from each segment, dot
/// segments resolved. Only ever used to restrict more.
pub fn lenient(path_and_query: &str) -> String {
    let path = path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or(path_and_query);
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..2 {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |x: u8| (x as char).to_digit(16);
            if bytes[i] == b'%' {
                if let (Some(h), Some(l)) = (
                    bytes.get(i + 1).and_then(|x| hex(*x)),
                    bytes.get(i + 2).and_then(|x| hex(*x)),
                ) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        bytes = out;
    }
    let text = String::from_utf8_lossy(&bytes)
        .to_lowercase()
        .replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::new();
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    out
}

/// The path for rule matching and whether it is ambiguous (see the module docs).
pub fn canonical(path_and_query: &str) -> (String, bool) {
    let path = path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or(path_and_query);
    let mut ambiguous = false;
    let mut decoded = String::with_capacity(path.len());
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = |x: u8| (x as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|x| hex(*x)),
                b.get(i + 2).and_then(|x| hex(*x)),
            ) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                        decoded.push(v as char);
                    } else {
                        if matches!(v, b'/' | b'\\' | b'#' | b'?' | b';' | b'%')
                            || v < 0x20
                            || v == 0x7f
                        {
                            ambiguous = true;
                        }
                        decoded.push_str(&format!("%{v:02X}"));
                    }
                    i += 3;
                    continue;
                }
                _ => {
                    ambiguous = true;
                    decoded.push('%');
                }
            }
        } else {
            if c == b'\\' || c == b';' || c < 0x20 || c == 0x7f {
                ambiguous = true;
            }
            decoded.push(c as char);
        }
        i += 1;
    }
    let mut segs: Vec<&str> = Vec::new();
    let mut trailing = decoded.ends_with('/');
    for s in decoded.split('/') {
        match s {
            "" => {}
            "." => trailing = true,
            ".." => {
                segs.pop();
                trailing = true;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    if decoded.ends_with('/') {
        trailing = true;
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    (out, ambiguous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> Policy {
        let c: crate::config::Config = toml::from_str(toml).unwrap();
        Policy::compile(&c.access).unwrap()
    }

    #[test]
    fn canonical_paths() {
        assert_eq!(canonical("/a/b?x=/public"), ("/a/b".into(), false));
        assert_eq!(canonical("//admin"), ("/admin".into(), false));
        assert_eq!(canonical("/%2e/admin"), ("/admin".into(), false));
        assert_eq!(canonical("/public/../admin"), ("/admin".into(), false));
        assert_eq!(canonical("/public/%2e%2E/admin"), ("/admin".into(), false));
        assert_eq!(canonical("/%61dmin/"), ("/admin/".into(), false));
        assert_eq!(canonical("/"), ("/".into(), false));
        assert_eq!(canonical("/a/."), ("/a/".into(), false));
        assert!(canonical("/public%23/x").1);
        assert!(canonical("/public%2fx").1);
        assert!(canonical("/admin;x").1);
        assert!(canonical("/pub\\lic").1);
        assert!(canonical("/pub%zz").1);
        assert!(canonical("/pub%00").1);
        assert!(!canonical("/caf%C3%A9").1);
    }

    #[test]
    fn global_policy() {
        let p = policy("[access]\nallowed_domains = [\"acme.com\", \"*.corp.example\"]\nallowed_emails = [\"Bob@Contractor.io\"]\n");
        assert!(!p.open_sign_up());
        assert!(p.may_sign_in("alice@acme.com"));
        assert!(p.may_sign_in("ALICE@ACME.COM"));
        assert!(!p.may_sign_in("alice@eu.acme.com"));
        assert!(!p.may_sign_in("alice@notacme.com"));
        assert!(p.may_sign_in("x@eu.corp.example"));
        assert!(!p.may_sign_in("x@corp.example"));
        assert!(p.may_sign_in("bob@contractor.io"));
        assert!(!p.may_sign_in("eve@contractor.io"));
        assert!(policy("").may_sign_in("anyone@anywhere.org"));
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(
            r#"
            [access.groups]
            admins = ["alice@acme.com"]
            [[access.rules]]
            host = "app.acme.com"
            paths = ["/public/", "/healthz"]
            policy = "bypass"
            [[access.rules]]
            host = "admin.acme.com"
            groups = ["admins"]
            [[access.rules]]
            host = "*.acme.com"
            paths = ["/secret"]
            policy = "deny"
            "#,
        );
        let rule = |h, path| p.rule_for(h, path).map(|r| (r.index, r.policy));
        assert_eq!(
            rule("app.acme.com", "/public"),
            Some((1, RulePolicy::Bypass))
        );
        assert_eq!(
            rule("app.acme.com", "/healthz/x"),
            Some((1, RulePolicy::Bypass))
        );
        assert_eq!(rule("app.acme.com", "/healthzXYZ"), None);
        assert_eq!(rule("app.acme.com", "/PUBLIC/x"), None);
        assert_eq!(
            rule("app.acme.com", "/public/x"),
            Some((1, RulePolicy::Bypass))
        );
        assert_eq!(
            rule("app.acme.com", "/healthz"),
            Some((1, RulePolicy::Bypass))
        );
        assert_eq!(rule("app.acme.com", "/public%2F../admin"), None);
        assert_eq!(rule("app.acme.com", "/public/../admin"), None);
        assert_eq!(rule("app.acme.com", "/admin?x=/public/"), None);
        assert_eq!(
            rule("admin.acme.com", "/anything"),
            Some((2, RulePolicy::Allow))
        );
        assert_eq!(rule("x.acme.com", "//secret"), Some((3, RulePolicy::Deny)));
        assert_eq!(
            rule("x.acme.com", "/%73ecret;x"),
            Some((3, RulePolicy::Deny))
        );
        assert_eq!(rule("acme.com", "/secret"), None);
        // Restricting rules also match the most lenient reading of the path.
        for p in [
            "/secret",
            "/secret/x",
            "/%2Fsecret",
            "/x/..;/secret",
            "/SECRET/a",
            "/secret%2Fusers",
            "/x/%252e%252e/secret",
            "/x\\..\\secret",
        ] {
            assert_eq!(rule("x.acme.com", p), Some((3, RulePolicy::Deny)), "{p}");
        }
        assert_eq!(rule("x.acme.com", "/secretary"), None);
        let admins = p.rule_for("admin.acme.com", "/").unwrap();
        assert!(admins.admits("x@y.org", &["admins".to_string()]));
        assert!(!admins.admits("alice@acme.com", &[]));
        assert_eq!(p.config_groups("Alice@acme.com"), ["admins".to_string()]);
    }

    #[test]
    fn ipv6_hosts_in_any_spelling() {
        let p = policy("[[access.rules]]\nhost = \"[0:0::1]\"\npolicy = \"deny\"\n");
        for h in ["[::1]", "[0::1]", "[0:0:0:0:0:0:0:1]"] {
            assert!(p.rule_for(h, "/").is_some(), "{h}");
        }
        assert!(p.rule_for("[::2]", "/").is_none());
    }

    #[test]
    fn bad_rules_name_their_key() {
        let bad = |t: &str| {
            let c: crate::config::Config = toml::from_str(t).unwrap();
            Policy::compile(&c.access).unwrap_err().key
        };
        assert_eq!(
            bad("[[access.rules]]\nhost = \"a.b\"\npolicy = \"maybe\"\n"),
            "access.rules[1].policy"
        );
        assert_eq!(
            bad("[[access.rules]]\nhost = \"https://a.b\"\n"),
            "access.rules[1].host"
        );
        assert_eq!(
            bad("[[access.rules]]\nhost = \"[foo]\"\n"),
            "access.rules[1].host"
        );
        assert_eq!(
            bad("[[access.rules]]\nhost = \"a.b\"\npaths = [\"/a/../b\"]\n"),
            "access.rules[1].paths"
        );
        assert_eq!(
            bad("[[access.rules]]\nhost = \"a.b\"\npolicy = \"bypass\"\nemails = [\"a@b.cd\"]\n"),
            "access.rules[1].policy"
        );
        assert_eq!(
            bad("[access]\nallowed_domains = [\"com\"]\n"),
            "access.allowed_domains"
        );
        assert_eq!(bad("[access.groups]\n\"a,b\" = []\n"), "access.groups.a,b");
    }

    /// A rule an earlier one hides is found; rules that only overlap are not.
    #[test]
    fn rules_hidden_by_earlier_ones_are_named() {
        let hidden = |t: &str| policy(t).hidden_rules();
        let w = hidden(
            "[[access.rules]]\nhost = \"app.acme.com\"\ngroups = [\"ops\"]\n\
             [[access.rules]]\nhost = \"app.acme.com\"\npaths = [\"/admin\"]\npolicy = \"deny\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("access.rules[2] never applies: access.rules[1]"),
            "{w:?}"
        );
        // A subdomain rule hides a later rule for one of them, and for a deeper `*.`.
        for later in ["x.acme.com", "*.x.acme.com"] {
            let w = hidden(&format!(
                "[[access.rules]]\nhost = \"*.acme.com\"\npaths = [\"/a\"]\npolicy = \"deny\"\n\
                 [[access.rules]]\nhost = \"{later}\"\npaths = [\"/a/b\"]\npolicy = \"bypass\"\n"
            ));
            assert_eq!(w.len(), 1, "{later}: {w:?}");
        }
        // Not hidden: the earlier rule covers only some paths, or another host.
        for t in [
            "[[access.rules]]\nhost = \"app.acme.com\"\npaths = [\"/healthz\"]\npolicy = \"bypass\"\n\
             [[access.rules]]\nhost = \"app.acme.com\"\ngroups = [\"ops\"]\n",
            "[[access.rules]]\nhost = \"x.acme.com\"\n[[access.rules]]\nhost = \"*.acme.com\"\npolicy = \"deny\"\n",
            "[[access.rules]]\nhost = \"acme.com\"\n[[access.rules]]\nhost = \"*.acme.com\"\npolicy = \"deny\"\n",
        ] {
            assert!(hidden(t).is_empty(), "{t}: {:?}", hidden(t));
        }
    }

    /// A glob in `paths` or `*@domain` in an address would be taken literally and never
    /// match: a deny rule for `/admin/*` would leave /admin open. Refused, with the form
    /// that does what was meant.
    #[test]
    fn patterns_where_prefixes_and_addresses_go_are_refused_with_the_fix() {
        let bad = |t: &str| {
            let c: crate::config::Config = toml::from_str(t).unwrap();
            Policy::compile(&c.access).unwrap_err()
        };
        for (path, prefix) in [
            ("/admin/*", "/admin"),
            ("/admin*", "/admin"),
            ("/*", "/"),
            ("/a?b", "/a"),
        ] {
            let e = bad(&format!(
                "[[access.rules]]\nhost = \"a.b\"\npaths = [\"{path}\"]\npolicy = \"deny\"\n"
            ));
            assert_eq!(e.key, "access.rules[1].paths");
            assert!(
                e.message.contains(&format!("`{prefix}` covers")),
                "{path}: {e}"
            );
        }
        let e = bad("[access]\nallowed_emails = [\"*@freelance.io\"]\n");
        assert_eq!(e.key, "access.allowed_emails");
        assert!(e.message.contains("list the domain"), "{e}");
        let e = bad("[[access.rules]]\nhost = \"a.b\"\npolicy = \"Deny\"\n");
        assert!(e.message.contains("`Deny`: must be"), "{e}");
        // What the patterns meant works.
        let p =
            policy("[[access.rules]]\nhost = \"a.b\"\npaths = [\"/admin\"]\npolicy = \"deny\"\n");
        assert!(p.rule_for("a.b", "/admin/secret").is_some());
    }
}
