//! The management API: OpenWhisk's REST API v1 (what `wsk` talks to) for actions, packages,
//! triggers, rules, activations and namespaces, plus the internal endpoints the data and control
//! planes call.
//!
//! ```text
//!  wsk ──► Envoy ──► /api/v1/...        ─┐
//!  filter ─────────► /internal/v1/...   ─┼─► router ─► handlers ─► Store (blocking thread)
//!  xds-server ─────► /internal/v1/...   ─┘                           ├─► SQLite (--data-dir)
//!                                                                    └─► PostgreSQL (--database-url)
//! ```
//!
//! Invokes never come here: the Envoy data plane serves them, asking [`contract::paths::RESOLVE`]
//! which action a key may run and posting the records back to [`contract::paths::ACTIVATIONS`].
//! Firing a trigger is served here, and invokes its rules' actions through that same ingress
//! ([`ingress`]).
//!
//! [`contract::paths::RESOLVE`]: whisk_contract::paths::RESOLVE
//! [`contract::paths::ACTIVATIONS`]: whisk_contract::paths::ACTIVATIONS

pub mod actions;
pub mod activations;
pub mod auth;
pub mod error;
pub mod generation;
pub mod ingress;
pub mod internal;
pub mod metrics;
pub mod names;
pub mod namespaces;
pub mod packages;
pub mod paging;
pub mod retention;
pub mod rules;
pub mod sequences;
pub mod state;
pub mod store;
pub mod triggers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use whisk_contract::paths;

pub use crate::auth::Key;
pub use crate::ingress::Ingress;
pub use crate::state::AppState;
pub use crate::store::{Store, StoreError};

/// Requests above this size get 413 before their body is read (code can be 48 MB, plus JSON).
pub const MAX_BODY_BYTES: usize = 50 * 1024 * 1024;
/// The namespace `--seed-guest` creates, with [`auth::GUEST_KEY`].
pub const GUEST_NAMESPACE: &str = "guest";

/// Where the store lives: PostgreSQL when `database_url` is given, else SQLite in `data_dir`. The
/// server and the admin commands share these flags.
#[derive(Clone, clap::Args)]
pub struct Database {
    /// Directory of the SQLite database (created if missing); unused with `--database-url`.
    #[arg(long, env = "WHISK_DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,
    /// PostgreSQL instead of SQLite: `postgres://user:password@host:port/database` (or libpq's
    /// `key=value` form; no TLS). The schema is created or migrated on start.
    #[arg(long, env = "WHISK_DATABASE_URL", hide_env_values = true, value_parser = database_url)]
    pub database_url: Option<String>,
}

impl Database {
    /// SQLite in `data_dir`.
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into(), database_url: None }
    }

    /// Opens (and migrates) the store.
    pub fn open(&self) -> Result<Store, StoreError> {
        match &self.database_url {
            Some(url) => Store::connect(url),
            None => Store::open(&self.data_dir),
        }
    }
}

impl std::fmt::Debug for Database {
    /// Names the database without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.database_url.as_deref().map(str::parse::<tokio_postgres::Config>) {
            Some(Ok(config)) => f
                .debug_struct("Postgres")
                .field("hosts", &config.get_hosts())
                .field("ports", &config.get_ports())
                .field("user", &config.get_user())
                .field("dbname", &config.get_dbname())
                .finish_non_exhaustive(),
            Some(Err(_)) => f.write_str("Postgres(invalid URL)"),
            None => f.debug_tuple("Sqlite").field(&self.data_dir).finish(),
        }
    }
}

fn database_url(value: &str) -> Result<String, String> {
    value
        .parse::<tokio_postgres::Config>()
        .map(|_| value.to_owned())
        .map_err(|error| store::postgres::describe(&error))
}

/// How the server runs: flags, each with an environment variable.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "WHISK_API_LISTEN", default_value = "127.0.0.1:3234")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: Database,
    /// Shared secret of the internal endpoints (`x-whisk-internal-token`).
    #[arg(long, env = "WHISK_INTERNAL_TOKEN", hide_env_values = true, value_parser = non_empty)]
    pub internal_token: String,
    /// Make sure namespace `guest` exists with OpenWhisk's well-known standalone key.
    #[arg(long, env = "WHISK_SEED_GUEST", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed_guest: bool,
    /// Base URL of the data plane's ingress: firing a trigger invokes its rules' actions there.
    #[arg(long, env = "WHISK_INGRESS_URL", default_value = ingress::DEFAULT_INGRESS_URL, value_parser = ingress_url)]
    pub ingress_url: String,
    /// How long activation records are kept, counted from their start (`7d`, `12h`, `30m`; `0s`
    /// keeps them forever). Older ones are deleted in the background.
    #[arg(long, env = "WHISK_ACTIVATION_TTL", default_value = retention::DEFAULT_TTL, value_parser = humantime::parse_duration)]
    pub activation_ttl: Duration,
    /// Activations one namespace may have in flight at once, per Envoy (OpenWhisk's
    /// `concurrentInvocations`).
    #[arg(long, env = "WHISK_CONCURRENT_INVOCATIONS", default_value_t = 100)]
    pub concurrent_invocations: u64,
    /// Invokes one namespace may start per minute, per Envoy (OpenWhisk's `invocationsPerMinute`).
    #[arg(long, env = "WHISK_INVOCATIONS_PER_MINUTE", default_value_t = 120)]
    pub invocations_per_minute: u64,
}

