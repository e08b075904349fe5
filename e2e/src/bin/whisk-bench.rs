//! `make bench`: measures the platform beside its baselines, in the same run, and writes one JSON
//! object per scenario to `target/bench/results.jsonl` plus a table on stdout.
//!
//! Scenarios (`--scenario NAME` runs one):
//! - `warm-latency`: one client, a trivial action, through the whole platform; baselines: the same
//!   `/run` sent straight to a container, and through a plain Envoy (router only) to that container.
//! - `warm-throughput`: saturating clients for a fixed time; baseline: plain Envoy to a container.
//! - `cold-start`: Node.js and Python cold invokes; baseline: the bare runtime start plus `/init`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::client::{Client, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform, Ports, free_port, workspace_root};
use serde_json::{Value, json};

const TRIVIAL_JS: &str = "function main(p) { return {ok: true, n: p.n}; }";
const TRIVIAL_PY: &str = "def main(args):\n    return {'ok': True}\n";

#[derive(Debug, Parser)]
#[command(name = "whisk-bench", about = "Benchmarks of the platform against same-run baselines")]
struct Args {
    /// Run only this scenario.
    #[arg(long, env = "SCENARIO")]
    scenario: Option<String>,
    /// Sequential requests per latency measurement.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Concurrent clients of the throughput scenario.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Cold starts measured per runtime kind.
    #[arg(long, default_value_t = 10)]
    cold_starts: usize,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
}

/// One scenario's figures.
#[derive(Debug, Clone)]
struct Figure {
    scenario: String,
    unit: &'static str,
    value: f64,
    baseline: f64,
    target: f64,
    /// True when a lower value is better (latency); false for throughput.
    lower_is_better: bool,
    extra: Value,
}

impl Figure {
    fn ratio(&self) -> f64 {
        if self.baseline == 0.0 { f64::NAN } else { self.value / self.baseline }
    }

    fn met(&self) -> bool {
        if self.lower_is_better { self.ratio() <= self.target } else { self.ratio() >= self.target }
    }

    fn json(&self) -> Value {
        let mut object = json!({
            "scenario": self.scenario,
            "unit": self.unit,
            "value": round(self.value),
            "baseline": round(self.baseline),
            "ratio": round(self.ratio()),
            "target": self.target,
            "met": self.met(),
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load": fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" "),
        });
        if let (Some(object), Value::Object(extra)) = (object.as_object_mut(), &self.extra) {
            object.extend(extra.clone());
        }
        object
    }
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.95), percentile(&samples, 0.99))
}

/// A child process stopped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bare runtime container started by the bench itself, initialised with `code`.
async fn bare_container(
    artifacts: &Artifacts,
    kind: &str,
    code: &str,
) -> anyhow::Result<(Guard, String, Duration)> {
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let child = Command::new(&artifacts.runtime)
        .args(["--listen", &address, "--container-id", "bench", "--kind", kind])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting action-runtime")?;
    let guard = Guard(child);
    let http = reqwest::Client::new();
    let body = json!({"value": {"name": "bench", "main": "main", "code": code, "binary": false, "env": {}}});
    loop {
        match http.post(format!("http://{address}/init")).json(&body).send().await {
            Ok(response) if response.status().is_success() => break,
            Ok(response) => bail!("init failed: {}", response.text().await.unwrap_or_default()),
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok((guard, address, started.elapsed()))
}

/// A plain Envoy: one listener, the router, one static cluster with `upstream` in it.
fn plain_envoy(
    artifacts: &Artifacts,
    dir: &Path,
    upstream: &str,
    concurrency: u32,
) -> anyhow::Result<(Guard, u16)> {
    let listen = free_port()?;
    let admin = free_port()?;
    let (host, port) = upstream.split_once(':').context("upstream address")?;
    let config = format!(
        r#"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
    - name: plain
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: plain
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: container, timeout: 310s }} }}]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: container
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: container
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }} }}] }}]
"#
    );
    let path = dir.join("plain-envoy.yaml");
    fs::write(&path, config)?;
    let child = Command::new(&artifacts.envoy)
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", &concurrency.to_string(), "--disable-hot-restart", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting plain Envoy")?;
    Ok((Guard(child), listen))
}

fn run_body(n: usize) -> Value {
    json!({"value": {"n": n}, "namespace": "guest", "action_name": "/guest/bench", "activation_id": format!("{n:032x}"),
           "transaction_id": "bench", "deadline": "99999999999999", "api_host": "", "action_version": "0.0.1"})
}

