//! `action-runtime`: one local OpenWhisk action container (see the library docs).

use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = action_runtime::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; the control plane collects plain lines.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    action_runtime::run(config).await
}