impl std::fmt::Debug for Config {
    /// Leaves the token out, so the config can be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database", &self.database)
            .field("seed_guest", &self.seed_guest)
            .field("ingress_url", &self.ingress_url)
            .field("activation_ttl", &humantime::format_duration(self.activation_ttl).to_string())
            .finish_non_exhaustive()
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() { Err("must not be empty".into()) } else { Ok(value.to_owned()) }
}

fn ingress_url(value: &str) -> Result<String, String> {
    ingress::parse_url(value).map(|_| value.to_owned()).map_err(|error| error.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid namespace '{namespace}': {source}")]
    InvalidNamespace { namespace: String, source: names::NameError },
    #[error("namespace '{0}' does not exist")]
    NoSuchNamespace(String),
    #[error(transparent)]
    Ingress(#[from] ingress::IngressError),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// Every route; `state` carries the store, the key cache, the internal token, the ingress client
/// and the metrics.
pub fn router(state: AppState) -> Router {
    let action_code = format!("{}/{{namespace}}/{{name}}", paths::ACTION_CODE);
    let packaged_action_code = format!("{}/{{namespace}}/{{package}}/{{name}}", paths::ACTION_CODE);
    let internal = Router::new()
        .route(paths::RESOLVE, get(internal::resolve))
        .route(&action_code, get(internal::action_code))
        .route(&packaged_action_code, get(internal::action_code))
        .route(paths::ACTIVATIONS, post(internal::store_activations))
        .route(paths::GENERATION, get(generation::poll))
        .route_layer(middleware::from_fn_with_state(state.clone(), internal::require_token));
    let action = || get(actions::get).put(actions::put).delete(actions::delete).post(actions::invoke);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .route("/api/v1", get(api_info))
        .route("/api/v1/namespaces", get(namespaces::list))
        .route("/api/v1/namespaces/{namespace}/limits", get(namespaces::limits))
        .route("/api/v1/namespaces/{namespace}/actions", get(actions::list))
        .route("/api/v1/namespaces/{namespace}/actions/{name}", action())
        .route("/api/v1/namespaces/{namespace}/actions/{package}/{name}", action())
        .route("/api/v1/namespaces/{namespace}/packages", get(packages::list))
        .route(
            "/api/v1/namespaces/{namespace}/packages/{name}",
            get(packages::get).put(packages::put).delete(packages::delete),
        )
        .route("/api/v1/namespaces/{namespace}/triggers", get(triggers::list))
        .route(
            "/api/v1/namespaces/{namespace}/triggers/{name}",
            get(triggers::get).put(triggers::put).delete(triggers::delete).post(triggers::fire),
        )
        .route("/api/v1/namespaces/{namespace}/rules", get(rules::list))
        .route(
            "/api/v1/namespaces/{namespace}/rules/{name}",
            get(rules::get).put(rules::put).delete(rules::delete).post(rules::set_status),
        )
        .route("/api/v1/namespaces/{namespace}/activations", get(activations::list))
        .route("/api/v1/namespaces/{namespace}/activations/{id}", get(activations::get))
        .route("/api/v1/namespaces/{namespace}/activations/{id}/logs", get(activations::logs))
        .route("/api/v1/namespaces/{namespace}/activations/{id}/result", get(activations::result))
        .merge(internal)
        .fallback(error::not_found)
        // After every route: it applies to the method routers registered so far.
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), generation::bump_on_write))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// `GET /api/v1`: what the API is (no key needed, as in OpenWhisk); `build` is what `wsk property
/// get --apibuild` shows.
async fn api_info() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "description": "OpenWhisk",
        "api_paths": ["/api/v1"],
        "api_version": "1.0.0",
        "api_version_path": "v1",
        "build": env!("CARGO_PKG_VERSION"),
        "buildno": env!("CARGO_PKG_VERSION"),
    }))
}

