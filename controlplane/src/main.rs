//! `sluice-controlplane`: programs the dataplane for signaling services (gRPC).
use clap::Parser;

/// Sluice control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
