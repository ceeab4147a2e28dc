//! Test helpers: the real `authbase` binary on an ephemeral port, a real SMTP server
//! (aiosmtpd, from the virtualenv `scripts/test` builds), and a small HTTP client with a
//! cookie jar. Every wait is bounded; every process is killed on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

pub mod proxy;

pub const WAIT: Duration = Duration::from_secs(20);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv with aiosmtpd, traefik and caddy, made by `scripts/test`.
pub fn venv() -> PathBuf {
    let v = std::env::var_os("AUTHBASE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/test-venv"));
    assert!(
        v.join("bin/python").exists(),
        "no test virtualenv at {} — run the suite with `scripts/test`, which installs aiosmtpd, Traefik and Caddy",
        v.display()
    );
    v
}

// ---------------------------------------------------------------- SMTP server

pub struct Smtp {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Debug, Clone)]
pub struct Mail {
    pub raw: String,
    pub envelope: String,
}

impl Mail {
    /// The text/plain part, decoded from quoted-printable where needed.
    pub fn text(&self) -> String {
        authbase::mail::decode_qp(&self.raw)
    }
    pub fn link(&self) -> String {
        let t = self.text();
        let i = t.find("/sign_in/").expect("mail has a sign-in link");
        let start = t[..i].rfind("http").expect("absolute link");
        let end = i + t[i..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '<')
            .unwrap_or(t.len() - i);
        t[start..end].to_string()
    }
    /// The path part of the link (`/sign_in/...`).
    pub fn link_path(&self) -> String {
        let l = self.link();
        l[l.find("/sign_in/").unwrap()..].to_string()
    }
    pub fn code(&self) -> String {
        let t = self.text();
        let i = t.find("waiting: ").expect("mail has a code") + "waiting: ".len();
        t[i..i + 6].to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        let head = &self.raw[..self.raw.find("\r\n\r\n").unwrap_or(self.raw.len())];
        head.split("\r\n")
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .map(|l| l[name.len() + 1..].trim().to_string())
    }
}

impl Smtp {
    pub fn start() -> Smtp {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Smtp::start_in(&dir, 0);
        s._tmp = Some(tmp);
        s
    }

    /// Start on a given port (0 = any) writing into `dir`.
    pub fn start_in(dir: &Path, port: u16) -> Smtp {
        Smtp::start_slow(dir, port, 0)
    }

    /// Like `start_in`, taking `delay_ms` to accept each message (a slow server).
    pub fn start_slow(dir: &Path, port: u16, delay_ms: u64) -> Smtp {
        let mut cmd = Smtp::command();
        cmd.arg("--port").arg(port.to_string());
        Smtp::spawn(cmd, dir, delay_ms)
    }

    /// Start on the port `held` keeps, writing into `dir`: the server takes over that very
    /// socket, so nothing else can have taken the port since the test chose it.
    pub fn start_on(dir: &Path, held: HeldPort) -> Smtp {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = held.socket.as_raw_fd();
        let mut cmd = Smtp::command();
        cmd.arg("--fd").arg(fd.to_string());
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe. It
        // clears close-on-exec on this one socket so that the server inherits it (the
        // test's other sockets stay close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let smtp = Smtp::spawn(cmd, dir, 0);
        assert_eq!(
            smtp.port, held.port,
            "the SMTP sink took over the held port"
        );
        // The server has its own copy now; ours closes here.
        drop(held);
        smtp
    }

    fn command() -> Command {
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(repo().join("tests/smtp_sink.py"));
        cmd
    }

    /// `cmd` is `command()` with where to listen (`--port` or `--fd`).
    fn spawn(mut cmd: Command, dir: &Path, delay_ms: u64) -> Smtp {
        let mut child = cmd
            .arg("--dir")
            .arg(dir)
            .arg("--delay-ms")
            .arg(delay_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("SMTP sink did not start: {line:?}"));
        Smtp {
            child,
            port,
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn messages(&self) -> Vec<Mail> {
        read_mails(&self.dir)
    }

    /// Wait until at least `n` messages arrived; return them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Mail> {
        wait_mails(&self.dir, n).await
    }
}

pub fn read_mails(dir: &Path) -> Vec<Mail> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .map(|p| Mail {
            raw: std::fs::read_to_string(&p).unwrap(),
            envelope: std::fs::read_to_string(p.with_extension("env")).unwrap_or_default(),
        })
        .collect()
}