/// Times `requests` sequential POSTs built by `request`; milliseconds per request.
async fn sequential<F>(requests: usize, mut request: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(usize) -> reqwest::RequestBuilder,
{
    let mut samples = Vec::with_capacity(requests);
    for n in 0..requests + requests / 10 {
        let started = Instant::now();
        let response = request(n).send().await?;
        let status = response.status();
        response.bytes().await?;
        if !status.is_success() {
            bail!("request {n} answered {status}");
        }
        if n >= requests / 10 {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(samples)
}

/// Requests per second of `clients` concurrent loops for `seconds`; counts errors.
async fn saturate<F>(clients: usize, seconds: u64, request: F) -> (f64, u64)
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (request, done, errors) = (request.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                let mut n = client * 1_000_000;
                while Instant::now() < deadline {
                    n += 1;
                    match request(n).send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    (done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(), errors.load(Ordering::Relaxed))
}

struct Bench {
    args: Args,
    artifacts: Artifacts,
    platform: Platform,
    client: Client,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Bench {
    fn invoke_url(&self, name: &str) -> String {
        format!("{}/api/v1/namespaces/_/actions/{name}?blocking=true&result=true", self.platform.api_host())
    }

    fn platform_request(
        &self,
        name: &str,
    ) -> impl Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static {
        let (http, url) = (self.http.clone(), self.invoke_url(name));
        let (user, password) = GUEST_KEY.split_once(':').unwrap_or((GUEST_KEY, ""));
        let (user, password) = (user.to_owned(), password.to_owned());
        move |n| http.post(&url).basic_auth(&user, Some(&password)).json(&json!({"n": n}))
    }

    async fn warm_latency(&self) -> anyhow::Result<Vec<Figure>> {
        self.client.create_action("bench", "nodejs:20", TRIVIAL_JS).await?;
        let platform = sequential(self.args.requests, self.platform_request("bench")).await?;
        let (_container, address, _) = bare_container(&self.artifacts, "nodejs:20", TRIVIAL_JS).await?;
        let http = self.http.clone();
        let direct_url = format!("http://{address}/run");
        let direct = sequential(self.args.requests, |n| http.post(&direct_url).json(&run_body(n))).await?;
        let (_envoy, port) = plain_envoy(&self.artifacts, self.dir.path(), &address, self.args.concurrency)?;
        let plain_url = format!("http://127.0.0.1:{port}/run");
        wait_until_up(&http, &plain_url).await?;
        let plain = sequential(self.args.requests, |n| http.post(&plain_url).json(&run_body(n))).await?;
        let (p50, p95, p99) = summary(platform);
        let (direct50, _, direct99) = summary(direct);
        let (plain50, _, plain99) = summary(plain);
        let extra = json!({
            "p95_ms": round(p95), "p99_ms": round(p99),
            "direct_p50_ms": round(direct50), "direct_p99_ms": round(direct99),
            "plain_envoy_p99_ms": round(plain99),
            "overhead_over_direct_us": round((p50 - direct50) * 1000.0),
            "overhead_over_plain_envoy_us": round((p50 - plain50) * 1000.0),
            "requests": self.args.requests,
        });
        Ok(vec![Figure {
            scenario: "warm-latency".into(),
            unit: "ms (p50)",
            value: p50,
            baseline: plain50,
            target: 1.25,
            lower_is_better: true,
            extra,
        }])
    }

    async fn warm_throughput(&self) -> anyhow::Result<Vec<Figure>> {
        self.client.create_action("bench", "nodejs:20", TRIVIAL_JS).await?;
        // Warm as many containers as there are clients, so both sides have the same pool.
        let warmups: Vec<_> = (0..self.args.clients)
            .map(|n| {
                let client = self.client.clone();
                tokio::spawn(async move { client.invoke("bench", &json!({"n": n}), true).await })
            })
            .collect();
        for warmup in warmups {
            warmup.await??;
        }
        let (platform_rps, platform_errors) =
            saturate(self.args.clients, self.args.seconds, self.platform_request("bench")).await;
        let containers = self.containers().await;
        // Baseline: plain Envoy round-robin over the same number of bare containers.
        let mut guards = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..containers.max(1.0) as usize {
            let (guard, address, _) = bare_container(&self.artifacts, "nodejs:20", TRIVIAL_JS).await?;
            guards.push(guard);
            addresses.push(address);
        }
        let (_envoy, port) =
            plain_envoy_many(&self.artifacts, self.dir.path(), &addresses, self.args.concurrency)?;
        let plain_url = format!("http://127.0.0.1:{port}/run");
        wait_until_up(&self.http, &plain_url).await?;
        let http = self.http.clone();
        let (plain_rps, plain_errors) =
            saturate(self.args.clients, self.args.seconds, move |n| http.post(&plain_url).json(&run_body(n)))
                .await;
        Ok(vec![Figure {
            scenario: "warm-throughput".into(),
            unit: "req/s",
            value: platform_rps,
            baseline: plain_rps,
            target: 0.8,
            lower_is_better: false,
            extra: json!({
                "clients": self.args.clients, "seconds": self.args.seconds, "containers": containers,
                "errors": platform_errors, "baseline_errors": plain_errors,
                "note": "the plain Envoy baseline round-robins, so it may overlap activations in one container; ours never does",
            }),
        }])
    }

    async fn containers(&self) -> f64 {
        let page = match reqwest::get(format!("{}/metrics", self.platform.control_url())).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        metric(&page, "xds_whisk_containers_ready", "")
    }

    async fn cold_start(&self) -> anyhow::Result<Vec<Figure>> {
        let mut figures = Vec::new();
        for (kind, code, label) in [("nodejs:20", TRIVIAL_JS, "nodejs"), ("python:3", TRIVIAL_PY, "python")] {
            let mut cold = Vec::new();
            let mut bare = Vec::new();
            for n in 0..self.args.cold_starts {
                // A new revision has no warm container: the next invoke is a cold start.
                let name = format!("cold-{label}-{n}");
                self.client.create_action(&name, kind, code).await?;
                let started = Instant::now();
                let reply = self.client.invoke(&name, &json!({}), false).await?;
                if reply.status != 200 || reply.body["annotations"].to_string().find("initTime").is_none() {
                    bail!("cold invoke of {name} answered {} {}", reply.status, reply.body);
                }
                cold.push(started.elapsed().as_secs_f64() * 1000.0);
                let (_guard, _, elapsed) = bare_container(&self.artifacts, kind, code).await?;
                bare.push(elapsed.as_secs_f64() * 1000.0);
            }
            let (cold50, _, cold99) = summary(cold);
            let (bare50, _, _) = summary(bare);
            figures.push(Figure {
                scenario: format!("cold-start-{label}"),
                unit: "ms (p50)",
                value: cold50,
                baseline: bare50,
                target: 1.3,
                lower_is_better: true,
                extra: json!({"p99_ms": round(cold99), "samples": self.args.cold_starts}),
            });
        }
        Ok(figures)
    }
}

/// Plain Envoy with several upstreams (round robin).
fn plain_envoy_many(
    artifacts: &Artifacts,
    dir: &Path,
    upstreams: &[String],
    concurrency: u32,
) -> anyhow::Result<(Guard, u16)> {
    let (guard, port) = plain_envoy(artifacts, dir, &upstreams[0], concurrency)?;
    if upstreams.len() == 1 {
        return Ok((guard, port));
    }
    drop(guard);
    let path = dir.join("plain-envoy.yaml");
    let config = fs::read_to_string(&path)?;
    let endpoints: Vec<String> = upstreams
        .iter()
        .filter_map(|u| u.split_once(':'))
        .map(|(h, p)| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: {h}, port_value: {p} }} }} }} }}"
            )
        })
        .collect();
    let start = config.find("lb_endpoints: [").context("template")? + "lb_endpoints: [".len();
    let end = config[start..].find("] }]").context("template")? + start;
    let config = format!("{}{}{}", &config[..start], endpoints.join(", "), &config[end..]);
    fs::write(&path, config)?;
    let child = Command::new(&artifacts.envoy)
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", &concurrency.to_string(), "--disable-hot-restart", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((Guard(child), port))
}

