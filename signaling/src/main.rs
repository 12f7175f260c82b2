//! `sluice-signaling`: the reference signaling service (see the library's docs).
#![forbid(unsafe_code)]

use clap::Parser;

/// Serves the meeting page and a WebSocket that puts browsers into Sluice meetings through the
/// control plane's gRPC API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The control plane's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Where browsers load the page and open the WebSocket (a loopback or https-fronted address:
    /// browsers give cameras only to secure contexts, and http://localhost is one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move { sluice_signaling::Signaling::connect(&a.grpc).await?.serve(a.listen).await })
}
