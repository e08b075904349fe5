//! The local action runtime: one process per container, speaking the OpenWhisk action runtime
//! protocol (`POST /init`, `POST /run`, see `shared/openwhisk/PROTOCOL.md`) and running the action as
//! a local process.
//!
//! ```text
//!  data plane ──HTTP──► server (axum) ──► action ──► process ──► node/python launcher (action loop)
//!                              │             │                    or the native executable per /run
//!                              │             └─ code (files, entry point), envelope (env vars, deadline)
//!                              └─ outcome (status + body), logs (x-whisk-logs header)
//! ```
//!
//! The pure parts (`envelope`, `outcome`, `logs`, `code`'s entry-point rules, `kind`) decide; the
//! `server`, `action` and `process` modules only translate and manage processes.

pub mod action;
pub mod code;
pub mod config;
pub mod envelope;
pub mod kind;
pub mod logs;
pub mod outcome;
pub mod process;
pub mod server;

use anyhow::Context as _;

pub use config::Config;
pub use kind::Kind;
pub use server::{AppState, router};

/// Serves the protocol until SIGTERM or SIGINT, then kills the action and removes the work directory.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let state = AppState::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Before serving, so that an `/init` right after start finds it (connections wait in the backlog).
    state.start_standby().await;
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
        container = %config.container_id,
        kind = %config.kind,
        work_dir = %state.work_dir().display(),
        "action runtime listening"
    );
    let signalled = state.clone();
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            // Running activations kill their process and answer, so the graceful drain is quick.
            signalled.begin_shutdown();
        })
        .await;
    state.stop().await;
    served.context("serving the runtime protocol")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (term, int) => {
            tracing::warn!(?term, ?int, "cannot install the signal handlers; only Ctrl-C stops the runtime");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