pub async fn wait_mails(dir: &Path, n: usize) -> Vec<Mail> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = read_mails(dir);
        if m.len() >= n {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} mail(s) in {}s, got {}",
            WAIT.as_secs(),
            m.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port held for an SMTP server that starts later (mail while the server is
/// down, then delivered once it is up). The socket is bound but not listening, so a
/// connection is refused as by a stopped server, and no other socket can take the port
/// meanwhile. (Probing a port free and binding it again later lost a CI run: the port
/// was taken in between.) `Smtp::start_on` hands this very socket to the server.
pub struct HeldPort {
    socket: socket2::Socket,
    pub port: u16,
}

impl HeldPort {
    pub fn new() -> HeldPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an IP address")
            .port();
        HeldPort { socket, port }
    }

    /// Make the held socket listen, and return a listener on it for the test to accept
    /// from (a black hole that never answers, say). The port stays held after the
    /// returned listener is dropped.
    pub fn listen(&self) -> std::net::TcpListener {
        self.socket.listen(128).expect("listen on the held port");
        self.socket.try_clone().expect("dup the held socket").into()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- authbase

pub struct Authbase {
    child: Option<Child>,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    pub config: String,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_authbase"))
}

/// A config for tests: ephemeral port, files in the temp dir, SMTP on `smtp_port`,
/// then `extra` (TOML appended; may add keys to the top level or sections below).
/// Rate limits are off unless `sections` has a `[limits]` table: tests sign in the same
/// address from one IP far more often than people do (tests/access.rs tests the limits).
pub fn test_config(smtp_port: u16, top: &str, sections: &str) -> String {
    let limits = if sections.contains("[limits]") {
        ""
    } else {
        "[limits]\nsign_in_per_address = \"off\"\nsign_in_address_gap = \"0\"\nsign_in_per_ip = \"off\"\nsign_in_global = \"off\"\ncodes_per_ip = \"off\"\nunknown_links_per_ip = \"off\"\napi_email_per_recipient = \"off\"\napi_email_global = \"off\"\n"
    };
    format!(
        r#"webapp_name = "Test App"
public_url = "http://auth.test.localhost"
redirect_url = "http://auth.test.localhost/me"
listen = "127.0.0.1:0"
database = "authbase.db"
secret_key_file = "authbase.key"
{top}
[email]
sender_address = "Test App <no-reply@example.com>"
transport = "smtp"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
retry_max_interval = "1s"
{sections}
{limits}"#
    )
}

impl Authbase {
    pub fn start(config: &str) -> Authbase {
        let dir = tempfile::tempdir().unwrap();
        Authbase::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Authbase {
        Authbase::start_logging(dir, config, "debug,hyper=info,rustls=info,r2d2=info")
    }

    /// For load tests: only warnings and the start-up line are logged.
    pub fn start_quiet(config: &str) -> Authbase {
        Authbase::start_logging(
            tempfile::tempdir().unwrap(),
            config,
            "warn,authbase=info,authbase::request=warn",
        )
    }

    fn start_logging(dir: tempfile::TempDir, config: &str, log: &str) -> Authbase {
        Authbase::spawn(dir, config, log, &[])
    }

    /// Start `authbase serve` in `dir` with `config`, the `RUST_LOG` filter `log` and
    /// extra environment variables for the child only (tests never change their own).
    fn spawn(dir: tempfile::TempDir, config: &str, log: &str, env: &[(&str, &str)]) -> Authbase {
        let config = &on_test_backend(dir.path(), config);
        std::fs::write(dir.path().join("authbase.toml"), config).unwrap();
        let mut child = Command::new(binary())
            .arg("serve")
            .current_dir(dir.path())
            .env("RUST_LOG", log)
            .env_remove("AUTHBASE_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start authbase");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let out = stdout.clone();
            let r = BufReader::new(child.stdout.take().unwrap());
            std::thread::spawn(move || {
                for l in r.lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&l);
                    o.push('\n');
                }
            });
        }
        {
            let err = stderr.clone();
            let r = BufReader::new(child.stderr.take().unwrap());
            std::thread::spawn(move || {
                for l in r.lines().map_while(Result::ok) {
                    if let Some(i) = l.find("listening on http://") {
                        let a = l[i + "listening on http://".len()..]
                            .split(|c: char| c.is_whitespace() || c == ';')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        let _ = tx.send(a);
                    }
                    let mut e = err.lock().unwrap();
                    e.push_str(&l);
                    e.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(WAIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "authbase did not start; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Authbase {
            child: Some(child),
            addr,
            dir,
            stdout,
            stderr,
            config: config.to_string(),
        }
    }

    /// The address of the `api.listen` listener, from the start-up log.
    pub fn api_addr(&self) -> String {
        let logs = self.logs();
        let i = logs
            .find("email API on http://")
            .expect("an api.listen listener")
            + "email API on http://".len();
        logs[i..].split('/').next().unwrap().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait (bounded by `WAIT`) until the server's log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn db_path(&self) -> PathBuf {
        assert!(
            !self.config.contains("postgres://"),
            "db_path() is the SQLite file; this server runs on PostgreSQL (mark the test SQLITE_ONLY, or use sql())"
        );
        self.dir.path().join("authbase.db")
    }

    /// The server's `database` setting: the SQLite file's path or a PostgreSQL URL.
    pub fn database(&self) -> String {
        database_of(&self.config).unwrap_or_else(|| self.db_path().display().to_string())
    }

    /// Run SQL (no parameters) on the server's database, whichever backend it is on;
    /// returns every row's columns.
    pub fn sql(&self, sql: &str) -> Vec<Vec<SqlValue>> {
        let db = self.database();
        if db.starts_with("postgres://") {
            return postgres_sql(&db, sql);
        }
        let path = if Path::new(&db).is_absolute() {
            PathBuf::from(db)
        } else {
            self.dir.path().join(db)
        };
        let c = rusqlite::Connection::open(path).unwrap();
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        let mut out = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            out.push(
                (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Null => SqlValue::Null,
                        rusqlite::types::ValueRef::Integer(v) => SqlValue::Int(v),
                        rusqlite::types::ValueRef::Text(t) => {
                            SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
                        rusqlite::types::ValueRef::Real(_) => panic!("a real number"),
                    })
                    .collect(),
            );
        }
        out
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("authbase did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop, then start again on the same folder (database and key).
    pub fn restart(mut self) -> Authbase {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let cfg = self.config.clone();
        Authbase::start_in(dir, &cfg)
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.addr)
    }
}

impl Drop for Authbase {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------- database backends

/// In a test's `top` config: this test is about the SQLite file itself (moving it, locking
/// it, its bytes), so it stays on SQLite in the PostgreSQL pass of `scripts/test`.
pub const SQLITE_ONLY: &str = "# sqlite-only: this test is about the SQLite file";

/// The throwaway PostgreSQL server `scripts/test` starts (`AUTHBASE_TEST_POSTGRES`).
pub fn postgres_server() -> String {
    std::env::var("AUTHBASE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("AUTHBASE_TEST_POSTGRES is not set: run the suite with `scripts/test`, which starts a PostgreSQL server for it")
}

/// Is this the PostgreSQL pass (`AUTHBASE_TEST_BACKEND=postgres`), in which servers the
/// tests start run on PostgreSQL instead of their SQLite file?
pub fn postgres_pass() -> bool {
    std::env::var("AUTHBASE_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// `config` for the backend of this run: in the PostgreSQL pass, the default SQLite file
/// becomes a database of its own on the test server, one per server folder (a restart in
/// the same folder finds the same database).
pub fn on_test_backend(dir: &Path, config: &str) -> String {
    const DEFAULT: &str = "database = \"authbase.db\"";
    if !postgres_pass() || config.contains(SQLITE_ONLY) || !config.contains(DEFAULT) {
        return config.to_string();
    }
    let marker = dir.join(".test-postgres-database");
    let url = match std::fs::read_to_string(&marker) {
        Ok(u) => u,
        Err(_) => {
            let u = new_postgres_database(&postgres_server());
            std::fs::write(&marker, &u).unwrap();
            u
        }
    };
    config.replace(DEFAULT, &format!("database = \"{url}\""))
}

fn database_of(config: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let v = l.strip_prefix("database = \"")?.strip_suffix('"')?;
        Some(v.to_string())
    })
}

/// A new, empty database on `server`; its URL.
pub fn new_postgres_database(server: &str) -> String {
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let server = server.to_string();
    let sql = format!("CREATE DATABASE {name}");
    postgres_sql(&server, &sql);
    let (base, _) = server.rsplit_once('/').expect("a URL with a database name");
    format!("{base}/{name}")
}

static NEXT_DB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Another process's hold on the database's write lock (see `Authbase::hold_write_lock`);
/// released when dropped.
pub struct WriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(h) = self.holder.take() {
            let _ = h.join();
        }
    }
}

impl Authbase {
    /// Hold the database's write lock from another connection, as another writer would:
    /// SQLite's exclusive lock on the file, or on PostgreSQL the advisory lock every
    /// authbase writer takes. Returns once it is held.
    pub fn hold_write_lock(&self) -> WriteLock {
        let db = self.database();
        let path = self.dir.path().join(&db);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            if db.starts_with("postgres://") {
                let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
                c.batch_execute(&format!("SELECT pg_advisory_lock({WRITE_LOCK})"))
                    .unwrap();
                held.send(()).unwrap();
                let _ = wait.recv();
                c.batch_execute(&format!("SELECT pg_advisory_unlock({WRITE_LOCK})"))
                    .unwrap();
            } else {
                let c = rusqlite::Connection::open(path).unwrap();
                c.execute_batch("BEGIN EXCLUSIVE").unwrap();
                held.send(()).unwrap();
                let _ = wait.recv();
                c.execute_batch("COMMIT").unwrap();
            }
        });
        is_held
            .recv_timeout(WAIT)
            .expect("the write lock was taken");
        WriteLock {
            release: Some(release),
            holder: Some(holder),
        }
    }
}

/// The advisory lock every authbase write transaction takes on PostgreSQL.
const WRITE_LOCK: i64 = authbase::store::db::WRITE_LOCK;

/// A column as `Authbase::sql` returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl SqlValue {
    pub fn int(&self) -> i64 {
        match self {
            SqlValue::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        }
    }
    pub fn blob(&self) -> Vec<u8> {
        match self {
            SqlValue::Blob(b) => b.clone(),
            other => panic!("not bytes: {other:?}"),
        }
    }
}

/// Run SQL on a PostgreSQL database (without TLS), on a thread of its own (the blocking
/// client must not run on an async test's runtime).
pub fn postgres_sql(url: &str, sql: &str) -> Vec<Vec<SqlValue>> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        use postgres::types::Type;
        let mut c = postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut out = Vec::new();
        let is_query = sql.trim_start().to_ascii_uppercase().starts_with("SELECT");
        if !is_query {
            c.batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            return out;
        }
        for r in c.query(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")) {
            out.push(
                (0..r.len())
                    .map(|i| {
                        let t = r.columns()[i].type_().clone();
                        let v = if t == Type::INT8 {
                            r.get::<_, Option<i64>>(i).map(SqlValue::Int)
                        } else if t == Type::INT4 {
                            r.get::<_, Option<i32>>(i).map(|v| SqlValue::Int(v.into()))
                        } else if t == Type::BOOL {
                            r.get::<_, Option<bool>>(i).map(|v| SqlValue::Int(v.into()))
                        } else if t == Type::BYTEA {
                            r.get::<_, Option<Vec<u8>>>(i).map(SqlValue::Blob)
                        } else {
                            r.get::<_, Option<String>>(i).map(SqlValue::Text)
                        };
                        v.unwrap_or(SqlValue::Null)
                    })
                    .collect(),
            );
        }
        out
    })
    .join()
    .unwrap()
}