async fn wait_until_up(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(response) = http.post(url).json(&run_body(0)).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{url} did not come up")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let artifacts = Artifacts::from_workspace()?;
    let options = Options {
        ports: Ports::free()?,
        data_dir: dir.path().join("data"),
        work_dir: dir.path().join("run"),
        envoy_concurrency: args.concurrency,
        node_id: "envoy-bench".into(),
        xds_args: Vec::new(),
        replicas: 1,
    };
    let platform = Platform::start(options, artifacts.clone())?;
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let bench = Bench { args, artifacts, platform, client, http, dir };

    let scenarios = ["warm-latency", "cold-start", "warm-throughput"];
    let wanted: Vec<&str> = match &bench.args.scenario {
        Some(one) => scenarios.iter().copied().filter(|s| one.is_empty() || s == one).collect(),
        None => scenarios.to_vec(),
    };
    if wanted.is_empty() {
        bail!("unknown scenario; known: {}", scenarios.join(", "));
    }
    let results = workspace_root().join("target/bench");
    fs::create_dir_all(&results)?;
    let path: PathBuf = results.join("results.jsonl");
    let mut out = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut table = Vec::new();
    for scenario in wanted {
        eprintln!("running {scenario}...");
        let figures = match scenario {
            "warm-latency" => bench.warm_latency().await?,
            "cold-start" => bench.cold_start().await?,
            _ => bench.warm_throughput().await?,
        };
        for figure in figures {
            writeln!(out, "{}", figure.json())?;
            table.push(figure);
        }
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{:<22} {:>12} {:>12} {:>8} {:>8} {:>5}  unit",
        "scenario", "value", "baseline", "ratio", "target", "met"
    )?;
    for figure in &table {
        writeln!(
            stdout,
            "{:<22} {:>12.3} {:>12.3} {:>8.3} {:>8.2} {:>5}  {}",
            figure.scenario,
            figure.value,
            figure.baseline,
            figure.ratio(),
            figure.target,
            figure.met(),
            figure.unit
        )?;
    }
    writeln!(stdout, "results appended to {}", path.display())?;
    Ok(())
}
