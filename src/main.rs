//! The `whatsd` binary: parse the command line, call the library, map
//! errors to exit codes (78 = bad configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whatsd::cli::{self, CliError, Client};
use whatsd::config::Config;

/// Exit code for a bad configuration (`EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;

/// Self-hosted WhatsApp multi-device session daemon.
#[derive(Parser)]
#[command(name = "whatsd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the daemon's API is, for the client commands.
#[derive(clap::Args)]
struct Remote {
    /// Base URL of the daemon's API.
    #[arg(
        long,
        env = "WHATSD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// File holding the token (`$WHATSD_TOKEN` wins).
    #[arg(long, env = "WHATSD_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.url, self.token_file.clone())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print how this binary was built (checked by CI on release builds).
    BuildInfo,
    /// Run the daemon.
    Serve {
        /// TOML configuration file; without one, defaults and `WHATSD_*` apply.
        #[arg(long, env = "WHATSD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file (and the `WHATSD_*` environment) and exit.
    ValidateConfig { file: PathBuf },
    /// Manage sessions through the API.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a session's pairing QR and follow its refreshes until paired.
    Qr {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Manage tenants through the API (admin token).
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one session as JSON.
    Show {
        id: String,
    },
    /// Create a session (and start it unless --no-start).
    Create {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        no_start: bool,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    /// Wipe the session's keys and pair again.
    Reset {
        id: String,
    },
    /// Unlink the device from the phone.
    Logout {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Create a tenant; prints its token once.
    Create {
        id: String,
    },
    List,
    Show {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Issue a new token; the old one stops working.
    RotateToken {
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::BuildInfo => {
            let enforced = whatsd::wa::build_info::cert_chain_verification_enforced();
            println!("version: {}", env!("CARGO_PKG_VERSION"));
            println!(
                "cert_chain_verification: {}",
                if enforced {
                    "enforced"
                } else {
                    "DISABLED (test/demo build: never use with real WhatsApp)"
                }
            );
            ExitCode::SUCCESS
        }
        Command::Serve { config } => serve(config),
        Command::ValidateConfig { file } => match Config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("whatsd: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Sessions { command, remote } => client_command(&remote, |client| match command {
            SessionsCommand::List { state, tenant } => {
                cli::sessions_list(client, state.as_deref(), tenant.as_deref())
            }
            SessionsCommand::Show { id } => cli::sessions_show(client, &id),
            SessionsCommand::Create {
                id,
                tenant,
                no_start,
            } => cli::sessions_create(client, id.as_deref(), tenant.as_deref(), !no_start),
            SessionsCommand::Start { id } => cli::sessions_action(client, &id, "start"),
            SessionsCommand::Stop { id } => cli::sessions_action(client, &id, "stop"),
            SessionsCommand::Reset { id } => cli::sessions_action(client, &id, "reset"),
            SessionsCommand::Logout { id } => cli::sessions_action(client, &id, "logout"),
            SessionsCommand::Delete { id } => cli::sessions_delete(client, &id),
        }),
        Command::Tenants { command, remote } => client_command(&remote, |client| match command {
            TenantsCommand::Create { id } => cli::tenants_create(client, &id),
            TenantsCommand::List => cli::tenants_list(client),
            TenantsCommand::Show { id } => cli::tenants_show(client, &id),
            TenantsCommand::Delete { id } => cli::tenants_delete(client, &id),
            TenantsCommand::RotateToken { id } => cli::tenants_rotate(client, &id),
        }),
        Command::Qr { id, remote } => client_command(&remote, |client| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError {
                    message: e.to_string(),
                    exit_code: 1,
                })?;
            runtime.block_on(cli::follow_qr(client, &id))
        }),
    }
}

fn client_command(remote: &Remote, f: impl FnOnce(&Client) -> Result<(), CliError>) -> ExitCode {
    match remote.client().and_then(|client| f(&client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whatsd: {e}");
            ExitCode::from(e.exit_code)
        }
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("whatsd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("whatsd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(whatsd::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "whatsd stopped with an error");
            eprintln!("whatsd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT, logging which.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!(signal = "SIGINT", "shutdown requested");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "shutdown requested");
    }
}
