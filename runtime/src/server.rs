//! The HTTP shell: `/init`, `/run` and `/health` handlers over the shared [`AppState`]. They only
//! translate between HTTP and [`crate::action`]; every decision lives in the pure modules.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};
use whisk_contract::headers;

use crate::action::{Action, InitError, Interpreters, Setup, Standby};
use crate::config::Config;
use crate::envelope;
use crate::logs::{self, LogLine};

/// Request body limit: code may be 48 MB of base64, parameters and results several MB.
pub const BODY_LIMIT: usize = 96 * 1024 * 1024;

pub const ALREADY_INITIALIZED: &str = "Internal error. Cannot initialize the action more than once.";
pub const NOT_INITIALIZED: &str = "The action has not been initialized.";
pub const BUSY: &str = "The container is busy with another activation.";

/// Why the state could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Unable to prepare the work directory {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
}

/// Where the action's files live.
#[derive(Debug)]
enum WorkDir {
    Temp(tempfile::TempDir),
    /// Given with `--work-dir`; `created` when it did not exist, so it is ours to remove.
    Given {
        path: PathBuf,
        created: bool,
    },
}

impl WorkDir {
    fn prepare(given: Option<&Path>) -> Result<Self, StateError> {
        let Some(path) = given else {
            let temp = tempfile::Builder::new()
                .prefix("action-runtime-")
                .tempdir()
                .map_err(|source| StateError::WorkDir { path: std::env::temp_dir(), source })?;
            return Ok(WorkDir::Temp(temp));
        };
        let created = !path.exists();
        std::fs::create_dir_all(path)
            .map_err(|source| StateError::WorkDir { path: path.to_path_buf(), source })?;
        Ok(WorkDir::Given { path: path.to_path_buf(), created })
    }

    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(temp) => temp.path(),
            WorkDir::Given { path, .. } => path,
        }
    }

    /// Removes what this process wrote: the whole directory when it made it, else only its files.
    fn remove(&self) {
        let result = match self {
            WorkDir::Temp(temp) => std::fs::remove_dir_all(temp.path()),
            WorkDir::Given { path, created: true } => std::fs::remove_dir_all(path),
            WorkDir::Given { path, created: false } => {
                let _ = std::fs::remove_file(path.join("launcher.js"));
                let _ = std::fs::remove_file(path.join("launcher.py"));
                std::fs::remove_dir_all(path.join("action"))
            }
        };
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove the work directory {}: {e}", self.path().display());
        }
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    container_id: String,
    setup: Setup,
    log_header_limit: usize,
    work_dir: WorkDir,
    /// Set once `/init` succeeded: a second one is refused without waiting for the lock.
    initialized: AtomicBool,
    /// The action; held for the whole of an `/init` or a `/run`, which is what makes `/run`s exclusive.
    action: Arc<Mutex<Option<Action>>>,
    /// The kind's launcher, started before `/init` so that `/init` only loads the code.
    standby: Mutex<Option<Standby>>,
    shutdown: watch::Sender<bool>,
}

impl AppState {
    pub fn new(config: &Config) -> Result<Arc<Self>, StateError> {
        let work_dir = WorkDir::prepare(config.work_dir.as_deref())?;
        let setup = Setup {
            kind: config.kind,
            work_dir: work_dir.path().to_path_buf(),
            interpreters: Interpreters { node: config.node.clone(), python: config.python.clone() },
            env_remove: inherited_to_remove(std::env::vars_os().map(|(k, _)| k)),
        };
        Ok(Arc::new(Self {
            container_id: config.container_id.clone(),
            setup,
            log_header_limit: config.log_header_limit,
            work_dir,
            initialized: AtomicBool::new(false),
            action: Arc::new(Mutex::new(None)),
            standby: Mutex::new(None),
            shutdown: watch::channel(false).0,
        }))
    }

    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// Starts the kind's launcher on standby; without one, `/init` starts it (as it would anyway).
    pub async fn start_standby(&self) {
        match Standby::start(&self.setup).await {
            Ok(standby) => *self.standby.lock().await = standby,
            Err(e) => tracing::warn!(container = %self.container_id, "no standby launcher: {e}"),
        }
    }

    /// The standby launcher's process id, until `/init` takes it.
    pub async fn standby_pid(&self) -> Option<u32> {
        self.standby.lock().await.as_ref().and_then(Standby::pid)
    }

    /// Tells running activations to stop: they kill their process and answer.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Kills the action's process and removes the work directory.
    pub async fn stop(&self) {
        self.begin_shutdown();
        if let Some(standby) = self.standby.lock().await.take() {
            standby.stop().await;
        }
        if let Some(action) = self.action.lock().await.as_mut() {
            action.stop().await;
        }
        self.work_dir.remove();
    }

    /// The refusal for a request that the data plane meant for another container.
    fn misrouted(&self, headers: &HeaderMap) -> Option<String> {
        let claimed = headers.get(headers::CONTAINER_ID)?;
        (claimed.as_bytes() != self.container_id.as_bytes())
            .then(|| format!("misrouted: this is container {}", self.container_id))
    }

