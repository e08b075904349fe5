//! The end-to-end harness: starts the whole platform (management API, xDS control server, real
//! Envoy with the wasm filter) as real processes, waits until an invoke can pass, and stops every
//! process it started by pid when dropped, also when a test panics. `make up` runs the same code.

pub mod client;
pub mod host_calls;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xds_server::cluster::local::owned_runtimes;

/// OpenWhisk standalone's well-known guest key.
pub const GUEST_KEY: &str =
    "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

/// How long the platform gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a runtime gets to stop on SIGTERM (it stops its action process and removes its work
/// directory) before SIGKILL.
const RUNTIME_STOP_GRACE: Duration = Duration::from_secs(2);

/// Stops processes that are not our children (runtimes a control server left): SIGTERM first, so
/// that none leaves its work directory behind, then SIGKILL for any still there after the grace.
pub fn stop_runtimes(pids: &[i32]) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + RUNTIME_STOP_GRACE;
    while pids.iter().any(|pid| is_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids.iter().filter(|pid| is_alive(**pid)) {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}

/// True while `pid` runs (a zombie waiting for its parent to reap it has stopped).
fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// Where the ports go.
#[derive(Debug, Clone)]
pub struct Ports {
    pub ingress: u16,
    pub management: u16,
    pub control: u16,
    pub xds: u16,
    pub admin: u16,
}

impl Ports {
    /// OpenWhisk standalone's API port (3233) and its neighbours: what `make up` uses.
    pub fn standard() -> Self {
        Self { ingress: 3233, management: 3234, control: 3235, xds: 3236, admin: 9901 }
    }

    /// Free loopback ports, for tests that run beside anything else.
    pub fn free() -> anyhow::Result<Self> {
        Ok(Self {
            ingress: free_port()?,
            management: free_port()?,
            control: free_port()?,
            xds: free_port()?,
            admin: free_port()?,
        })
    }
}

/// A loopback port that is free now, taken below the kernel's ephemeral range and never handed out
/// twice by this process.
///
/// The kernel's own pick (`bind` to port 0) comes from the ephemeral range, where any outgoing
/// connection of the machine may take the port the moment its server stops: a test that restarts
/// a server on its old port then finds the port held by a client (seen once in CI as a control
/// server that never came back). Ports below the range are never given to outgoing connections.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = (FIXED_PORTS_FROM, ephemeral_range_start().saturating_sub(1));
    if high <= low {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let span = u128::from(high - low);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1_000 {
        let offset = u16::try_from(rand_u128() % span).unwrap_or(0);
        let port = low + offset;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    bail!("no free port between {low} and {high}")
}

/// The lowest port the harness hands out: clear of the well-known ports and of `make up`'s.
const FIXED_PORTS_FROM: u16 = 20_000;

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_range_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
}

/// How a platform's containers reach its Envoys (decisions 0008 and 0010).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// State-of-the-world ADS: whole assignments of the clusters that changed.
    Sotw,
    /// Delta ADS, whole assignments of the clusters that changed.
    Delta,
    /// Delta ADS, each container its own LEDS resource (`--leds`).
    Leds,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Sotw => "sotw",
            Delivery::Delta => "delta",
            Delivery::Leds => "leds",
        }
    }

    /// The `variant` label of the control server's push metrics.
    pub fn variant(self) -> &'static str {
        if self == Delivery::Sotw { "sotw" } else { "delta" }
    }

    /// Makes `options` deliver this way: the Envoys' ADS variant, and `--leds` added to the
    /// control server's arguments (so set those first).
    pub fn apply(self, options: &mut Options) {
        options.delta_xds = self != Delivery::Sotw;
        if self == Delivery::Leds {
            options.xds_args.push("--leds".into());
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub ports: Ports,
    /// SQLite lives here; reuse it to keep actions and activations across restarts.
    pub data_dir: PathBuf,
    /// Process logs and the rendered bootstrap go here.
    pub work_dir: PathBuf,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Node id of the Envoy.
    pub node_id: String,
    /// Extra flags for the control server (limits, timeouts).
    pub xds_args: Vec<String>,
    /// Extra flags for the management API's `serve` (namespace limits, retention).
    pub management_args: Vec<String>,
    /// Envoy replicas in front of the same control plane (node ids `{node_id}`, `{node_id}-1`, …).
    pub replicas: usize,
    /// Envoys speak incremental ADS (`api_type: DELTA_GRPC`) instead of state of the world (`GRPC`).
    pub delta_xds: bool,
    /// Per replica (by index), overrides `delta_xds`, to mix both variants in front of one control
    /// plane; replicas past its end follow `delta_xds`.
    pub delta_replicas: Vec<bool>,
}

/// Namespace limits far above what any test or benchmark sends: OpenWhisk's defaults (120 invokes
/// a minute) would throttle the load tests; the limits have their own test.
pub fn unthrottled() -> Vec<String> {
    ["--invocations-per-minute", "1000000000", "--concurrent-invocations", "1000000"]
        .map(String::from)
        .to_vec()
}

impl Options {
    /// Free ports and folders under `dir`: what a test wants.
    pub fn for_test(dir: &Path, node_id: &str) -> anyhow::Result<Self> {
        Ok(Self {
            ports: Ports::free()?,
            data_dir: dir.join("data"),
            work_dir: dir.join("run"),
            envoy_concurrency: 2,
            node_id: node_id.to_owned(),
            xds_args: Vec::new(),
            management_args: unthrottled(),
            replicas: 1,
            delta_xds: false,
            delta_replicas: Vec::new(),
        })
    }

    /// True when replica `replica` speaks incremental ADS.
    pub fn delta_xds_of(&self, replica: usize) -> bool {
        self.delta_replicas.get(replica).copied().unwrap_or(self.delta_xds)
    }
}

/// Envoy's `ads_config.api_type` for the ADS variant.
pub fn ads_api_type(delta: bool) -> &'static str {
    if delta { "DELTA_GRPC" } else { "GRPC" }
}

