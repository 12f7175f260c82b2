//! `sluice-dataplane`: the forwarding daemon. Workers, backends and the control endpoint arrive
//! with the dataplane issue; today it reports what it carries.
use clap::Parser;

/// Sluice dataplane: forwards SRTP between conference legs by SSRC rewrite tables.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    ).init();
    tracing::info!(xdp_object_bytes = sluice_dataplane::xdp::XDP_OBJECT.len(), "sluice-dataplane");
    Ok(())
}
