//! The `authbase` command: parse the command line, start logging, load the config (one
//! line and exit 64 on error), bind, and hand over to the library.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use authbase::admin::{self, AdminError, Report};
use authbase::config::{Config, ProcessEnv};

/// Passwordless, email-only sign-in as a forward-auth sidecar for nginx, Traefik and Caddy.
#[derive(Parser)]
#[command(
    name = "authbase",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AUTHBASE_GIT_REV"), ")"),
    propagate_version = true
)]
struct Cli {
    /// Configuration file [default: ./authbase.toml, or built-in defaults when there is none].
    #[arg(long, global = true, env = "AUTHBASE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr [default: `log.format` in the config (or AUTHBASE_LOG_FORMAT,
    /// its override), else pretty].
    // Not clap's `env`: AUTHBASE_LOG_FORMAT is read as the override of `log.format`, so a
    // bad value is a config error naming the variable (exit 64), as for every other one.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Validate the configuration file and exit (0 when valid, 64 when not).
    CheckConfig,
    /// Ask the server on the configured `listen` address for GET /healthz (0.0.0.0 and
    /// [::] mean loopback) within 3 s: exit 0 on 200, else 1. For container HEALTHCHECKs.
    Healthcheck,
    /// List, invite, remove, block and unblock users; manage their groups (works while
    /// servers run).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// List or revoke sessions (works while servers run).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// List or rotate the keys that sign X-User-Assertion (works while servers run).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Queue an email to a user (sent by the running server, like the email API).
    Email {
        #[command(subcommand)]
        command: EmailCommand,
    },
    /// Inspect and manage the mail queue (works while servers run).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Create the database if needed and migrate it to the latest schema.
    Migrate,
    /// Copy every row of a database into an empty one (by default the configured one),
    /// e.g. `--from authbase.db` into PostgreSQL. Stop the servers first.
    Copy {
        /// The database to copy: a SQLite file or a postgres:// URL.
        #[arg(long)]
        from: String,
        /// Where to: a new SQLite file or an empty PostgreSQL database (default: the
        /// configured `database`).
        #[arg(long)]
        to: Option<String>,
    },
    /// Copy the database to a new file while servers run (SQLite online backup).
    Backup {
        /// The file to write; it must not exist.
        path: PathBuf,
    },
    /// Show the audit trail, oldest first.
    Audit {
        /// Only the events of this address.
        #[arg(long)]
        user: Option<String>,
        /// Only events since: a duration back from now (1h, 7d), a UTC date (2026-11-28)
        /// or a UTC time (2026-11-28T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only this event (e.g. user_blocked).
        #[arg(long)]
        event: Option<String>,
        /// At most this many events (the newest).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// List users: status, groups, live sessions.
    List {
        /// Only this address.
        #[arg(long)]
        user: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Invite an address (creating the user if new), optionally into groups.
    Add {
        email: String,
        /// A group to add the user to (repeatable).
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
    },
    /// Delete a user, their sessions and sign-in requests (the address may sign up again).
    Remove { email: String },
    /// End a user's sessions and refuse their sign-ins and emails (unknown addresses too).
    Block { email: String },
    /// Let a blocked user sign in again.
    Unblock { email: String },
    /// Add or remove groups; prints the user's groups.
    Groups {
        email: String,
        /// A group to add (repeatable).
        #[arg(long, value_name = "G")]
        add: Vec<String>,
        /// A group to remove (repeatable).
        #[arg(long, value_name = "G")]
        remove: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EmailCommand {
    /// Queue a message; prints its id and Message-ID. A running server sends it within
    /// a few seconds (`authbase outbox list` shows how it went).
    Send(admin::outbox::SendArgs),
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Messages, newest first: status, attempts, next attempt or last error.
    List {
        /// Only messages in this state: queued, sent or failed (repeatable).
        #[arg(long)]
        state: Vec<String>,
        /// Only messages of this kind: api or sign_in.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue failed (or waiting) messages again, due now, with a fresh attempt count and
    /// max_age. Sent messages are never sent again.
    Retry {
        /// Message ids.
        ids: Vec<i64>,
        /// Every failed message.
        #[arg(long)]
        failed: bool,
    },
    /// Delete messages (not one being sent right now).
    Purge {
        /// Message ids.
        ids: Vec<i64>,
        /// Messages in this state: sent, failed or queued (repeatable).
        #[arg(long)]
        state: Vec<String>,
        /// Only messages created at least this long ago (e.g. 7d).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Key ids, when created, active or published until when.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a new signing key: published at once, signing 6 minutes later (when apps'
    /// cached key sets have expired); the previous key stays published for an hour after
    /// that. Waits until running servers have the new key.
    Rotate {
        /// Sign with the new key at once (the old one leaked): apps that fetched the key
        /// set in the last minutes may refuse new tokens until they fetch it again.
        #[arg(long, conflicts_with = "delay")]
        now: bool,
        /// How long the new key is published before it signs (default 6m).
        #[arg(long, value_name = "DURATION")]
        delay: Option<String>,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List signed-in sessions, newest first.
    List {
        /// Only the sessions of this address.
        #[arg(long)]
        user: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sign out now; waits until running servers have stopped accepting the sessions.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["user", "all", "id"])))]
    Revoke {
        /// The sessions of this address.
        #[arg(long)]
        user: Option<String>,
        /// Every session of every user.
        #[arg(long)]
        all: bool,
        /// One session, by the ID `sessions list` shows.
        #[arg(long)]
        id: Option<i64>,
    },
}

/// sysexits.h: EX_CONFIG for configuration errors, EX_UNAVAILABLE / EX_SOFTWARE otherwise.
const EXIT_CONFIG: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_DATAERR: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = PathBuf::from("authbase.toml");
    let (cfg, source) = match &cli.config {
        Some(p) => (Config::load(p, &ProcessEnv), p.display().to_string()),
        None if default.exists() => (Config::load(&default, &ProcessEnv), "authbase.toml".into()),
        None => (
            Config::from_toml("", &ProcessEnv),
            "built-in defaults".into(),
        ),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authbase: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let format = cli.log_format.unwrap_or(if cfg.log.format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    });
    init_logging(format, &cfg.log.level);
    match cli.command {
        Command::CheckConfig => {
            println!("{source}: ok");
            print!("{}", cfg.effective_toml());
            for w in cfg.warnings() {
                eprintln!("authbase: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Command::Healthcheck => {
            match authbase::healthcheck::check(cfg.listen_addr(), authbase::healthcheck::TIMEOUT) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("authbase: healthcheck: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            tracing::info!(config = %source, "configuration loaded");
            serve(cfg)
        }
        Command::Users { command } => run_admin(users(&cfg, command)),
        Command::Migrate => run_admin(admin::migrate(&cfg)),
        Command::Email {
            command: EmailCommand::Send(args),
        } => run_admin(admin::outbox::email_send(&cfg, args)),
        Command::Outbox { command } => run_admin(async {
            match command {
                OutboxCommand::List {
                    state,
                    kind,
                    limit,
                    json,
                } => admin::outbox::outbox_list(&cfg, state, kind, limit, json).await,
                OutboxCommand::Retry { ids, failed } => {
                    admin::outbox::outbox_retry(&cfg, ids, failed).await
                }
                OutboxCommand::Purge {
                    ids,
                    state,
                    older_than,
                } => admin::outbox::outbox_purge(&cfg, ids, state, older_than).await,
            }
        }),
        Command::Backup { path } => run_admin(admin::backup(&cfg, &path)),
        Command::Copy { from, to } => run_admin(admin::copy(&cfg, &from, to.as_deref())),
        Command::Sessions { command } => run_admin(sessions(&cfg, command)),
        Command::Keys { command } => run_admin(async {
            match command {
                KeysCommand::List { json } => admin::keys_list(&cfg, json).await,
                KeysCommand::Rotate { now, delay } => {
                    let delay = if now { Some("0".to_string()) } else { delay };
                    admin::keys_rotate(&cfg, delay.as_deref()).await
                }
            }
        }),
        Command::Audit {
            user,
            since,
            event,
            limit,
            json,
        } => run_admin(admin::audit(
            &cfg,
            user.as_deref(),
            since.as_deref(),
            event.as_deref(),
            limit,
            json,
        )),
    }
}

/// The tokio runtime: `workers` request threads for the server (`Config::workers`), one
/// thread for admin commands (`None`).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = match workers {
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("authbase: cannot start the runtime: {e}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

async fn users(cfg: &Config, command: UsersCommand) -> Result<Report, AdminError> {
    match command {
        UsersCommand::List { user, json } => admin::users_list(cfg, user.as_deref(), json).await,
        UsersCommand::Add { email, groups } => admin::users_add(cfg, &email, &groups).await,
        UsersCommand::Remove { email } => admin::users_remove(cfg, &email).await,
        UsersCommand::Block { email } => admin::users_block(cfg, &email).await,
        UsersCommand::Unblock { email } => admin::users_unblock(cfg, &email).await,
        UsersCommand::Groups { email, add, remove } => {
            admin::users_groups(cfg, &email, &add, &remove).await
        }
    }
}

async fn sessions(cfg: &Config, command: SessionsCommand) -> Result<Report, AdminError> {
    match command {
        SessionsCommand::List { user, json } => {
            admin::sessions_list(cfg, user.as_deref(), json).await
        }
        SessionsCommand::Revoke { id: Some(id), .. } => admin::session_revoke(cfg, id).await,
        SessionsCommand::Revoke { user, .. } => admin::sessions_revoke(cfg, user.as_deref()).await,
    }
}

/// Run an admin command: its output on stdout, a warning or the error on stderr.
fn run_admin(command: impl Future<Output = Result<Report, AdminError>>) -> ExitCode {
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(command) {
        Ok(report) => {
            print!("{}", report.out);
            if let Some(w) = report.warning {
                eprintln!("authbase: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authbase: {e}");
            ExitCode::from(match e {
                AdminError::Input(_) => EXIT_DATAERR,
                AdminError::Unavailable(_) => EXIT_UNAVAILABLE,
            })
        }
    }
}

fn serve(cfg: Config) -> ExitCode {
    let rt = match runtime(Some(cfg.workers())) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let addr = cfg.listen_addr();
        let metrics_addr = cfg.derived.metrics_listen;
        let api_addr = cfg.derived.api_listen;
        for w in cfg.warnings() {
            tracing::warn!("{w}");
        }
        let (app, background) = match authbase::prepare(cfg) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("authbase: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("authbase: cannot listen on {addr}: {e}");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let metrics_listener = match metrics_addr {
            None => None,
            Some(a) => match tokio::net::TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("authbase: cannot listen on {a} (metrics.listen): {e}");
                    return ExitCode::from(EXIT_UNAVAILABLE);
                }
            },
        };
        let api_listener = match api_addr {
            None => None,
            Some(a) => match tokio::net::TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("authbase: cannot listen on {a} (api.listen): {e}");
                    return ExitCode::from(EXIT_UNAVAILABLE);
                }
            },
        };
        authbase::serve(
            app,
            background,
            listener,
            metrics_listener,
            api_listener,
            shutdown_signal(),
        )
        .await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Logging on stderr: `RUST_LOG` wins over `log.level` (validated at load).
fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => b.init(),
        LogFormat::Json => b.json().init(),
    }
}