/// Paths to the binaries and assets the platform is made of.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub management_api: PathBuf,
    pub xds_server: PathBuf,
    pub runtime: PathBuf,
    pub filter_wasm: PathBuf,
    pub bootstrap_template: PathBuf,
    pub envoy: PathBuf,
}

impl Artifacts {
    /// The workspace's own build output (the profile this harness was built with) and the Envoy
    /// from `ENVOY_BIN` or the PATH.
    pub fn from_workspace() -> anyhow::Result<Self> {
        let root = workspace_root();
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        let bin = |name: &str| target.join(profile).join(name);
        let envoy =
            std::env::var_os("ENVOY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("envoy"));
        let artifacts = Self {
            management_api: bin("management-api"),
            xds_server: bin("xds-server"),
            runtime: bin("action-runtime"),
            filter_wasm: target.join("wasm32-wasip1/release/whisk_filter.wasm"),
            bootstrap_template: root.join("envoy/bootstrap.yaml"),
            envoy,
        };
        for path in
            [&artifacts.management_api, &artifacts.xds_server, &artifacts.runtime, &artifacts.filter_wasm]
        {
            if !path.exists() {
                bail!("{} is missing: build the workspace first (make build)", path.display());
            }
        }
        Ok(artifacts)
    }
}

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One started process.
#[derive(Debug)]
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Waits until `url` answers 200, and gives up at once, with the process's log, if the
    /// process exits first (a port taken, a bad flag) instead of waiting out the whole timeout.
    fn wait_ready(&mut self, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if http_status(url) == Some(200) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited ({status}) before {url} answered:\n{}", self.name, self.tail(40));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("{url} did not answer 200 within {READY_TIMEOUT:?}:\n{}", self.tail(40))
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else { return String::new() };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The running platform.
#[derive(Debug)]
pub struct Platform {
    pub options: Options,
    pub artifacts: Artifacts,
    pub internal_token: String,
    management: Option<Process>,
    xds: Option<Process>,
    envoys: Vec<Process>,
    /// Ingress and admin port of each replica; the first is `options.ports`.
    replica_ports: Vec<(u16, u16)>,
}

impl Platform {
    /// Starts everything and waits until the ingress answers through the filter.
    pub fn start(options: Options, artifacts: Artifacts) -> anyhow::Result<Self> {
        let mut platform = Self::start_unready(options, artifacts)?;
        platform.wait_ready()?;
        Ok(platform)
    }

    /// Starts everything without waiting for the ingress (for tests of a configuration Envoy
    /// rejects).
    pub fn start_unready(options: Options, artifacts: Artifacts) -> anyhow::Result<Self> {
        fs::create_dir_all(&options.data_dir)?;
        fs::create_dir_all(&options.work_dir)?;
        let internal_token = format!("{:032x}", rand_u128());
        let mut replica_ports = vec![(options.ports.ingress, options.ports.admin)];
        for _ in 1..options.replicas.max(1) {
            replica_ports.push((free_port()?, free_port()?));
        }
        let mut platform = Self {
            options,
            artifacts,
            internal_token,
            management: None,
            xds: None,
            envoys: Vec::new(),
            replica_ports,
        };
        platform.start_management()?;
        platform.start_xds()?;
        for replica in 0..platform.replica_ports.len() {
            platform.start_envoy(replica)?;
        }
        Ok(platform)
    }

    /// The first Envoy's ingress.
    pub fn api_host(&self) -> String {
        self.api_host_of(0)
    }

    /// Replica `replica`'s ingress.
    pub fn api_host_of(&self, replica: usize) -> String {
        let (ingress, _) =
            self.replica_ports.get(replica).copied().unwrap_or((self.options.ports.ingress, 0));
        format!("http://127.0.0.1:{ingress}")
    }

    /// Node id of replica `replica`.
    pub fn node_id_of(&self, replica: usize) -> String {
        if replica == 0 {
            self.options.node_id.clone()
        } else {
            format!("{}-{replica}", self.options.node_id)
        }
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.options.ports.management)
    }

    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.options.ports.control)
    }

    /// Stops replica `replica`'s Envoy for good: a node that goes away.
    pub fn stop_envoy(&mut self, replica: usize) {
        if let Some(process) = self.envoys.get_mut(replica) {
            process.stop();
        }
    }

    /// The process id of replica `replica`'s Envoy (for its memory figures).
    pub fn envoy_pid(&self, replica: usize) -> Option<u32> {
        self.envoys.get(replica).map(|process| process.child.id())
    }

    /// The process id of the control server, the parent of its local containers (for their CPU figures).
    pub fn xds_pid(&self) -> Option<u32> {
        self.xds.as_ref().map(|process| process.child.id())
    }

    /// The process id of the management API (for its CPU figures).
    pub fn management_pid(&self) -> Option<u32> {
        self.management.as_ref().map(|process| process.child.id())
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.options.ports.admin)
    }

    fn spawn(&self, name: &str, command: &mut Command) -> anyhow::Result<Process> {
        let log = self.options.work_dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process { name: name.to_owned(), child, log })
    }

    /// Starts the management API (on the same data dir as before, if it ran).
    pub fn start_management(&mut self) -> anyhow::Result<()> {
        let ports = &self.options.ports;
        let process = self.spawn(
            "management-api",
            Command::new(&self.artifacts.management_api)
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", ports.management))
                .arg("--data-dir")
                .arg(&self.options.data_dir)
                // Triggers invoke their rules' actions through the data plane.
                .arg("--ingress-url")
                .arg(format!("http://127.0.0.1:{}", ports.ingress))
                .args(&self.options.management_args)
                .env("WHISK_INTERNAL_TOKEN", &self.internal_token),
        )?;
        let url = format!("{}/health", self.management_url());
        self.management.insert(process).wait_ready(&url)
    }

    /// Starts the control server (it adopts the containers a crashed predecessor left running).
    pub fn start_xds(&mut self) -> anyhow::Result<()> {
        let ports = &self.options.ports;
        let process = self.spawn(
            "xds-server",
            Command::new(&self.artifacts.xds_server)
                .arg("--xds-listen")
                .arg(format!("127.0.0.1:{}", ports.xds))
                .arg("--control-listen")
                .arg(format!("127.0.0.1:{}", ports.control))
                .arg("--ingress")
                .arg(format!("127.0.0.1:{}", ports.ingress))
                .arg("--management-api")
                .arg(format!("127.0.0.1:{}", ports.management))
                .arg("--filter-wasm")
                .arg(&self.artifacts.filter_wasm)
                .arg("--runtime-bin")
                .arg(&self.artifacts.runtime)
                .arg("--api-host")
                .arg(format!("http://127.0.0.1:{}", ports.ingress))
                .arg("--owner")
                .arg(self.owner())
                .args(&self.options.xds_args)
                .env("WHISK_INTERNAL_TOKEN", &self.internal_token),
        )?;
        let url = format!("{}/health", self.control_url());
        self.xds.insert(process).wait_ready(&url)
    }

    fn start_envoy(&mut self, replica: usize) -> anyhow::Result<()> {
        let (ingress, admin) = self.replica_ports[replica];
        let template = fs::read_to_string(&self.artifacts.bootstrap_template)?;
        let bootstrap = template
            .replace("${NODE_ID}", &self.node_id_of(replica))
            .replace("${INGRESS_ADDRESS}", &format!("127.0.0.1:{ingress}"))
            .replace("${ADMIN_PORT}", &admin.to_string())
            .replace("${XDS_HOST}", "127.0.0.1")
            .replace("${XDS_PORT}", &self.options.ports.xds.to_string())
            .replace("${ADS_API_TYPE}", ads_api_type(self.options.delta_xds_of(replica)));
        let name = if replica == 0 { "envoy".to_owned() } else { format!("envoy-{replica}") };
        let path = self.options.work_dir.join(format!("{name}.yaml"));
        fs::write(&path, bootstrap)?;
        let process = self.spawn(
            &name,
            Command::new(&self.artifacts.envoy)
                .arg("-c")
                .arg(&path)
                .arg("--concurrency")
                .arg(self.options.envoy_concurrency.to_string())
                // Several platforms (tests) may run on one machine at once: no shared memory.
                .arg("--disable-hot-restart")
                .arg("--log-level")
                .arg("warn")
                .arg("--component-log-level")
                .arg("wasm:info"),
        )?;
        self.envoys.push(process);
        Ok(())
    }

    /// Ready when an unauthenticated API call through every Envoy reaches the management API (401).
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let urls: Vec<String> = (0..self.replica_ports.len())
            .map(|replica| format!("{}/api/v1/namespaces", self.api_host_of(replica)))
            .collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if urls.iter().all(|url| http_status(url) == Some(401)) {
                return Ok(());
            }
            for process in self.processes_mut() {
                if let Ok(Some(status)) = process.child.try_wait() {
                    bail!("{} exited with {status}:\n{}", process.name, process.tail(40));
                }
            }
            if Instant::now() > deadline {
                bail!("the platform did not become ready in {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the management API (SIGTERM), leaving everything else running.
    pub fn stop_management(&mut self) {
        if let Some(mut process) = self.management.take() {
            process.stop();
        }
    }

    /// Stops and starts the management API on the same data dir (records must survive).
    pub fn restart_management(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.management.take() {
            process.stop();
        }
        self.start_management()
    }

    /// Stops and starts the control server; Envoy keeps its configuration meanwhile (the old
    /// server stops its containers on SIGTERM unless run with `--keep-containers-on-exit`).
    pub fn restart_xds(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.xds.take() {
            process.stop();
        }
        self.start_xds()
    }

    /// Kills the control server without warning (SIGKILL), as a crash or an OOM kill would: its
    /// runtime processes keep running. [`Platform::start_xds`] brings a new one up.
    pub fn crash_xds(&mut self) {
        if let Some(mut process) = self.xds.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// The owner label of this platform's containers (`--owner` of the control server).
    pub fn owner(&self) -> String {
        format!("whisk-e2e-{}", self.options.ports.control)
    }

    fn processes(&self) -> impl Iterator<Item = &Process> {
        self.management.iter().chain(self.xds.iter()).chain(self.envoys.iter())
    }

    fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.management.iter_mut().chain(self.xds.iter_mut()).chain(self.envoys.iter_mut())
    }

    /// Process logs, for failure reports.
    pub fn logs(&self, lines: usize) -> String {
        self.processes()
            .map(|p| format!("----- {} ({})\n{}", p.name, p.log.display(), p.tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the Envoys, then the control server (which stops its containers), then the API.
    pub fn stop(&mut self) {
        for mut process in self.envoys.drain(..) {
            process.stop();
        }
        for mut process in [self.xds.take(), self.management.take()].into_iter().flatten() {
            process.stop();
        }
        // Runtimes a crashed or slow control server left behind are ours to stop too.
        let left: Vec<i32> = owned_runtimes(&self.owner()).iter().map(|runtime| runtime.pid).collect();
        stop_runtimes(&left);
    }

    /// True while every process is still running.
    pub fn is_running(&mut self) -> bool {
        let expected = 2 + self.replica_ports.len();
        let mut running = 0;
        for process in self.processes_mut() {
            if matches!(process.child.try_wait(), Ok(None)) {
                running += 1;
            }
        }
        running == expected
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(60));
        }
        self.stop();
    }
}

/// Plain blocking HTTP/1.1 GET status, for readiness checks without an async runtime.
fn http_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (authority, path) =
        rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let address: SocketAddr = authority.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Randomness for the internal token, without another dependency: the kernel's.
fn rand_u128() -> u128 {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if let Ok(mut random) = File::open("/dev/urandom") {
        let _ = random.read_exact(&mut bytes);
    }
    u128::from_le_bytes(bytes)
}
