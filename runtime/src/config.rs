//! The proxy's configuration: one clap struct, every flag also read from an `ACTION_RUNTIME_*`
//! environment variable, parsed once in `main`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::kind::Kind;

/// Default cap of the `x-whisk-logs` header's JSON, in bytes.
pub const DEFAULT_LOG_HEADER_LIMIT: usize = 32 * 1024;

/// One container: one action, one process tree, one port.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "action-runtime",
    version,
    about = "Runs one OpenWhisk action locally behind the /init and /run protocol"
)]
pub struct Config {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, env = "ACTION_RUNTIME_LISTEN")]
    pub listen: SocketAddr,
    /// This container's id; a request whose x-whisk-container-id differs is refused.
    #[arg(long, env = "ACTION_RUNTIME_CONTAINER_ID")]
    pub container_id: String,
    /// Runtime kind: nodejs:*, python:*, native or blackbox.
    #[arg(long, env = "ACTION_RUNTIME_KIND")]
    pub kind: Kind,
    /// Where the action's files go; default: a temporary directory. Removed on exit.
    #[arg(long, env = "ACTION_RUNTIME_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Cap, in bytes, of the JSON array of log lines returned in the x-whisk-logs header.
    #[arg(long, env = "ACTION_RUNTIME_LOG_HEADER_LIMIT", default_value_t = DEFAULT_LOG_HEADER_LIMIT)]
    pub log_header_limit: usize,
    /// The Node.js interpreter.
    #[arg(long, env = "ACTION_RUNTIME_NODE", default_value = "node")]
    pub node: PathBuf,
    /// The Python 3 interpreter.
    #[arg(long, env = "ACTION_RUNTIME_PYTHON", default_value = "python3")]
    pub python: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_defaults() {
        let c = Config::try_parse_from([
            "action-runtime",
            "--listen",
            "127.0.0.1:0",
            "--container-id",
            "c1",
            "--kind",
            "nodejs:20",
        ])
        .unwrap();
        assert_eq!(c.kind, Kind::Node);
        assert_eq!(c.log_header_limit, 32768);
        assert_eq!(c.work_dir, None);
    }

    #[test]
    fn unknown_kind_is_refused_with_a_clear_error() {
        let err = Config::try_parse_from([
            "action-runtime",
            "--listen",
            "127.0.0.1:0",
            "--container-id",
            "c1",
            "--kind",
            "java:8",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("unknown kind 'java:8'"), "{err}");
    }
}
