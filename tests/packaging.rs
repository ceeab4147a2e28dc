//! Packaging: `authbase healthcheck` against the real binary, and the files in `deploy/`
//! checked by the tools operators would use: hadolint on the Dockerfile,
//! `systemd-analyze verify` and `security` on the systemd unit, the Kubernetes schemas
//! (kubernetes-validate, offline) on the manifests, plus the wiring between them (ports,
//! paths, probes, annotations). No Docker engine or cluster runs here: the image and the
//! manifests are checked, not run. The tools come from `scripts/test`; a missing one fails.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{binary, cli_env, cli_in, repo, venv, Authbase};
use serde_json::Value;

/// A program from the test virtualenv, or a failure saying how to get it.
fn venv_tool(name: &str) -> PathBuf {
    let p = venv().join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the suite with `scripts/test`, which installs tests/requirements.txt into the test virtualenv",
        p.display()
    );
    p
}

/// `systemd-analyze`, or a failure saying how to get it.
fn systemd_analyze() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "systemd-analyze is not installed: run the suite with `scripts/test`, which installs Debian's `systemd` package"
        )
    })
}

/// Run to completion (bounded), with stdin closed.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + common::WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish in {}s", common::WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `authbase check-config` on `toml`, from a temp folder; returns stderr on success.
fn check_config(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authbase.toml"), toml).unwrap();
    let (status, out, err) = cli_in(dir.path(), &["check-config"]);
    assert!(
        status.success(),
        "check-config refused it: {out}{err}\n{toml}"
    );
    err
}

// ---------------------------------------------------------------- healthcheck

fn healthcheck(listen: &str) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("authbase.toml"),
        format!("listen = \"{listen}\"\n"),
    )
    .unwrap();
    cli_in(dir.path(), &["healthcheck"])
}

#[test]
fn healthcheck_exits_0_while_the_server_runs_and_1_when_nothing_listens() {
    // Tests listen on loopback only; that a wildcard `listen` (as in a container) is
    // checked on 127.0.0.1 is the unit test `wildcards_become_loopback`.
    let mut server = Authbase::start(
        "listen = \"127.0.0.1:0\"\ndatabase = \"authbase.db\"\nsecret_key_file = \"authbase.key\"\n",
    );
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let listen = format!("127.0.0.1:{port}");

    let (status, out, err) = healthcheck(&listen);
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(err, "", "a healthy check prints nothing");

    server.stop();
    let (status, _, err) = healthcheck(&listen);
    assert_eq!(status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(
        err.starts_with("authbase: healthcheck: cannot connect to 127.0.0.1:"),
        "{err}"
    );
}

#[test]
fn healthcheck_fails_on_an_answer_other_than_200_and_on_silence() {
    // Something that answers 503, then something that accepts and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let (silent, _) = l.accept().unwrap();
        // Silent until the test has its answer (bounded, should the test fail first).
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(silent);
    });
    let (status, _, err) = healthcheck(&addr.to_string());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("answered `HTTP/1.1 503 Service Unavailable`"),
        "{err}"
    );

    let start = Instant::now();
    let (status, _, err) = healthcheck(&addr.to_string());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer within 3s"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10), "bounded to 3 s");
    done.send(()).unwrap();
    t.join().unwrap();
}

// ---------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_passes_hadolint() {
    let o = run(Command::new(venv_tool("hadolint"))
        .args(["--no-color", "deploy/Dockerfile"])
        .current_dir(repo()));
    assert!(
        o.status.success() && text(&o).trim().is_empty(),
        "hadolint deploy/Dockerfile:\n{}",
        text(&o)
    );
}

#[test]
fn hadolint_reports_findings() {
    // The check above means something only if this hadolint does find problems.
    let bad = tempfile::tempdir().unwrap();
    let file = bad.path().join("Dockerfile");
    std::fs::write(&file, "FROM debian:latest\nRUN apt-get install curl\n").unwrap();
    let o = run(Command::new(venv_tool("hadolint"))
        .arg("--no-color")
        .arg(&file));
    assert!(!o.status.success(), "hadolint passed a bad Dockerfile");
    assert!(text(&o).contains("DL3007"), "{}", text(&o));
}

