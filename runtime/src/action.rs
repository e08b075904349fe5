//! An initialised action: how its code is started (launcher spec or executable), the live action loop
//! if any, and one activation from the envelope to an [`Outcome`] with its logs.
//!
//! The action loop is started at `/init` and kept across activations; when an activation kills it
//! (timeout, crash, garbage on fd 3) it is respawned from the stored files at the next `/run`.
//! A runtime of a launcher's kind starts that launcher on [`Standby`] when it starts: the
//! interpreter's own start (most of a Node.js or Python `/init`) is then over before `/init` comes,
//! which is what a prewarmed container is for.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::code::{self, CodeError, Entry};
use crate::envelope::{self, Activation, InitRequest};
use crate::kind::Kind;
use crate::logs::{self, LogLine};
use crate::outcome::{self, Loaded, Outcome};
use crate::process::{self, ActionLoop, Exchange, LaunchSpec, NativeExit, ProcessError};

/// The Node.js action loop, written into the work directory at `/init`.
pub const LAUNCHER_JS: &str = include_str!("launchers/launcher.js");
/// The Python action loop, written into the work directory at `/init`.
pub const LAUNCHER_PY: &str = include_str!("launchers/launcher.py");

/// Prefix of every load failure reported to the caller.
const INIT_FAILED: &str = "Initialization has failed due to: ";

/// The interpreters that run the launchers.
#[derive(Debug, Clone)]
pub struct Interpreters {
    pub node: PathBuf,
    pub python: PathBuf,
}

/// Everything `/init` needs besides the request.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kind: Kind,
    pub work_dir: PathBuf,
    pub interpreters: Interpreters,
    /// Variables of the proxy's own environment that actions must not inherit.
    pub env_remove: Vec<OsString>,
}

/// Why `/init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("Unable to write the launcher {path}: {source}")]
    Launcher { path: PathBuf, source: std::io::Error },
    #[error("{INIT_FAILED}{message}")]
    Load { message: String, logs: Vec<LogLine> },
}

impl InitError {
    /// The action's output while it was loading, if it got that far.
    pub fn logs(&self) -> &[LogLine] {
        match self {
            InitError::Load { logs, .. } => logs,
            _ => &[],
        }
    }
}

/// One activation's outcome and the logs the action wrote meanwhile.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub logs: Vec<LogLine>,
}

/// An initialised action.
#[derive(Debug)]
pub struct Action {
    spec: LaunchSpec,
    runner: Runner,
}

#[derive(Debug)]
enum Runner {
    /// A launcher kept alive across activations; `None` after it died, until the next `/run`.
    Loop(Option<Box<ActionLoop>>),
    /// An executable run per activation.
    Native,
}

/// Variables an interpreter reads when it starts, so a launcher already running cannot honour them
/// from `/init`'s `env`: an action that sets one gets a fresh launcher.
const READ_AT_START: &[&str] = &["NODE_", "UV_", "PYTHON", "LD_", "LC_", "LANG", "TZ"];

/// A launcher started before its code exists; `/init` hands it the code (see the launchers' usage).
#[derive(Debug)]
pub struct Standby(ActionLoop);

impl Standby {
    /// Starts the launcher of `setup.kind`; `None` for kinds run without one (native).
    pub async fn start(setup: &Setup) -> Result<Option<Self>, StandbyError> {
        let Some(spec) = launcher_spec(setup)? else { return Ok(None) };
        Ok(Some(Self(ActionLoop::spawn(&spec).await?)))
    }

    /// The launcher's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// Kills the launcher: `/init` did not need it, or the runtime stops.
    pub async fn stop(mut self) {
        self.0.kill().await;
    }
}

