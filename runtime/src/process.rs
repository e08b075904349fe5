//! Child processes: the long-lived action loop of Node.js and Python actions, and the one-shot run of
//! a native executable.
//!
//! ```text
//!   proxy ──stdin: one JSON line per activation──────────────► launcher ──► entry function
//!   proxy ◄─fd 3: one JSON line per outcome──────────────────── launcher
//!   proxy ◄─stdout / stderr: logs, then the end marker on each── launcher + action
//! ```
//!
//! Each child runs in its own process group so that a timeout also kills whatever it spawned. The
//! launchers exit when their stdin closes, which is what ends them if the proxy itself is killed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt as _, FdMapping};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::logs::{Collector, LogLine, Stream};

/// The descriptor the launchers write their outcome lines to.
pub const OUTCOME_FD: i32 = 3;
/// How long to wait for the end markers (or end of output) once the outcome is known.
pub const MARKER_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the output of a killed process to drain.
const KILL_GRACE: Duration = Duration::from_millis(500);
/// Spawning an executable that another thread of this process is still writing fails with ETXTBSY
/// (the writer's descriptor leaks briefly into concurrently forked children); retry that many times.
const SPAWN_ATTEMPTS: u32 = 20;

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("Unable to create the outcome pipe: {0}")]
    Pipe(std::io::Error),
    #[error("Unable to start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// What to start: program, arguments, environment and directory.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the proxy's own environment.
    pub env: BTreeMap<String, String>,
    /// Removed from the proxy's own environment (its configuration, stale `__OW_` variables).
    pub env_remove: Vec<OsString>,
    pub cwd: PathBuf,
}

impl LaunchSpec {
    fn command(&self, stdin: Stdio) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.cwd)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // Whatever happens to the handle (a test failing, a cancelled request), the child dies.
            .kill_on_drop(true);
        for name in &self.env_remove {
            command.env_remove(name);
        }
        command.envs(&self.env);
        command
    }
}

/// Something read from a child's stdout or stderr.
#[derive(Debug)]
enum Event {
    Line { stream: Stream, at: OffsetDateTime, text: String },
    Eof(Stream),
}

/// How one exchange with the action loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// The launcher answered on fd 3 with this line.
    Answered(String),
    /// The outcome pipe closed: the process died.
    Exited,
    /// The deadline passed; the process has been killed.
    TimedOut,
    /// The proxy is shutting down; the process has been killed.
    ShutDown,
}

/// An exchange and the logs the action wrote during it.
#[derive(Debug)]
pub struct Exchanged {
    pub exchange: Exchange,
    pub logs: Vec<LogLine>,
}

/// A running launcher process.
#[derive(Debug)]
pub struct ActionLoop {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedReceiver<Event>,
    stdout_open: bool,
    stderr_open: bool,
}

impl ActionLoop {
    /// Starts the launcher with a fresh outcome pipe on fd 3.
    pub async fn spawn(spec: &LaunchSpec) -> Result<Self, ProcessError> {
        let (reader, writer) = std::io::pipe().map_err(ProcessError::Pipe)?;
        let mut command = spec.command(Stdio::piped());
        command
            .fd_mappings(vec![FdMapping { parent_fd: OwnedFd::from(writer), child_fd: OUTCOME_FD }])
            .map_err(|e| ProcessError::Pipe(std::io::Error::other(e)))?;
        let mut child = spawn(&mut command, spec).await?;
        // The command owns our copy of the pipe's write end: dropping it leaves the child as the only
        // writer, so end-of-file on the pipe means the child is gone.
        drop(command);
        let answers = read_answers(OwnedFd::from(reader)).map_err(ProcessError::Pipe)?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let stdout_open =
            child.stdout.take().map(|o| read_lines(Stream::Stdout, o, events_tx.clone())).is_some();
        let stderr_open = child.stderr.take().map(|e| read_lines(Stream::Stderr, e, events_tx)).is_some();
        Ok(Self { stdin: child.stdin.take(), child, answers, events, stdout_open, stderr_open })
    }

