//! `management-api`: the OpenWhisk REST API server and its admin commands (like `wskadmin user`).

use std::io::Write as _;

use clap::{Parser, Subcommand};
use management_api::{Config, Database};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API and the internal endpoints.
    Serve(Config),
    /// Manage namespaces and their keys.
    #[command(subcommand)]
    User(User),
}

#[derive(Debug, Subcommand)]
enum User {
    /// Create a namespace with a fresh key and print the key (`uuid:secret`).
    Create {
        namespace: String,
        #[command(flatten)]
        database: Database,
    },
    /// Delete a namespace and its keys.
    Delete {
        namespace: String,
        #[command(flatten)]
        database: Database,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(config) => management_api::run(config).await?,
        Command::User(User::Create { namespace, database }) => {
            let key = management_api::create_user(&database, &namespace)?;
            writeln!(std::io::stdout(), "{key}")?;
        }
        Command::User(User::Delete { namespace, database }) => {
            management_api::delete_user(&database, &namespace)?;
            writeln!(std::io::stdout(), "namespace '{namespace}' deleted")?;
        }
    }
    Ok(())
}
