//! Real reverse proxies (nginx, Traefik, Caddy) started from the configs in `deploy/`,
//! with only addresses and ports substituted, in front of a real echo app.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

use super::{repo, send, venv, WAIT};

/// A loopback port for a process that takes its port from a config file (the proxies).
///
/// Chosen outside the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 here,
/// so 20000–31999): a port the kernel hands out for `:0` or an outgoing connection could
/// be taken between this check and the proxy's bind, and the proxy's readiness probe
/// would then be answered by the wrong process. Outside that range only other
/// `free_port` callers compete: they start at random places, and within one test binary
/// a port is handed out once (two tests' proxies could otherwise be given one port
/// before either binds it). For a server the test starts itself later, `HeldPort` holds
/// the port instead.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let (lo, hi) = port_window();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let n = hi - lo + 1;
    let start = (h.finish() % u64::from(n)) as u16;
    for i in 0..n {
        let port = lo + (start + i) % n;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {lo}-{hi}");
}

/// The ports `free_port` picks from: 20000–31999 when that is outside the ephemeral
/// range, else the widest stretch of 10000–65535 outside it (if one is ≥ 1000 wide).
fn port_window() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .collect::<Vec<_>>();
    let (e_lo, e_hi) = match range[..] {
        [lo, hi] => (lo, hi),
        _ => (32768, 60999),
    };
    if e_lo > 31999 || e_hi < 20000 {
        return (20000, 31999);
    }
    let below = (10000, e_lo.saturating_sub(1));
    let above = (e_hi + 1, 65535);
    let width = |(lo, hi): (u32, u32)| hi.saturating_sub(lo);
    let (lo, hi) = if width(below) >= width(above) {
        below
    } else {
        above
    };
    if hi < lo + 1000 {
        // Nothing outside it is wide enough: share the range with the kernel (a rare
        // clash then fails a proxy test with the proxy's bind error in its log).
        eprintln!("the ephemeral port range {e_lo}-{e_hi} covers 20000-31999; the proxies' ports may clash");
        return (20000, 31999);
    }
    (lo as u16, hi as u16)
}

/// An authbase config for a stack behind a proxy on `port`: portal
/// `auth.example.com:PORT`, landing on `app.example.com:PORT`, cookie on example.com, the
/// proxy trusted for X-Forwarded-For, then `sections`.
pub fn proxied_config(smtp_port: u16, port: u16, sections: &str) -> String {
    let top = "trusted_proxies = [\"127.0.0.1\"]\n[cookie]\ndomain = \"example.com\"\n";
    super::test_config(smtp_port, top, sections)
        .replace(
            "http://auth.test.localhost/me",
            &format!("http://app.example.com:{port}/"),
        )
        .replace(
            "http://auth.test.localhost",
            &format!("http://auth.example.com:{port}"),
        )
}

/// A hyper HTTP/1.1 app on an ephemeral loopback port, answering every request with
/// `answer(request)`: `(content type, body)`. Returns its address; it runs until the test's
/// runtime ends.
pub async fn serve_app<F>(answer: F) -> std::net::SocketAddr
where
    F: Fn(&Request<hyper::body::Incoming>) -> (&'static str, String) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (ctype, body) = answer(&req);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", ctype)
                                .header("cache-control", "no-store")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    local
}

/// An upstream app that answers every request with what it received, as JSON:
/// `{"path": "/x?y", "headers": [["name", "value"], ...]}`, and counts requests.
pub struct EchoApp {
    pub addr: String,
    pub hits: Arc<Mutex<u32>>,
}

impl EchoApp {
    pub async fn start() -> EchoApp {
        let hits = Arc::new(Mutex::new(0u32));
        let h = hits.clone();
        let addr = serve_app(move |req| {
            *h.lock().unwrap() += 1;
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "headers": headers,
            });
            ("application/json", body.to_string())
        })
        .await;
        EchoApp {
            addr: addr.to_string(),
            hits,
        }
    }

    pub fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }
}

/// Header values the app saw whose name, with `_` read as `-`, is `name`
/// (the way CGI/WSGI-style frameworks merge them).
pub fn seen(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo JSON")
        .iter()
        // Any separator counts: an app may read `X_User_Email` or `X.User.Email` as
        // `X-User-Email` (CGI-style servers turn each non-alphanumeric into `_`).
        .filter(|p| {
            p[0].as_str()
                .unwrap()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .eq_ignore_ascii_case(name)
        })
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Traefik,
    Caddy,
}

pub struct Proxy {
    child: Child,
    pub port: u16,
    pub kind: Kind,
    pub dir: tempfile::TempDir,
}

fn deploy(rel: &str) -> String {
    let p = repo().join("deploy").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Replace `from` in `text`, insisting it is there (a config change must fail loudly).
fn sub(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "deploy config no longer contains {from:?}"
    );
    text.replace(from, to)
}