    /// Sends `input` (if any: loading sends nothing) and waits for the launcher's answer, collecting
    /// the logs up to the end markers. On timeout or shutdown the process is killed.
    pub async fn exchange(
        &mut self,
        input: Option<&str>,
        deadline: Option<Instant>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Exchanged {
        self.drain_stale();
        let mut collector = Collector::new(self.stdout_open, self.stderr_open);
        let expiry = timer(deadline);
        tokio::pin!(expiry);

        let mut early = None;
        if let Some(line) = input {
            let write = write_line(self.stdin.as_mut(), line);
            tokio::select! {
                written = write => if written.is_err() { early = Some(Exchange::Exited) },
                () = &mut expiry => early = Some(Exchange::TimedOut),
                () = shut_down(shutdown) => early = Some(Exchange::ShutDown),
            }
        }
        let exchange = match early {
            Some(exchange) => exchange,
            None => loop {
                tokio::select! {
                    answer = self.answers.recv() => break match answer {
                        Some(line) => Exchange::Answered(line),
                        None => Exchange::Exited,
                    },
                    Some(event) = self.events.recv() => {
                        accept(&mut collector, &mut self.stdout_open, &mut self.stderr_open, event);
                    }
                    () = &mut expiry => break Exchange::TimedOut,
                    () = shut_down(shutdown) => break Exchange::ShutDown,
                }
            },
        };
        let grace = match exchange {
            Exchange::Answered(_) | Exchange::Exited => MARKER_GRACE,
            Exchange::TimedOut | Exchange::ShutDown => {
                self.kill().await;
                KILL_GRACE
            }
        };
        self.collect_rest(&mut collector, grace).await;
        Exchanged { exchange, logs: collector.into_lines() }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has ended (without waiting for it).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the process (and its group) and reaps it.
    pub async fn kill(&mut self) {
        // Closing stdin first lets a launcher that is between activations exit by itself.
        self.stdin = None;
        kill_group(&self.child);
        let _ = self.child.kill().await;
    }

    async fn collect_rest(&mut self, collector: &mut Collector, grace: Duration) {
        let until = Instant::now() + grace;
        while !collector.complete() {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => accept(collector, &mut self.stdout_open, &mut self.stderr_open, event),
                    None => break,
                },
                () = sleep_until(until) => break,
            }
        }
    }

    /// Output written between activations (late callbacks, a marker that came after the grace)
    /// belongs to no activation: it goes to the proxy's own log only.
    fn drain_stale(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Line { stream, text, .. } => {
                    tracing::debug!(stream = stream.as_str(), "output between activations: {text}");
                }
                Event::Eof(Stream::Stdout) => self.stdout_open = false,
                Event::Eof(Stream::Stderr) => self.stderr_open = false,
            }
        }
        while let Ok(line) = self.answers.try_recv() {
            tracing::warn!("unexpected outcome line between activations: {line}");
        }
    }
}

fn accept(collector: &mut Collector, stdout_open: &mut bool, stderr_open: &mut bool, event: Event) {
    match event {
        Event::Line { stream, at, text } => collector.line(stream, at, &text),
        Event::Eof(stream) => {
            match stream {
                Stream::Stdout => *stdout_open = false,
                Stream::Stderr => *stderr_open = false,
            }
            collector.eof(stream);
        }
    }
}

/// How a native executable's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeExit {
    Exited { success: bool },
    TimedOut,
    ShutDown,
}

/// A native executable's run: how it ended and what it printed, per stream, in order.
#[derive(Debug)]
pub struct NativeRun {
    pub exit: NativeExit,
    pub stdout: Vec<LogLine>,
    pub stderr: Vec<LogLine>,
}

/// Runs an executable once, with no stdin, until it exits and its output closes (bounded by
/// [`MARKER_GRACE`] after the exit, in case something it started keeps the pipes open).
pub async fn run_once(
    spec: &LaunchSpec,
    deadline: Option<Instant>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<NativeRun, ProcessError> {
    let mut command = spec.command(Stdio::null());
    let mut child = spawn(&mut command, spec).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut open = 0;
    if let Some(out) = child.stdout.take() {
        read_lines(Stream::Stdout, out, events_tx.clone());
        open += 1;
    }
    if let Some(err) = child.stderr.take() {
        read_lines(Stream::Stderr, err, events_tx);
        open += 1;
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut push = |event: Event, open: &mut i32| match event {
        Event::Line { stream: Stream::Stdout, at, text } => {
            stdout.push(LogLine::new(at, Stream::Stdout, text))
        }
        Event::Line { stream: Stream::Stderr, at, text } => {
            stderr.push(LogLine::new(at, Stream::Stderr, text))
        }
        Event::Eof(_) => *open -= 1,
    };

    let expiry = timer(deadline);
    tokio::pin!(expiry);
    let mut exited: Option<bool> = None;
    let mut output_until: Option<Instant> = None;
    let exit = loop {
        if let Some(success) = exited
            && open <= 0
        {
            break NativeExit::Exited { success };
        }
        tokio::select! {
            status = child.wait(), if exited.is_none() => {
                exited = Some(status.map(|s| s.success()).unwrap_or(false));
                output_until = Some(Instant::now() + MARKER_GRACE);
            }
            event = events.recv() => match event {
                Some(event) => push(event, &mut open),
                None => open = 0,
            },
            () = timer(output_until) => break NativeExit::Exited { success: exited.unwrap_or(false) },
            () = &mut expiry, if exited.is_none() => break NativeExit::TimedOut,
            () = shut_down(shutdown), if exited.is_none() => break NativeExit::ShutDown,
        }
    };
    if matches!(exit, NativeExit::TimedOut | NativeExit::ShutDown) {
        kill_group(&child);
        let _ = child.kill().await;
        let until = Instant::now() + KILL_GRACE;
        while open > 0 {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => push(event, &mut open),
                    None => break,
                },
                () = sleep_until(until) => break,
            }
        }
    } else {
        // Whatever it left behind in its group goes too.
        kill_group(&child);
    }
    Ok(NativeRun { exit, stdout, stderr })
}

