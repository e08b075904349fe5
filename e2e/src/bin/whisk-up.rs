//! `make up`: runs the whole platform in the foreground on 127.0.0.1 (the embedded default: no
//! Kubernetes) and stops everything it started on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use e2e::{Artifacts, GUEST_KEY, Options, Platform, Ports};

#[derive(Debug, Parser)]
#[command(name = "whisk-up", about = "Run the platform on this machine")]
struct Args {
    /// Where actions and activations are stored (kept across runs).
    #[arg(long, env = "WHISK_DATA_DIR", default_value = ".data")]
    data_dir: PathBuf,
    /// Envoy worker threads.
    #[arg(long, env = "WHISK_ENVOY_CONCURRENCY", default_value_t = 2)]
    concurrency: u32,
    /// Envoy speaks incremental ADS (DELTA_GRPC) instead of state of the world.
    #[arg(long, env = "WHISK_DELTA_XDS")]
    delta_xds: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let options = Options {
        ports: Ports::standard(),
        work_dir: args.data_dir.join("run"),
        data_dir: args.data_dir,
        envoy_concurrency: args.concurrency,
        node_id: "envoy-0".into(),
        // One Node.js runtime kept started: the first invoke of any Node.js action only runs /init.
        xds_args: vec!["--prewarm".into(), "nodejs:20=1".into()],
        management_args: Vec::new(),
        replicas: 1,
        delta_xds: args.delta_xds,
        delta_replicas: Vec::new(),
    };
    eprintln!("starting the platform (management API, xDS control server, Envoy)...");
    let mut platform = Platform::start(options, Artifacts::from_workspace()?)?;
    eprintln!(
        "\nthe platform is up.\n  API host: {}\n  key:      {GUEST_KEY}\n  namespace: guest\n\n  wsk property set --apihost {} --auth {GUEST_KEY}\n\nlogs in {}; Ctrl-C stops everything.",
        platform.api_host(),
        platform.api_host(),
        platform.options.work_dir.display(),
    );
    while !stop.load(Ordering::Relaxed) {
        if !platform.is_running() {
            eprintln!("a platform process exited:\n{}", platform.logs(30));
            platform.stop();
            anyhow::bail!("platform process exited");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping...");
    platform.stop();
    eprintln!("stopped.");
    Ok(())
}