fn which(name: &str, fallback: PathBuf) -> PathBuf {
    if fallback.exists() {
        return fallback;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed — run the suite with scripts/test, which installs it");
}

impl Proxy {
    /// nginx in front of several authbase servers: its `authbase` upstream holds one
    /// `server` line for each of `authbase`.
    pub async fn start_upstreams(kind: Kind, port: u16, authbase: &[&str], app: &str) -> Proxy {
        assert_eq!(
            kind,
            Kind::Nginx,
            "an upstream of several servers: nginx only"
        );
        Proxy::start(kind, port, &authbase.join(";\n        server "), app).await
    }

    /// Start `kind` on `port`, sending the portal to `authbase` and the apps to `app`.
    pub async fn start(kind: Kind, port: u16, authbase: &str, app: &str) -> Proxy {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut cmd = match kind {
            Kind::Nginx => {
                let mut c = deploy("nginx/nginx.conf");
                c = sub(&c, "listen 80;", &format!("listen 127.0.0.1:{port};"));
                c = sub(&c, "server 127.0.0.1:9091;", &format!("server {authbase};"));
                c = sub(&c, "server 127.0.0.1:8080;", &format!("server {app};"));
                let t = d.display();
                c = sub(
                    &c,
                    "http {\n",
                    &format!(
                        "http {{\n    access_log {t}/access.log;\n    client_body_temp_path {t}/body;\n    proxy_temp_path {t}/proxy;\n    fastcgi_temp_path {t}/fastcgi;\n    uwsgi_temp_path {t}/uwsgi;\n    scgi_temp_path {t}/scgi;\n"
                    ),
                );
                std::fs::write(d.join("nginx.conf"), c).unwrap();
                let mut cmd = Command::new(which("nginx", PathBuf::from("/usr/sbin/nginx")));
                cmd.arg("-p")
                    .arg(d)
                    .arg("-c")
                    .arg(d.join("nginx.conf"))
                    .arg("-e")
                    .arg(d.join("error.log"))
                    .arg("-g")
                    .arg(format!("daemon off; pid {}/nginx.pid;", d.display()));
                cmd
            }
            Kind::Traefik => {
                let mut s = deploy("traefik/traefik.yml");
                s = sub(
                    &s,
                    "address: \":80\"",
                    &format!("address: \"127.0.0.1:{port}\""),
                );
                s = sub(
                    &s,
                    "/etc/traefik/dynamic.yml",
                    &d.join("dynamic.yml").display().to_string(),
                );
                let mut y = deploy("traefik/dynamic.yml");
                y = sub(&y, "127.0.0.1:9091", authbase);
                y = sub(&y, "127.0.0.1:8080", app);
                std::fs::write(d.join("traefik.yml"), s).unwrap();
                std::fs::write(d.join("dynamic.yml"), y).unwrap();
                let mut cmd = Command::new(which("traefik", venv().join("bin/traefik")));
                cmd.arg(format!("--configFile={}", d.join("traefik.yml").display()));
                cmd
            }
            Kind::Caddy => {
                let mut c = deploy("caddy/Caddyfile");
                c = sub(
                    &c,
                    "auto_https off",
                    "auto_https off\n\tadmin off\n\tpersist_config off",
                );
                c = sub(
                    &c,
                    "http://auth.example.com {",
                    &format!("http://auth.example.com:{port} {{"),
                );
                c = sub(
                    &c,
                    "http://app.example.com, http://wiki.example.com {",
                    &format!("http://app.example.com:{port}, http://wiki.example.com:{port} {{"),
                );
                c = sub(&c, "127.0.0.1:9091", authbase);
                c = sub(&c, "127.0.0.1:8080", app);
                std::fs::write(d.join("Caddyfile"), c).unwrap();
                let mut cmd = Command::new(which("caddy", venv().join("bin/caddy")));
                cmd.args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(d.join("Caddyfile"))
                    .env("XDG_CONFIG_HOME", d)
                    .env("XDG_DATA_HOME", d)
                    .env("HOME", d);
                cmd
            }
        };
        let log = std::fs::File::create(d.join("proxy.log")).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {kind:?}: {e}"));
        let mut p = Proxy {
            child,
            port,
            kind,
            dir,
        };
        p.wait_ready().await;
        p
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn host(&self, name: &str) -> String {
        format!("{name}.example.com:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Ready when the portal answers its health check through the proxy.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{:?} exited ({status}):\n{}", self.kind, self.log());
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                let r = send(
                    &self.addr(),
                    Method::GET,
                    "/healthz",
                    &[("host", &self.host("auth"))],
                    Bytes::new(),
                )
                .await;
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not ready:\n{}",
                self.kind,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The whole process group: nginx workers too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}