/// Why the standby launcher did not start (the runtime then starts one at `/init`, as without it).
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error(transparent)]
    Launcher(#[from] InitError),
    #[error(transparent)]
    Spawn(#[from] ProcessError),
}

/// Whether a launcher started without `request`'s `env` serves it.
fn standby_serves(request: &InitRequest) -> bool {
    !request.env.keys().any(|name| READ_AT_START.iter().any(|prefix| name.starts_with(prefix)))
}

/// The line that hands a standby launcher its code.
fn code_line(entry: &Entry, request: &InitRequest, action_dir: &Path) -> Option<String> {
    let (file, mode) = match entry {
        Entry::NodeSource(file) => (file, Some("source")),
        Entry::NodeModule(file) => (file, Some("module")),
        Entry::Python(file) => (file, None),
        Entry::Native(_) => return None,
    };
    let mut line = serde_json::json!({
        "entry": file, "main": request.main, "cwd": action_dir, "env": request.env,
    });
    if let Some(mode) = mode {
        line["mode"] = mode.into();
    }
    Some(line.to_string())
}

/// A load attempt that did not end with a ready action loop.
struct LoadFailure {
    message: String,
    logs: Vec<LogLine>,
    timed_out: bool,
}

impl Action {
    /// Materialises the code and, for Node.js and Python, starts the action loop and waits until the
    /// code is loaded. Returns the output written while loading.
    /// A `standby` launcher loads the code when it serves the request; else it is stopped and a
    /// launcher started for the code.
    pub async fn init(
        setup: &Setup,
        request: &InitRequest,
        standby: Option<Standby>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(Self, Vec<LogLine>), InitError> {
        let prepared = prepare(setup, request);
        let line = prepared.as_ref().ok().and_then(|(entry, spec)| {
            code_line(entry, request, &spec.cwd).filter(|_| standby_serves(request))
        });
        let standby = match (standby, line) {
            (Some(standby), Some(line)) => Some((standby, line)),
            (Some(standby), None) => {
                standby.stop().await;
                None
            }
            (None, _) => None,
        };
        let (entry, spec) = prepared?;
        if let Entry::Native(_) = entry {
            return Ok((Self { spec, runner: Runner::Native }, Vec::new()));
        }
        let loaded = match standby {
            Some((Standby(child), line)) => load_on_standby(child, &line, &spec, shutdown).await,
            None => load(&spec, None, shutdown).await,
        };
        match loaded {
            Ok((child, logs)) => Ok((Self { spec, runner: Runner::Loop(Some(Box::new(child))) }, logs)),
            Err(failure) => Err(InitError::Load { message: failure.message, logs: failure.logs }),
        }
    }

    /// Runs one activation.
    pub async fn run(&mut self, activation: &Activation, shutdown: &mut watch::Receiver<bool>) -> Report {
        let deadline = match activation.deadline_ms.map(|ms| envelope::remaining(ms, now_ms())) {
            // Already too late: answer without touching a healthy process.
            Some(left) if left.is_zero() => return Report { outcome: Outcome::TimedOut, logs: Vec::new() },
            Some(left) => Some(Instant::now() + left),
            None => None,
        };
        match &mut self.runner {
            Runner::Loop(slot) => run_loop(&self.spec, slot, activation, deadline, shutdown).await,
            Runner::Native => run_native(&self.spec, activation, deadline, shutdown).await,
        }
    }

    /// Kills the action loop, if one is running.
    pub async fn stop(&mut self) {
        if let Runner::Loop(slot) = &mut self.runner
            && let Some(mut child) = slot.take()
        {
            child.kill().await;
        }
    }
}

/// The code materialised and how to start it.
fn prepare(setup: &Setup, request: &InitRequest) -> Result<(Entry, LaunchSpec), InitError> {
    let source = code::decode(setup.kind, &request.code, request.binary)?;
    let action_dir = setup.work_dir.join("action");
    let entry = code::materialise(setup.kind, &source, &action_dir)?;
    let spec = launch_spec(setup, request, &entry, &action_dir)?;
    Ok((entry, spec))
}

async fn run_loop(
    spec: &LaunchSpec,
    slot: &mut Option<Box<ActionLoop>>,
    activation: &Activation,
    deadline: Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> Report {
    let mut logs = Vec::new();
    let child = match slot {
        Some(child) => child,
        None => match load(spec, deadline, shutdown).await {
            Ok((child, load_logs)) => {
                logs = load_logs;
                slot.insert(Box::new(child))
            }
            Err(failure) => {
                let outcome = if failure.timed_out {
                    Outcome::TimedOut
                } else {
                    Outcome::Unavailable(format!("{INIT_FAILED}{}", failure.message))
                };
                return Report { outcome, logs: failure.logs };
            }
        },
    };
    let input = envelope::launcher_input(activation);
    let exchanged = child.exchange(Some(&input), deadline, shutdown).await;
    logs.extend(exchanged.logs);
    let outcome = match exchanged.exchange {
        Exchange::Answered(line) => outcome::classify_answer(&line),
        Exchange::Exited | Exchange::ShutDown => Outcome::Abnormal,
        Exchange::TimedOut => Outcome::TimedOut,
    };
    if !outcome.keeps_process()
        && let Some(mut child) = slot.take()
    {
        child.kill().await;
    }
    Report { outcome, logs }
}

async fn run_native(
    spec: &LaunchSpec,
    activation: &Activation,
    deadline: Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> Report {
    let mut spec = spec.clone();
    spec.args = vec![activation.value.to_string().into()];
    spec.env.extend(activation.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let run = match process::run_once(&spec, deadline, shutdown).await {
        Ok(run) => run,
        Err(e) => {
            tracing::warn!("native action did not start: {e}");
            return Report { outcome: Outcome::Unavailable(e.to_string()), logs: Vec::new() };
        }
    };
    let mut stdout = run.stdout.clone();
    let last = outcome::take_last_nonempty(&mut stdout, |l| l.text.as_str());
    let outcome = match run.exit {
        NativeExit::Exited { success } => {
            outcome::classify_native(success, last.as_ref().map(|l| l.text.as_str()))
        }
        NativeExit::TimedOut => Outcome::TimedOut,
        NativeExit::ShutDown => Outcome::Abnormal,
    };
    // A last line that was not a result is output like any other.
    let stdout =
        if matches!(outcome, Outcome::Success(_) | Outcome::NotADictionary) { stdout } else { run.stdout };
    Report { outcome, logs: logs::merge(stdout, run.stderr) }
}

/// Starts the launcher and waits for it to report that the code is loaded.
async fn load(
    spec: &LaunchSpec,
    deadline: Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(ActionLoop, Vec<LogLine>), LoadFailure> {
    let child = ActionLoop::spawn(spec).await.map_err(|e: ProcessError| LoadFailure {
        message: e.to_string(),
        logs: Vec::new(),
        timed_out: false,
    })?;
    loaded(child, None, deadline, shutdown).await
}

/// Hands the code to a standby launcher; one that died meanwhile is replaced by a fresh launcher.
async fn load_on_standby(
    mut child: ActionLoop,
    line: &str,
    spec: &LaunchSpec,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(ActionLoop, Vec<LogLine>), LoadFailure> {
    if child.has_exited() {
        tracing::warn!("the standby launcher had exited; starting one for the code");
        return load(spec, None, shutdown).await;
    }
    loaded(child, Some(line), None, shutdown).await
}

/// Sends `input` (the code, to a standby launcher) and waits for the launcher to report that the
/// code is loaded.
async fn loaded(
    mut child: ActionLoop,
    input: Option<&str>,
    deadline: Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(ActionLoop, Vec<LogLine>), LoadFailure> {
    let failed = |message: String, logs| LoadFailure { message, logs, timed_out: false };
    let exchanged = child.exchange(input, deadline, shutdown).await;
    let logs = exchanged.logs;
    let message = match exchanged.exchange {
        Exchange::Answered(line) => match outcome::classify_load(&line) {
            Loaded::Ready => return Ok((child, logs)),
            Loaded::Failed(message) => message,
            Loaded::Garbage => format!("the launcher answered with something unexpected: {line}"),
        },
        Exchange::Exited => {
            let last: Vec<&str> = logs.iter().rev().take(5).rev().map(|l| l.text.as_str()).collect();
            format!("the action process exited while loading the code. Last output: {}", last.join("\n"))
        }
        Exchange::TimedOut => {
            return Err(LoadFailure {
                message: "the code did not load in time".into(),
                logs,
                timed_out: true,
            });
        }
        Exchange::ShutDown => "the runtime is shutting down".into(),
    };
    child.kill().await;
    Err(failed(message, logs))
}

/// How to start the entry: its kind's launcher with the code's arguments, or the executable itself.
fn launch_spec(
    setup: &Setup,
    request: &InitRequest,
    entry: &Entry,
    action_dir: &Path,
) -> Result<LaunchSpec, InitError> {
    let (mut spec, code_args): (LaunchSpec, Vec<OsString>) = match entry {
        Entry::NodeSource(file) | Entry::NodeModule(file) => {
            let mode = if matches!(entry, Entry::NodeSource(_)) { "source" } else { "module" };
            (launcher(setup, Kind::Node)?, vec![file.into(), request.main.clone().into(), mode.into()])
        }
        Entry::Python(file) => {
            (launcher(setup, Kind::Python)?, vec![file.into(), request.main.clone().into()])
        }
        Entry::Native(exec) => (
            LaunchSpec {
                program: exec.clone(),
                args: Vec::new(),
                env: BTreeMap::new(),
                env_remove: setup.env_remove.clone(),
                cwd: PathBuf::new(),
            },
            Vec::new(),
        ),
    };
    spec.args.extend(code_args);
    // The launcher's own settings win over the action's.
    let mut env = request.env.clone();
    env.append(&mut spec.env);
    spec.env = env;
    spec.cwd = action_dir.to_path_buf();
    Ok(spec)
}

/// The launcher of the runtime's kind, without code (a [`Standby`]); `None` for native kinds.
fn launcher_spec(setup: &Setup) -> Result<Option<LaunchSpec>, InitError> {
    match setup.kind {
        Kind::Node | Kind::Python => launcher(setup, setup.kind).map(Some),
        Kind::Native => Ok(None),
    }
}

/// Node.js's or Python's launcher, written into the work directory, with no code arguments yet.
fn launcher(setup: &Setup, family: Kind) -> Result<LaunchSpec, InitError> {
    let write = |name: &str, text: &str| {
        let path = setup.work_dir.join(name);
        std::fs::write(&path, text).map_err(|source| InitError::Launcher { path: path.clone(), source })?;
        Ok::<_, InitError>(path)
    };
    let mut env = BTreeMap::new();
    let (program, args): (PathBuf, Vec<OsString>) = if family == Kind::Python {
        // UTF-8 whatever the locale, and unbuffered so log lines are stamped when printed.
        env.insert("PYTHONIOENCODING".into(), "utf-8".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
        (setup.interpreters.python.clone(), vec!["-u".into(), write("launcher.py", LAUNCHER_PY)?.into()])
    } else {
        (setup.interpreters.node.clone(), vec![write("launcher.js", LAUNCHER_JS)?.into()])
    };
    Ok(LaunchSpec { program, args, env, env_remove: setup.env_remove.clone(), cwd: setup.work_dir.clone() })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(env: &[(&str, &str)]) -> InitRequest {
        InitRequest {
            name: None,
            main: "handler".into(),
            code: String::new(),
            binary: false,
            env: env.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
        }
    }

    #[test]
    fn a_standby_launcher_serves_env_it_can_still_set() {
        assert!(standby_serves(&request(&[])));
        assert!(standby_serves(&request(&[("GREETING", "hi"), ("__OW_X", "1")])));
        for read_at_start in ["NODE_OPTIONS", "NODE_PATH", "PYTHONPATH", "LD_PRELOAD", "LANG", "LC_ALL", "TZ"]
        {
            assert!(!standby_serves(&request(&[(read_at_start, "x")])), "{read_at_start}");
        }
    }

    #[test]
    fn the_code_line_names_entry_main_mode_directory_and_env() {
        let dir = Path::new("/work/action");
        let request = request(&[("GREETING", "hi")]);
        let line = |entry: &Entry| {
            code_line(entry, &request, dir)
                .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap())
        };
        let node = line(&Entry::NodeSource(dir.join("index.js"))).unwrap();
        assert_eq!(
            node,
            serde_json::json!({"entry": "/work/action/index.js", "main": "handler", "mode": "source",
                               "cwd": "/work/action", "env": {"GREETING": "hi"}})
        );
        assert_eq!(line(&Entry::NodeModule(dir.join("m.js"))).unwrap()["mode"], "module");
        let python = line(&Entry::Python(dir.join("__main__.py"))).unwrap();
        assert_eq!(python["entry"], "/work/action/__main__.py");
        assert!(python.get("mode").is_none());
        assert_eq!(line(&Entry::Native(dir.join("exec"))), None);
    }
}