#[test]
fn docker_image_config_matches_the_dockerfile() {
    let df = read("deploy/Dockerfile");
    let lines: Vec<&str> = df
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |l: &str| lines.contains(&l);
    assert!(
        has("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "distroless runtime"
    );
    assert!(has("USER 10001:10001"), "numeric non-root user");
    assert!(
        has("COPY deploy/docker/authbase.toml /etc/authbase/authbase.toml"),
        "the config is shipped as a file"
    );
    assert!(has("ENV AUTHBASE_CONFIG=/etc/authbase/authbase.toml"));
    assert!(has("CMD [\"/usr/local/bin/authbase\", \"healthcheck\"]"));
    assert!(has("ARG AUTHBASE_GIT_REV=\"\""));
    assert!(df.contains("AUTHBASE_GIT_REV=\"${AUTHBASE_GIT_REV}\" cargo build --release --locked"));
    let expose = lines
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");

    let toml = read("deploy/docker/authbase.toml");
    check_config(&toml);
    let cfg: toml::Table = toml.parse().unwrap();
    assert_eq!(cfg["listen"].as_str(), Some(&*format!("0.0.0.0:{expose}")));
    for key in ["database", "secret_key_file"] {
        let v = cfg[key].as_str().unwrap();
        assert!(v.starts_with("/data/"), "{key} on the /data volume: {v}");
    }

    // The compose demos replace exactly that file.
    for f in ["nginx", "traefik", "caddy"] {
        let c = read(&format!("deploy/docker-compose.{f}.yml"));
        assert!(
            c.contains("./compose/authbase.toml:/etc/authbase/authbase.toml:ro"),
            "docker-compose.{f}.yml mounts its config over the image's"
        );
    }
}

/// The replicas demo: three authbase services sharing one config, one key volume and
/// the database password (a Docker secret, by file), PostgreSQL with the same secret,
/// nginx with the upstream of three; its config passes `check-config`, which shows the
/// URL without the password.
#[test]
fn replicas_compose_is_wired() {
    let file = repo().join("deploy/docker-compose.replicas.yml");
    let o = run(Command::new(venv_tool("python"))
        .arg("-c")
        .arg("import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(&file));
    assert!(o.status.success(), "reading the YAML: {}", text(&o));
    let c: Value = serde_json::from_slice(&o.stdout).unwrap();
    let services = c["services"].as_object().unwrap();
    for name in ["authbase-1", "authbase-2", "authbase-3"] {
        let a = &services[name];
        let volumes: Vec<&str> = a["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(volumes.contains(&"./compose/replicas.toml:/etc/authbase/authbase.toml:ro"));
        assert!(
            volumes.contains(&"authbase-key:/data"),
            "{name}: the shared key"
        );
        assert_eq!(
            a["environment"]["AUTHBASE_DATABASE_PASSWORD_FILE"],
            "/run/secrets/db_password"
        );
        assert_eq!(a["secrets"][0], "db_password");
        assert_eq!(a["depends_on"]["postgres"]["condition"], "service_healthy");
    }
    assert_eq!(
        services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"],
        "/run/secrets/db_password"
    );
    assert!(services["nginx"]["volumes"][0]
        .as_str()
        .unwrap()
        .starts_with("./compose/replicas-nginx.conf:"));

    let toml = read("deploy/compose/replicas.toml");
    let cfg: toml::Table = toml.parse().unwrap();
    let db = cfg["database"].as_str().unwrap();
    assert!(db.starts_with("postgres://authbase@postgres:"), "{db}");
    assert_eq!(cfg["secret_key_file"].as_str(), Some("/data/authbase.key"));
    check_config(&toml);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authbase.toml"), &toml).unwrap();
    let pw = repo().join("deploy/compose/db_password.txt");
    let (status, out, err) = cli_env(
        dir.path(),
        &["--config", "authbase.toml", "check-config"],
        &[("AUTHBASE_DATABASE_PASSWORD_FILE", pw.to_str().unwrap())],
    );
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("database_password = \"(set, redacted)\""),
        "{out}"
    );
    assert!(
        !out.contains(read("deploy/compose/db_password.txt").trim()),
        "{out}"
    );
}

// ---------------------------------------------------------------- systemd

const UNIT: &str = "deploy/systemd/authbase.service";
const INSTALLED: &str = "/usr/local/bin/authbase";

/// The shipped unit with the binary path replaced by the test binary (verify requires
/// the executables to exist), in a temp folder under the unit's own name.
fn unit_for_test() -> (tempfile::TempDir, PathBuf) {
    let shipped = read(UNIT);
    let bin = binary().display().to_string();
    assert!(shipped.contains(&format!("\nExecStart={INSTALLED} serve ")));
    let exec = |l: &str| l.starts_with("ExecStart=") || l.starts_with("ExecStartPre=");
    let copy: String = shipped
        .lines()
        .map(|l| {
            if exec(l) {
                l.replace(INSTALLED, &bin)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    // The copy is the shipped unit but for the binary's path in the Exec lines.
    assert_eq!(copy.replace(&bin, INSTALLED), shipped);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authbase.service");
    std::fs::write(&path, copy).unwrap();
    (dir, path)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let (_dir, path) = unit_for_test();
    // verify works without systemd as PID 1, but exits 0 on unknown keys and bad values
    // (it only logs them): any output is a failure.
    let o = run(Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0"));
    assert!(
        o.status.success() && text(&o).trim().is_empty(),
        "systemd-analyze verify {UNIT}:\n{}",
        text(&o)
    );
}

#[test]
fn systemd_unit_is_hardened() {
    let shipped = read(UNIT);
    let lines: HashSet<&str> = shipped.lines().map(str::trim).collect();
    for want in [
        "DynamicUser=yes",
        "StateDirectory=authbase",
        "ConfigurationDirectory=authbase",
        "WorkingDirectory=/var/lib/authbase",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "UMask=0077",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=20",
        "LoadCredential=smtp_password:/etc/authbase/smtp_password",
        "Environment=AUTHBASE_EMAIL_SMTP_PASSWORD_FILE=%d/smtp_password",
    ] {
        assert!(lines.contains(want), "{UNIT} lacks `{want}`");
    }
    // systemd's own score: 0 is best, 10 worst; the unit scores 1.1 with systemd 252.
    // --threshold counts tenths (its default is 100): 20 fails above 2.0.
    let (_dir, path) = unit_for_test();
    let o = run(Command::new(systemd_analyze())
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0"));
    assert!(
        o.status.success(),
        "systemd-analyze security: exposure above 2:\n{}",
        text(&o)
    );
}

// ---------------------------------------------------------------- Kubernetes

/// Every document of every manifest, as JSON, after the schema check.
fn manifests() -> Vec<Value> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());

    let o = run(Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(&files));
    assert!(
        o.status.success(),
        "kubernetes-validate deploy/kubernetes:\n{}",
        text(&o)
    );

    let o = run(Command::new(venv_tool("python"))
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
             docs = [d for p in sys.argv[1:] for d in yaml.safe_load_all(open(p)) if d is not None]\n\
             print(json.dumps(docs))",
        )
        .args(&files));
    assert!(o.status.success(), "reading the YAML: {}", text(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn kubernetes_manifests_are_valid_and_wired() {
    let docs = manifests();
    let ns = "authbase";
    let dep = find(&docs, "Deployment", "authbase");
    let svc = find(&docs, "Service", "authbase");
    let cm = find(&docs, "ConfigMap", "authbase-config");
    let secret = find(&docs, "Secret", "authbase-smtp");
    let pvc = find(&docs, "PersistentVolumeClaim", "authbase-data");
    let portal = find(&docs, "Ingress", "authbase");
    let app = find(&docs, "Ingress", "app");
    find(&docs, "Namespace", ns);
    for d in [dep, svc, cm, secret, pvc, portal] {
        assert_eq!(d["metadata"]["namespace"], ns, "{}", d["kind"]);
    }

    // One writer for the SQLite file.
    let spec = &dep["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["enableServiceLinks"], false,
        "no AUTHBASE_* service variables"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let port = &c["ports"][0];
    let port_name = s(&port["name"]);
    let container_port = port["containerPort"].as_u64().unwrap();
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], port_name, "{probe} port");
    }

    // Volumes: where each one is mounted, by source.
    let mount_of = |volume_key: &str, source: &str| -> String {
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| {
                v[volume_key].is_object()
                    && v[volume_key]
                        .as_object()
                        .unwrap()
                        .values()
                        .any(|x| x == source)
            })
            .unwrap_or_else(|| panic!("no {volume_key} volume for {source}"));
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == vol["name"])
            .unwrap_or_else(|| panic!("volume {} not mounted", vol["name"]));
        s(&m["mountPath"]).to_string()
    };
    let config_dir = mount_of("configMap", "authbase-config");
    let secret_dir = mount_of("secret", "authbase-smtp");
    let data_dir = mount_of("persistentVolumeClaim", "authbase-data");
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(s).collect();
    assert_eq!(
        args,
        ["serve", "--config", &format!("{config_dir}/authbase.toml")]
    );

    // The config: listens on the container port, keeps its files on the volume, reads
    // the password from the Secret's file, and passes check-config.
    let toml_text = s(&cm["data"]["authbase.toml"]);
    let cfg: toml::Table = toml_text.parse().unwrap();
    assert_eq!(
        cfg["listen"].as_str(),
        Some(&*format!("0.0.0.0:{container_port}"))
    );
    for key in ["database", "secret_key_file"] {
        let v = cfg[key].as_str().unwrap();
        assert!(v.starts_with(&format!("{data_dir}/")), "{key}: {v}");
    }
    let password_file = cfg["email"]["smtp_password_file"].as_str().unwrap();
    let (dir, key) = password_file.rsplit_once('/').unwrap();
    assert_eq!(dir, secret_dir);
    let password = s(&secret["stringData"][key]);
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join(key);
    std::fs::write(&local, password).unwrap();
    check_config(&toml_text.replace(password_file, &local.display().to_string()));

    // Service → Pod.
    assert_eq!(
        svc["spec"]["selector"],
        spec["template"]["metadata"]["labels"]
    );
    assert_eq!(
        spec["selector"]["matchLabels"],
        spec["template"]["metadata"]["labels"]
    );
    let sp = &svc["spec"]["ports"][0];
    assert!(
        sp["targetPort"] == port_name || sp["targetPort"] == container_port,
        "Service targetPort {} is not the container port",
        sp["targetPort"]
    );
    let svc_port = sp["port"].as_u64().unwrap();

    // The portal serves public_url's host.
    let public_url = cfg["public_url"].as_str().unwrap();
    let public_host = public_url
        .strip_prefix("https://")
        .expect("https public_url");
    let rule = &portal["spec"]["rules"][0];
    assert_eq!(rule["host"], public_host);
    let backend = &rule["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], "authbase");
    assert!(backend["port"]["name"] == sp["name"] || backend["port"]["number"] == svc_port);

    // The protected app: auth-url inside the cluster, auth-signin public.
    let a = &app["metadata"]["annotations"];
    assert_eq!(
        s(&a["nginx.ingress.kubernetes.io/auth-url"]),
        format!("http://authbase.{ns}.svc.cluster.local:{svc_port}/verify")
    );
    assert_eq!(
        s(&a["nginx.ingress.kubernetes.io/auth-signin"]),
        format!("{public_url}/?rd=$scheme://$host$escaped_request_uri")
    );
    assert_eq!(
        s(&a["nginx.ingress.kubernetes.io/auth-response-headers"]),
        "X-User-Id,X-User-Email,X-User-Groups,X-User-Assertion"
    );
    let cookie_domain = cfg["cookie"]["domain"].as_str().unwrap();
    let app_host = s(&app["spec"]["rules"][0]["host"]);
    assert!(
        app_host.ends_with(&format!(".{cookie_domain}")),
        "{app_host} shares the session cookie of {cookie_domain}"
    );
    assert_eq!(cfg["cookie"]["secure"].as_bool(), Some(true));
}

/// The first fenced block of `lang` after the heading `heading` in README.md.
fn readme_block(readme: &str, heading: &str, lang: &str) -> String {
    let at = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    // Within the section: up to the next heading (`##` or `###`; a `#` at the start of a
    // line inside a block is a comment).
    let rest = &readme[at + 1..];
    let rest = &rest[..rest[1..].find("\n##").map_or(rest.len(), |i| i + 1)];
    let open = format!("```{lang}\n");
    let start = rest
        .find(&open)
        .unwrap_or_else(|| panic!("no {lang} block under {heading:?}"))
        + open.len();
    let len = rest[start..].find("```").expect("a closed block");
    rest[start..start + len].to_string()
}

/// The README's proxy snippets are what people copy: each must forward every identity
/// header the shipped configs forward (those are tested through the real proxies), or an
/// app behind a copied snippet would miss one, and a client-sent one would not be
/// replaced. The list comes from the shipped Traefik config's `authResponseHeaders`; the
/// Kubernetes Ingress (and its README copy) must name them all in `auth-response-headers`.
#[test]
fn the_readme_proxy_snippets_forward_every_identity_header_the_shipped_configs_do() {
    let root = repo();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let traefik = read("deploy/traefik/dynamic.yml");
    let list_at = traefik
        .find("authResponseHeaders:")
        .expect("authResponseHeaders in dynamic.yml");
    let headers: Vec<String> = traefik[list_at..]
        .lines()
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect();
    assert!(
        headers.len() >= 4 && headers.iter().any(|h| h == "X-User-Assertion"),
        "{headers:?}"
    );

    let readme = read("README.md");
    let nginx = readme_block(&readme, "### nginx", "nginx");
    let yaml = readme_block(&readme, "### Traefik", "yaml");
    let caddy = readme_block(&readme, "### Caddy", "caddy");
    let shipped_nginx = read("deploy/nginx/nginx.conf");
    let shipped_caddy = read("deploy/caddy/Caddyfile");
    let ingress = read("deploy/kubernetes/ingress-app.yaml");
    let annotation = |block: &str| -> Vec<String> {
        block
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("nginx.ingress.kubernetes.io/auth-response-headers:")
            })
            .map(|v| {
                v.trim()
                    .trim_matches('"')
                    .split(',')
                    .map(|h| h.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let copied = |block: &str, h: &str| {
        block
            .lines()
            .filter(|l| l.trim_start().starts_with("copy_headers"))
            .any(|l| l.split_whitespace().any(|w| w == h))
    };
    // nginx: `auth_request_set $v $upstream_http_x_…;` and `proxy_set_header X-… $v;`
    // with the same variable, on lines that are not comments.
    let directive = |block: &str, name: &str, arg: &str| -> Option<String> {
        block.lines().find_map(|l| {
            let l = l.split('#').next().unwrap_or("");
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3 && w[0] == name && w[1..].iter().any(|x| x.trim_end_matches(';') == arg))
                .then(|| w[1..3].join(" "))
        })
    };
    for h in &headers {
        let upstream = format!("$upstream_http_{}", h.to_lowercase().replace('-', "_"));
        for (name, block) in [("README", &nginx), ("deploy/nginx", &shipped_nginx)] {
            let set = directive(block, "auth_request_set", &upstream)
                .unwrap_or_else(|| panic!("{name} nginx: no auth_request_set of {upstream}"));
            let var = set.split_whitespace().next().unwrap().to_string();
            let sent = directive(block, "proxy_set_header", h)
                .unwrap_or_else(|| panic!("{name} nginx: {h} not set for the app"));
            assert_eq!(
                sent.split_whitespace()
                    .nth(1)
                    .map(|v| v.trim_end_matches(';')),
                Some(var.as_str()),
                "{name} nginx: {h} is not sent from {var}"
            );
        }
        let responses = yaml
            .lines()
            .find(|l| l.contains("authResponseHeaders"))
            .expect("authResponseHeaders in the README's Traefik snippet");
        assert!(
            responses.contains(h.as_str()),
            "README Traefik: {h} missing: {responses}"
        );
        assert!(copied(&caddy, h), "README Caddy: {h} not in copy_headers");
        assert!(
            copied(&shipped_caddy, h),
            "deploy/caddy: {h} not in copy_headers"
        );
        for (name, block) in [
            ("deploy/kubernetes", &ingress),
            ("README Kubernetes", &readme),
        ] {
            assert!(
                annotation(block).contains(h),
                "{name}: {h} not in auth-response-headers"
            );
        }
    }
}