async fn spawn(command: &mut Command, spec: &LaunchSpec) -> Result<Child, ProcessError> {
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(source) => {
                return Err(ProcessError::Spawn { program: spec.program.display().to_string(), source });
            }
        }
    }
}

/// Sends SIGKILL to the child's process group (the child leads it: see [`LaunchSpec::command`]).
fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

async fn write_line(stdin: Option<&mut ChildStdin>, line: &str) -> std::io::Result<()> {
    let stdin = stdin.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
    // One write for the line and its end: the launcher reads as soon as bytes arrive, and a line
    // split over two writes can wake it twice for one activation.
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    stdin.write_all(&bytes).await?;
    stdin.flush().await
}

fn read_lines(
    stream: Stream,
    output: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(output);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = OffsetDateTime::now_utc();
                    let text = String::from_utf8_lossy(strip_newline(&buf)).into_owned();
                    if tx.send(Event::Line { stream, at, text }).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof(stream));
    });
}

fn read_answers(fd: OwnedFd) -> std::io::Result<mpsc::UnboundedReceiver<String>> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(strip_newline(&buf)).into_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping the sender is the end-of-file signal.
    });
    Ok(rx)
}

fn strip_newline(buf: &[u8]) -> &[u8] {
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

/// Resolves at the deadline, never without one.
async fn timer(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once shutdown has begun (or nobody can announce it any more).
async fn shut_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> LaunchSpec {
        LaunchSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".to_string(), "héllo".to_string())]),
            env_remove: vec![],
            cwd: std::env::temp_dir(),
        }
    }

    #[tokio::test]
    async fn loop_exchange_collects_answer_and_logs() {
        let (_tx, mut shutdown) = watch::channel(false);
        let script = r#"while read -r line; do echo "out $GREETING"; echo "err $line" >&2;
            echo '{"result":{}}' >&3; echo XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX;
            echo XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX >&2; done"#;
        let mut child = ActionLoop::spawn(&sh(script)).await.unwrap();
        for i in 0..2 {
            let got = child.exchange(Some(&format!("in{i}")), None, &mut shutdown).await;
            assert_eq!(got.exchange, Exchange::Answered(r#"{"result":{}}"#.into()));
            let mut texts: Vec<_> = got.logs.iter().map(|l| l.text.clone()).collect();
            texts.sort();
            assert_eq!(texts, vec![format!("err in{i}"), "out héllo".to_string()]);
        }
    }

    #[tokio::test]
    async fn loop_exchange_times_out_and_kills() {
        let (_tx, mut shutdown) = watch::channel(false);
        let mut child = ActionLoop::spawn(&sh("echo started; sleep 30")).await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        let got = child.exchange(Some("x"), Some(deadline), &mut shutdown).await;
        assert_eq!(got.exchange, Exchange::TimedOut);
        assert_eq!(got.logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), vec!["started"]);
    }

    #[tokio::test]
    async fn loop_exchange_sees_death() {
        let (_tx, mut shutdown) = watch::channel(false);
        let mut child = ActionLoop::spawn(&sh("read -r x; echo dying >&2; exit 3")).await.unwrap();
        let got = child.exchange(Some("x"), None, &mut shutdown).await;
        assert_eq!(got.exchange, Exchange::Exited);
        assert_eq!(got.logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), vec!["dying"]);
    }

    #[tokio::test]
    async fn shutdown_interrupts_an_exchange() {
        let (tx, mut shutdown) = watch::channel(false);
        let mut child = ActionLoop::spawn(&sh("sleep 30")).await.unwrap();
        let _ = tx.send(true);
        let got = child.exchange(Some("x"), None, &mut shutdown).await;
        assert_eq!(got.exchange, Exchange::ShutDown);
    }

    #[tokio::test]
    async fn run_once_separates_streams() {
        let (_tx, mut shutdown) = watch::channel(false);
        let run = run_once(&sh(r#"echo a; echo b >&2; echo '{"r":1}'"#), None, &mut shutdown).await.unwrap();
        assert_eq!(run.exit, NativeExit::Exited { success: true });
        assert_eq!(run.stdout.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), vec!["a", r#"{"r":1}"#]);
        assert_eq!(run.stderr.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), vec!["b"]);
    }

    #[tokio::test]
    async fn run_once_times_out() {
        let (_tx, mut shutdown) = watch::channel(false);
        let deadline = Instant::now() + Duration::from_millis(200);
        let run = run_once(&sh("echo before; sleep 30"), Some(deadline), &mut shutdown).await.unwrap();
        assert_eq!(run.exit, NativeExit::TimedOut);
        assert_eq!(run.stdout.len(), 1);
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let (_tx, mut shutdown) = watch::channel(false);
        let mut spec = sh("");
        spec.program = "/nonexistent/program".into();
        let err = run_once(&spec, None, &mut shutdown).await.unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }
}
