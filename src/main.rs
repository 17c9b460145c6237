//! The `whatsd` binary: parse the command line, call the library, map
//! errors to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Self-hosted WhatsApp multi-device session daemon.
#[derive(Parser)]
#[command(name = "whatsd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print how this binary was built (checked by CI on release builds).
    BuildInfo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::BuildInfo => {
            let enforced = whatsd::wa::build_info::cert_chain_verification_enforced();
            println!("version: {}", env!("CARGO_PKG_VERSION"));
            println!(
                "cert_chain_verification: {}",
                if enforced { "enforced" } else { "DISABLED (test/demo build: never use with real WhatsApp)" }
            );
            ExitCode::SUCCESS
        }
    }
}
