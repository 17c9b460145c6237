//! `fakewa --listen 127.0.0.1:7001 --control 127.0.0.1:7002 --media 127.0.0.1:0 --state-dir DIR`

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// A protocol-level fake WhatsApp server for testing (loopback only).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// WhatsApp WebSocket listener (clients use ws://ADDR/ws/chat).
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Control API listener (JSON over HTTP).
    #[arg(long, default_value = "127.0.0.1:7002")]
    control: SocketAddr,
    /// Media CDN listener (HTTPS with fakewa's own CA: GET /control/media/ca.pem).
    #[arg(long, default_value = "127.0.0.1:0")]
    media: SocketAddr,
    /// Where paired devices are kept across restarts (in memory when absent).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Do not assign LIDs (PN-only world).
    #[arg(long)]
    no_lid: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    for addr in [args.listen, args.control, args.media] {
        if !addr.ip().is_loopback() {
            eprintln!("fakewa: refusing to listen on {addr}: loopback addresses only");
            return std::process::ExitCode::from(2);
        }
    }
    let config = fakewa::Config {
        state_dir: args.state_dir,
        assign_lid: !args.no_lid,
        media_listen: args.media,
        ..Default::default()
    };
    let fake = match fakewa::FakeWa::start_with(config, args.listen, args.control).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fakewa: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "fakewa: whatsapp {} control {} media https://{}",
        fake.ws_url(),
        fake.control_url(),
        fake.media_addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    fake.stop();
    std::process::ExitCode::SUCCESS
}
