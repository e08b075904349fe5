//! `xds-server`: parses its configuration and runs the control server.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    xds_server::init_tracing();
    xds_server::run(xds_server::Config::parse()).await
}
