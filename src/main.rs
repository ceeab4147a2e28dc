//! The `authbase` command: parse the command line, start logging, load the config (one
//! line and exit 64 on error), bind, and hand over to the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use authbase::config::{Config, ProcessEnv};

/// Passwordless, email-only sign-in as a forward-auth sidecar for nginx, Traefik and Caddy.
#[derive(Parser)]
#[command(name = "authbase", version, propagate_version = true)]
struct Cli {
    /// Configuration file [default: ./authbase.toml, or built-in defaults when there is none].
    #[arg(long, global = true, env = "AUTHBASE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "AUTHBASE_LOG_FORMAT")]
    log_format: LogFormat,
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
    /// List or revoke sessions (works while servers run).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
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
    /// Sign out now; running servers stop accepting the sessions within a second.
    Revoke {
        /// The sessions of this address.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        user: Option<String>,
        /// Every session of every user.
        #[arg(long)]
        all: bool,
    },
}

/// sysexits.h: EX_CONFIG for configuration errors, EX_UNAVAILABLE / EX_SOFTWARE otherwise.
const EXIT_CONFIG: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_DATAERR: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
    match cli.command {
        Command::CheckConfig => {
            for w in cfg.warnings() {
                eprintln!("authbase: warning: {w}");
            }
            println!("{source}: ok");
            ExitCode::SUCCESS
        }
        Command::Serve => {
            tracing::info!(config = %source, "configuration loaded");
            serve(cfg)
        }
        Command::Sessions { command } => admin(cfg, command),
    }
}

/// The tokio runtime: multi-threaded for the server, one thread for admin commands.
fn runtime(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("authbase: cannot start the runtime: {e}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

fn admin(cfg: Config, command: SessionsCommand) -> ExitCode {
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let out = rt.block_on(async {
        match command {
            SessionsCommand::List { user, json } => {
                authbase::admin::sessions_list(&cfg, user.as_deref(), json).await
            }
            SessionsCommand::Revoke { user, .. } => {
                authbase::admin::sessions_revoke(&cfg, user.as_deref()).await
            }
        }
    });
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authbase: {e}");
            ExitCode::from(EXIT_DATAERR)
        }
    }
}

fn serve(cfg: Config) -> ExitCode {
    let rt = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let addr = cfg.listen_addr();
        for w in cfg.warnings() {
            tracing::warn!("{w}");
        }
        let public = cfg.public_base().to_string();
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
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(address = %bound, "listening on http://{bound}; open {public}/");
        authbase::serve(app, background, listener, shutdown_signal()).await;
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
