//! The `whatsd` binary: parse the command line, call the library, map
//! errors to exit codes (78 = bad configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use whatsd::cli::{self, CliError, Client};
use whatsd::config::Config;

/// Exit code for a bad configuration (`EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;
/// Exit code for a command line that cannot work (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;

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
        /// Try whatsd without a phone: start an embedded fake WhatsApp server
        /// and point every session at it (builds with the `demo` feature only;
        /// such builds must never talk to real WhatsApp).
        #[arg(long)]
        demo: bool,
        /// Address the API listens on, e.g. `127.0.0.1:9090` (default
        /// `127.0.0.1:8080`); overrides `listen` from the file and
        /// `WHATSD_LISTEN`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
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
    /// Back up, restore and re-key the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// A consistent copy of the store, also while the daemon runs (then
    /// through its API, with the admin token). The master key is not in it.
    Backup {
        /// The daemon's data dir (read directly when no daemon holds it).
        #[arg(long, env = "WHATSD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Backup file, or a directory to put a time-stamped one in.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Restore a backup into an empty data dir (daemon stopped).
    Restore {
        #[arg(long, env = "WHATSD_DATA_DIR")]
        data_dir: PathBuf,
        /// The backup file.
        #[arg(long = "in")]
        input: PathBuf,
        /// The master key the backup was taken with, to check before writing.
        /// Unset: `$CREDENTIALS_DIRECTORY/master-key`, then `<data-dir>/master.key`.
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
    /// Re-seal the store with a new master key (daemon stopped).
    Rekey {
        #[arg(long, env = "WHATSD_DATA_DIR")]
        data_dir: PathBuf,
        /// The current key. Unset: `$CREDENTIALS_DIRECTORY/master-key`, then
        /// `<data-dir>/master.key`.
        #[arg(long)]
        old_key_file: Option<PathBuf>,
        /// The new key: 32 raw bytes or 64 hex digits.
        #[arg(long)]
        new_key_file: PathBuf,
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
        Command::Serve {
            config,
            demo,
            listen,
        } => serve(config, demo, listen),
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
        Command::Store { command } => exit_code(match command {
            StoreCommand::Backup {
                data_dir,
                out,
                remote,
            } => cli::store_backup(data_dir.as_deref(), &out, || remote.client()),
            StoreCommand::Restore {
                data_dir,
                input,
                master_key_file,
            } => cli::store_restore(&data_dir, &input, master_key_file.as_deref()),
            StoreCommand::Rekey {
                data_dir,
                old_key_file,
                new_key_file,
            } => cli::store_rekey(&data_dir, old_key_file.as_deref(), &new_key_file),
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
    exit_code(remote.client().and_then(|client| f(&client)))
}

fn exit_code(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whatsd: {e}");
            ExitCode::from(e.exit_code)
        }
    }
}

/// Hands the pages glibc's allocator keeps after frees back to the system
/// (run by the store once session removals settle; the library forbids
/// `unsafe`, so the call lives here).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes a plain size and only returns free memory
    // to the system; it is thread-safe (it locks each arena).
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// The heap as glibc's allocator counts it, all arenas (for the
/// `whatsd_heap_*` gauges; the library forbids `unsafe`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_figures() -> whatsd::metrics::HeapFigures {
    /// `struct mallinfo2` (glibc 2.33+, malloc.h): ten `size_t`s.
    #[repr(C)]
    struct MallInfo2 {
        _arena: usize,
        _ordblks: usize,
        _smblks: usize,
        _hblks: usize,
        hblkhd: usize,
        _usmblks: usize,
        _fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        _keepcost: usize,
    }
    unsafe extern "C" {
        fn mallinfo2() -> MallInfo2;
    }
    // SAFETY: mallinfo2 takes nothing and returns a plain struct by value;
    // it is thread-safe (it locks each arena while it counts).
    let info = unsafe { mallinfo2() };
    whatsd::metrics::HeapFigures {
        in_use: (info.uordblks as u64).saturating_add(info.hblkhd as u64),
        free: info.fordblks as u64,
    }
}

fn serve(path: Option<PathBuf>, demo: bool, listen: Option<String>) -> ExitCode {
    // Runs again with glibc's per-thread cache off (see store::release),
    // before anything else: reading the config and opening the log included.
    let restart = whatsd::store::release::restart_with_allocator_settings();
    if let Some(e) = restart {
        eprintln!("whatsd: cannot restart with the allocator settings ({e}); going on without");
    }
    if let Err(message) = demo::check(demo) {
        eprintln!("whatsd: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    // `--listen` is read as `WHATSD_LISTEN` would be, over the variable.
    let env = std::env::vars()
        .filter(|(k, _)| listen.is_none() || k != "WHATSD_LISTEN")
        .chain(
            listen
                .clone()
                .map(|addr| ("WHATSD_LISTEN".to_string(), addr)),
        );
    let config = match Config::load_with_env(path.as_deref(), env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("whatsd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = whatsd::telemetry::init(&config.log);
    whatsd::store::release::set_hook(release_free_memory);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    whatsd::metrics::set_heap_source(heap_figures);
    let options = whatsd::Options::new(path, log).listening_on(listen);
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
    let result = runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let mut options = options;
        demo::start(demo, &mut options, &config)
            .await
            .map_err(|source| whatsd::RunError::Bind {
                addr: "127.0.0.1:0 (the demo's fake WhatsApp server)".into(),
                source,
            })?;
        whatsd::run_with(config, options, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "whatsd stopped with an error");
            eprintln!("whatsd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `serve --demo`: an embedded fakewa (feature `demo`, which also turns off
/// the certificate-chain check: the fake cannot sign its chain).
#[cfg(feature = "demo")]
mod demo {
    use std::sync::Arc;

    use whatsd::demo::Demo;

    /// A demo build serves only the fake: it has no certificate check.
    pub fn check(demo: bool) -> Result<(), String> {
        if demo {
            Ok(())
        } else {
            Err(
                "this is a demo build (feature `demo`): it does not verify WhatsApp's \
                 certificate chain and must never talk to real WhatsApp; run \
                 `whatsd serve --demo`, or use a build without the feature"
                    .into(),
            )
        }
    }

    /// Starts the fake and announces it, loudly.
    pub async fn start(
        demo: bool,
        options: &mut whatsd::Options,
        config: &whatsd::config::Config,
    ) -> std::io::Result<()> {
        if !demo {
            return Ok(());
        }
        let fake = Demo::start(config).await?;
        eprintln!("{}", fake.banner(config));
        println!("demo fakewa control: {}", fake.control_url());
        tracing::warn!(
            control = %fake.control_url(),
            "demo mode: sessions use an embedded fake WhatsApp server"
        );
        options.demo = Some(Arc::clone(&fake));
        Ok(())
    }
}

#[cfg(not(feature = "demo"))]
mod demo {
    pub fn check(demo: bool) -> Result<(), String> {
        if demo {
            Err("--demo needs a build with the `demo` feature \
                 (cargo run --features demo -- serve --demo)"
                .into())
        } else {
            Ok(())
        }
    }

    pub async fn start(
        _demo: bool,
        _options: &mut whatsd::Options,
        _config: &whatsd::config::Config,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT, logging which. The handlers are installed
/// when this is called, not when the future is first polled: a SIGTERM during
/// start-up then stops the daemon gracefully instead of killing it.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match streams {
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
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "shutdown requested");
    }
}