async fn health() -> &'static str {
    "ok"
}

/// Opens the store `config.database` names (migrating it) and seeds `guest` if asked.
pub fn open_state(config: &Config) -> Result<AppState, Error> {
    let ingress = Ingress::new(&config.ingress_url)?;
    let store = config.database.open()?;
    tracing::info!(backend = store.backend(), "store open");
    if config.seed_guest {
        seed_guest(&store)?;
    }
    let limits = whisk_contract::NamespaceLimits {
        concurrent_invocations: config.concurrent_invocations,
        invocations_per_minute: config.invocations_per_minute,
    };
    Ok(AppState::with_limits(store, config.internal_token.clone(), ingress, limits))
}

/// Makes sure `guest` exists and accepts OpenWhisk's well-known standalone key.
pub fn seed_guest(store: &Store) -> Result<(), StoreError> {
    match Key::parse(auth::GUEST_KEY) {
        Some(key) => store.ensure_namespace_key(GUEST_NAMESPACE, &key, state::epoch_millis()),
        None => Ok(()),
    }
}

/// Binds `config.listen` and serves until SIGTERM or SIGINT, then drains in-flight requests.
pub async fn run(config: Config) -> Result<(), Error> {
    tracing::info!(?config, "starting the management API");
    // Connecting and migrating block: keep them off the async workers.
    let opening = config.clone();
    let state = tokio::task::spawn_blocking(move || open_state(&opening))
        .await
        .map_err(|error| Error::Store(StoreError::Task(error.to_string())))??;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind { address: config.listen, source })?;
    serve(listener, state, config.activation_ttl, shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` completes (what tests and e2e use to pick
/// port 0 and stop the server at will), deleting activation records older than `activation_ttl` in
/// the background meanwhile ([`retention`]; zero keeps them). Returns once requests are drained and
/// the retention task has stopped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    activation_ttl: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "management API listening");
    }
    let (stop_retention, retention_stopped) = tokio::sync::watch::channel(false);
    let retaining = state.clone();
    let retention = tokio::spawn(async move {
        retention::run(retaining.store(), retaining.metrics(), activation_ttl, retention_stopped).await;
    });
    let closing = state.clone();
    let shutdown = async move {
        shutdown.await;
        // Held generation polls would keep a graceful shutdown waiting for their 30 s: answer them.
        closing.generation().bump();
        // A sweep under way ends after its batch.
        stop_retention.send_replace(true);
    };
    // Also when serving fails: the dropped sender stops the retention task.
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    if let Err(error) = retention.await {
        tracing::warn!(%error, "the activation retention task failed");
    }
    served.map_err(Error::Serve)?;
    tracing::info!("management API stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM. A signal that cannot be watched is logged and ignored, leaving
/// the other one.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot watch SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// `management-api user create`: a new namespace with a fresh key, which is returned (and shown
/// once: only its hash is stored).
pub fn create_user(database: &Database, namespace: &str) -> Result<Key, Error> {
    names::validate_entity_name(namespace)
        .map_err(|source| Error::InvalidNamespace { namespace: namespace.to_owned(), source })?;
    let store = database.open()?;
    let key = Key::generate();
    store.create_namespace(namespace, &key, state::epoch_millis())?;
    Ok(key)
}

/// `management-api user delete`: removes the namespace and its keys. A running server stops
/// accepting them within [`state::AUTH_CACHE_TTL`].
pub fn delete_user(database: &Database, namespace: &str) -> Result<(), Error> {
    let store = database.open()?;
    if store.delete_namespace(namespace)? {
        Ok(())
    } else {
        Err(Error::NoSuchNamespace(namespace.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_activation_ttl_reads_humantime_and_defaults_to_a_week() {
        let parse = |ttl: &[&str]| {
            let args = [&["management-api", "--internal-token", "t"], ttl].concat();
            Cli::try_parse_from(args).map(|cli| cli.config.activation_ttl)
        };
        const DAY: u64 = 24 * 60 * 60;
        assert_eq!(parse(&[]).unwrap(), Duration::from_secs(7 * DAY));
        assert_eq!(parse(&["--activation-ttl", "12h"]).unwrap(), Duration::from_secs(12 * 60 * 60));
        assert_eq!(parse(&["--activation-ttl", "1w 2d"]).unwrap(), Duration::from_secs(9 * DAY));
        assert_eq!(parse(&["--activation-ttl", "0s"]).unwrap(), Duration::ZERO);
        for bad in ["soon", "7", "-1d"] {
            assert!(parse(&["--activation-ttl", bad]).is_err(), "{bad}");
        }
    }
}
