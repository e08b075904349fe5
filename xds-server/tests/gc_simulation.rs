//! A synthetic day of load on 20 nodes (`xds_server::simulation`), run twice over the same
//! arrivals: our policy must keep the pool within 1.1 of the bin-packing lower bound, and do better
//! than the naive one (round-robin placement, oldest-first reclaim), as OpenWhisk spreads.

use xds_server::gc::GcConfig;
use xds_server::placement::naive::RoundRobin;
use xds_server::simulation::{Day, GC, NODE_CAPACITY_MB, NODES, Policy};

#[test]
fn a_day_of_load_keeps_the_pool_compact() {
    assert_eq!(GC, GcConfig::default());
    let day = Day::new();
    let ours = day.run(Policy::Ours(GC));
    let naive = day.run(Policy::Naive(RoundRobin::default()));
    eprintln!("{} activations over a day on {NODES} nodes of {NODE_CAPACITY_MB} MB", day.activations());
    eprintln!("{}", ours.line("ours"));
    eprintln!("{}", naive.line("naive"));
    let activations = day.activations() as u64;
    assert_eq!((ours.activations, naive.activations), (activations, activations));
    assert_eq!(ours.refused, 0, "the pool is sized for the day");
    assert!(ours.fragmentation <= 1.1, "ours {:.3} > 1.1", ours.fragmentation);
    assert!(
        ours.fragmentation < naive.fragmentation,
        "ours {:.3} is not better than naive {:.3}",
        ours.fragmentation,
        naive.fragmentation
    );
}

/// What compaction buys and costs: the same day with compaction off and at several idle
/// thresholds. Slow in debug builds; run with
/// `cargo test -p xds-server --release --test gc_simulation -- --ignored --nocapture`.
#[test]
#[ignore = "an ablation for docs/decisions/0007, not a check"]
fn compaction_trade_off() {
    let day = Day::new();
    for compact_idle_ms in [u64::MAX, 600_000, 300_000, 180_000, 120_000, 60_000, 0] {
        let config = GcConfig { compact_idle_ms, ..GC };
        let report = day.run(Policy::Ours(config));
        let name = match compact_idle_ms {
            u64::MAX => "compaction off".to_owned(),
            ms => format!("compaction at {} s", ms / 1_000),
        };
        eprintln!("{}", report.line(&name));
    }
}
