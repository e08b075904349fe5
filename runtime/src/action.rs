//! An initialised action: how its code is started (launcher spec or executable), the live action loop
//! if any, and one activation from the envelope to an [`Outcome`] with its logs.
//!
//! The action loop is started at `/init` and kept across activations; when an activation kills it
//! (timeout, crash, garbage on fd 3) it is respawned from the stored files at the next `/run`.

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

/// A load attempt that did not end with a ready action loop.
struct LoadFailure {
    message: String,
    logs: Vec<LogLine>,
    timed_out: bool,
}

impl Action {
    /// Materialises the code and, for Node.js and Python, starts the action loop and waits until the
    /// code is loaded. Returns the output written while loading.
    pub async fn init(
        setup: &Setup,
        request: &InitRequest,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(Self, Vec<LogLine>), InitError> {
        let source = code::decode(setup.kind, &request.code, request.binary)?;
        let action_dir = setup.work_dir.join("action");
        let entry = code::materialise(setup.kind, &source, &action_dir)?;
        let spec = launch_spec(setup, request, &entry, &action_dir)?;
        if let Entry::Native(_) = entry {
            return Ok((Self { spec, runner: Runner::Native }, Vec::new()));
        }
        match load(&spec, None, shutdown).await {
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
    let failed = |message: String, logs| LoadFailure { message, logs, timed_out: false };
    let mut child =
        ActionLoop::spawn(spec).await.map_err(|e: ProcessError| failed(e.to_string(), Vec::new()))?;
    let exchanged = child.exchange(None, deadline, shutdown).await;
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

/// How to start the entry: the launcher for the kind, or the executable itself.
fn launch_spec(
    setup: &Setup,
    request: &InitRequest,
    entry: &Entry,
    action_dir: &Path,
) -> Result<LaunchSpec, InitError> {
    let mut env: BTreeMap<String, String> = request.env.clone();
    let write_launcher = |name: &str, text: &str| {
        let path = setup.work_dir.join(name);
        std::fs::write(&path, text).map_err(|source| InitError::Launcher { path: path.clone(), source })?;
        Ok::<_, InitError>(path)
    };
    let (program, args): (PathBuf, Vec<OsString>) = match entry {
        Entry::NodeSource(file) | Entry::NodeModule(file) => {
            let launcher = write_launcher("launcher.js", LAUNCHER_JS)?;
            let mode = if matches!(entry, Entry::NodeSource(_)) { "source" } else { "module" };
            let args = vec![launcher.into(), file.into(), request.main.clone().into(), mode.into()];
            (setup.interpreters.node.clone(), args)
        }
        Entry::Python(file) => {
            let launcher = write_launcher("launcher.py", LAUNCHER_PY)?;
            // UTF-8 whatever the locale, and unbuffered so log lines are stamped when printed.
            env.insert("PYTHONIOENCODING".into(), "utf-8".into());
            env.insert("PYTHONUNBUFFERED".into(), "1".into());
            env.insert("PYTHONDONTWRITEBYTECODE".into(), "1".into());
            let args = vec!["-u".into(), launcher.into(), file.into(), request.main.clone().into()];
            (setup.interpreters.python.clone(), args)
        }
        Entry::Native(exec) => (exec.clone(), Vec::new()),
    };
    Ok(LaunchSpec { program, args, env, env_remove: setup.env_remove.clone(), cwd: action_dir.to_path_buf() })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