// ---------------------------------------------------------------- HTTP client

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
    /// The value our session cookie is set to by this response, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let (n, rest) = v.split_once('=')?;
                (n == name).then(|| rest.split(';').next().unwrap_or("").to_string())
            })
    }
    /// The unescaped `value` of the input named `name` in an HTML page.
    pub fn input_value(&self, name: &str) -> Option<String> {
        let i = self.body.find(&format!("name=\"{name}\""))?;
        let rest = &self.body[i..];
        let v = rest.find("value=\"")? + "value=\"".len();
        let end = v + rest[v..].find('"')?;
        Some(
            rest[v..end]
                .replace("&#38;", "&")
                .replace("&amp;", "&")
                .replace("&#x2f;", "/")
                .replace("&#47;", "/")
                .replace("&#34;", "\"")
                .replace("&quot;", "\""),
        )
    }

    /// The number shown for cross-device approval (`data-match-number`).
    pub fn match_number(&self) -> String {
        let i = self
            .body
            .find("data-match-number=\"")
            .expect("page shows a match number")
            + "data-match-number=\"".len();
        self.body[i..i + self.body[i..].find('"').unwrap()].to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection to `addr`, bounded in time.
pub async fn send(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    tokio::time::timeout(WAIT, async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        let mut has_host = false;
        for (k, v) in headers {
            has_host |= k.eq_ignore_ascii_case("host");
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        if !has_host {
            req = req.header("host", addr);
        }
        let res = sender
            .send_request(req.body(Full::new(body.into())).unwrap())
            .await
            .expect("response");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .expect("request timed out")
}

/// A browser: one cookie jar (cookie name → value) and the headers a browser sends.
#[derive(Clone)]
pub struct Browser {
    pub addr: String,
    /// `Host` to send (a name served by a proxy on `addr`); default: `addr`.
    pub host: Option<String>,
    pub cookies: HashMap<String, String>,
    pub origin: Option<String>,
    pub user_agent: String,
}

impl Browser {
    pub fn new(addr: &str) -> Browser {
        Browser {
            addr: addr.to_string(),
            host: None,
            cookies: HashMap::new(),
            origin: None,
            user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
                .into(),
        }
    }

    pub fn session(&self) -> Option<&String> {
        self.cookies.get("session_id")
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut h: Vec<(&str, &str)> = vec![("user-agent", &self.user_agent)];
        if let Some(host) = &self.host {
            h.push(("host", host));
        }
        if !cookie.is_empty() {
            h.push(("cookie", &cookie));
        }
        h.extend_from_slice(extra);
        let r = send(&self.addr, method, path, &h, body).await;
        for v in r.headers.get_all("set-cookie").iter() {
            let v = v.to_str().unwrap();
            let (n, rest) = v.split_once('=').unwrap();
            let val = rest.split(';').next().unwrap_or("");
            if val.is_empty() || v.contains("Max-Age=0") {
                self.cookies.remove(n);
            } else {
                self.cookies.insert(n.to_string(), val.to_string());
            }
        }
        r
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn get_json(&mut self, path: &str) -> Resp {
        self.request(
            Method::GET,
            path,
            &[("accept", "application/json")],
            Bytes::new(),
        )
        .await
    }

    /// A urlencoded form POST, as a browser submits it (with our Origin when set).
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let origin = self.origin.clone();
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(o) = &origin {
            h.push(("origin", o));
        }
        self.request(Method::POST, path, &h, body).await
    }

    pub async fn me(&mut self) -> Resp {
        self.get("/me").await
    }
}

/// Start a sign-in for `email` in `browser` and return the mail it produced.
pub async fn request_link(browser: &mut Browser, smtp: &Smtp, email: &str) -> (Resp, Mail) {
    let before = smtp.messages().len();
    let r = browser.post_form("/auth", &[("email", email)]).await;
    assert_eq!(r.status, 200, "POST /auth: {}", r.body);
    let mails = smtp.wait_for(before + 1).await;
    (r, mails[before].clone())
}

// ---------------------------------------------------------------- admin CLI

/// Run `authbase --config DIR/authbase.toml ARGS` in `dir`, bounded in time; returns the
/// exit status, stdout and stderr.
pub fn cli_in(dir: &Path, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("--config")
        .arg(dir.join("authbase.toml"))
        .args(args)
        .current_dir(dir)
        .env_remove("AUTHBASE_CONFIG")
        .env_remove("RUST_LOG");
    run_cli(cmd, args)
}

/// Run a CLI command to its end (bounded by `WAIT`); exit status, stdout, stderr.
fn run_cli(mut cmd: Command, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the authbase CLI");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut r, &mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("authbase {args:?} did not finish in {}s", WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

impl Authbase {
    /// Run the admin CLI on this server's config file and database.
    pub fn cli(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        cli_in(self.dir.path(), args)
    }

    /// SIGKILL: the server ends without any cleanup; its folder stays.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------- environment

impl Authbase {
    /// `start`, with extra environment variables for the server (`AUTHBASE_*` overrides).
    /// Like `start`, with extra environment variables for the child only: tests never
    /// change their own environment.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Authbase {
        Authbase::spawn(
            tempfile::tempdir().unwrap(),
            config,
            "debug,hyper=info,rustls=info,r2d2=info",
            env,
        )
    }
}

/// Run `authbase ARGS` in `dir` with only the given `AUTHBASE_*` variables (the test
/// runner's own are removed, `AUTHBASE_TEST_*` aside), bounded in time; returns the exit
/// status, stdout and stderr.
pub fn cli_env(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("AUTHBASE_") && !k.starts_with("AUTHBASE_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    run_cli(cmd, args)
}