    /// Renders the logs for the header (capped) and the proxy's own debug log (whole).
    fn render_logs(&self, lines: &[LogLine]) -> Vec<String> {
        let rendered: Vec<String> = lines.iter().map(LogLine::render).collect();
        for line in &rendered {
            tracing::debug!(container = %self.container_id, "{line}");
        }
        let limit = self.log_header_limit;
        logs::cap(rendered, limit, || logs::truncation_notice(OffsetDateTime::now_utc(), limit))
    }
}

/// The proxy's own configuration and stale activation variables are not the action's business.
fn inherited_to_remove(names: impl Iterator<Item = OsString>) -> Vec<OsString> {
    names
        .filter(|name| {
            let name = name.to_string_lossy();
            // WHISK_*: the cluster manager's labels of this runtime; the action process must not
            // carry them (they are not the action's business, and a restarted control plane
            // adopts whatever process carries them).
            name.starts_with("ACTION_RUNTIME_")
                || name.starts_with(envelope::ENV_PREFIX)
                || name.starts_with("WHISK_")
        })
        .collect()
}

/// The routes, for `run` and for tests that drive them directly.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/init", post(init))
        .route("/run", post(run))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn health() -> Response {
    (StatusCode::OK, axum::Json(json!({ "ok": true }))).into_response()
}

async fn init(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(message) = state.misrouted(&headers) {
        return reply(StatusCode::MISDIRECTED_REQUEST, error(message), None);
    }
    if state.initialized.load(Ordering::Acquire) {
        return reply(StatusCode::FORBIDDEN, error(ALREADY_INITIALIZED), None);
    }
    let request = match envelope::parse_init(&body) {
        Ok(request) => request,
        Err(e) => return reply(StatusCode::BAD_REQUEST, error(e.to_string()), None),
    };
    let mut slot = state.action.lock().await;
    if slot.is_some() {
        return reply(StatusCode::FORBIDDEN, error(ALREADY_INITIALIZED), None);
    }
    let mut shutdown = state.shutdown.subscribe();
    let standby = state.standby.lock().await.take();
    match Action::init(&state.setup, &request, standby, &mut shutdown).await {
        Ok((action, load_logs)) => {
            *slot = Some(action);
            state.initialized.store(true, Ordering::Release);
            tracing::info!(container = %state.container_id, name = ?request.name, "action initialized");
            let lines = state.render_logs(&load_logs);
            reply(StatusCode::OK, json!({ "ok": true }), Some(&lines))
        }
        Err(e) => {
            tracing::warn!(container = %state.container_id, "init failed: {e}");
            for line in e.logs() {
                tracing::warn!(container = %state.container_id, "{}", line.render());
            }
            let status = match e {
                InitError::Launcher { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                InitError::Code(_) | InitError::Load { .. } => StatusCode::BAD_GATEWAY,
            };
            let lines = state.render_logs(e.logs());
            reply(status, error(e.to_string()), Some(&lines))
        }
    }
}

async fn run(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    // 421, not busy's 409: a misrouted request is safe to send again (Envoy retries it; nothing
    // ran), an overlap is a routing bug that must surface.
    if let Some(message) = state.misrouted(&headers) {
        return reply(StatusCode::MISDIRECTED_REQUEST, error(message), Some(&[]));
    }
    // Never queue: a second activation while one runs is the caller's bug, answered at once.
    let Ok(mut slot) = state.action.clone().try_lock_owned() else {
        return reply(StatusCode::CONFLICT, error(BUSY), Some(&[]));
    };
    if slot.is_none() {
        return reply(StatusCode::FORBIDDEN, error(NOT_INITIALIZED), Some(&[]));
    }
    let activation = match envelope::parse_activation(&body) {
        Ok(activation) => activation,
        Err(e) => return reply(StatusCode::BAD_REQUEST, error(e.to_string()), Some(&[])),
    };
    let mut shutdown = state.shutdown.subscribe();
    // A task of its own: if the caller goes away mid-activation, the exchange still completes and the
    // action loop stays in step with the protocol.
    let task = tokio::spawn(async move {
        let action = slot.as_mut()?;
        Some(action.run(&activation, &mut shutdown).await)
    });
    match task.await {
        Ok(Some(report)) => {
            let lines = state.render_logs(&report.logs);
            reply(report.outcome.status(), report.outcome.body(), Some(&lines))
        }
        Ok(None) => reply(StatusCode::FORBIDDEN, error(NOT_INITIALIZED), Some(&[])),
        Err(e) => {
            tracing::error!("activation task failed: {e}");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                error(whisk_contract::messages::INTERNAL_ERROR),
                Some(&[]),
            )
        }
    }
}

fn error(message: impl Into<String>) -> Value {
    json!({ "error": message.into() })
}

/// A JSON response, with the `x-whisk-logs` header when `logs` is given.
fn reply(status: StatusCode, body: Value, logs: Option<&[String]>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(lines) = logs
        && let Ok(value) = HeaderValue::from_str(&logs::header_value(lines))
    {
        response.headers_mut().insert(HeaderName::from_static(headers::RUNTIME_LOGS), value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_own_config_and_stale_activation_vars() {
        let names =
            ["PATH", "ACTION_RUNTIME_KIND", "__OW_API_KEY", "HOME", "WHISK_OWNER"].map(OsString::from);
        assert_eq!(
            inherited_to_remove(names.into_iter()),
            ["ACTION_RUNTIME_KIND", "__OW_API_KEY", "WHISK_OWNER"].map(OsString::from)
        );
    }
}
