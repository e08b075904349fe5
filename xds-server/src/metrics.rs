//! Prometheus metrics of the control server: containers by state, cold starts, xDS pushes (count,
//! bytes and resources, per variant) and NACKs, the collector's marks, unmarks and sweeps, and the
//! pool's fragmentation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LB_ENDPOINT_TYPE, LISTENER_TYPE};

/// The xDS resource type of a push, as a short label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

impl TypeLabel {
    pub fn of(type_url: &str) -> Self {
        let r#type = match type_url {
            LISTENER_TYPE => "listener",
            CLUSTER_TYPE => "cluster",
            ENDPOINT_TYPE => "endpoint",
            LB_ENDPOINT_TYPE => "lb_endpoint",
            _ => "other",
        };
        Self { r#type }
    }
}

/// The xDS resource type and protocol variant of a push.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabel {
    pub r#type: &'static str,
    /// `sotw` (state of the world) or `delta` (incremental).
    pub variant: &'static str,
}

impl PushLabel {
    pub fn of(type_url: &str, variant: &'static str) -> Self {
        Self { r#type: TypeLabel::of(type_url).r#type, variant }
    }
}

/// Cold-start outcome label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Why the collector marked a container.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Upper bounds, in seconds, of the publish-to-ACK histogram: fine below 20 ms, where the
/// targets are.
const PUBLISH_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Every metric the server exposes, registered once.
#[derive(Debug)]
pub struct Metrics {
    pub cold_starts: Family<OutcomeLabel, Counter>,
    pub containers_ready: Gauge,
    pub containers_starting: Gauge,
    pub xds_pushes: Family<TypeLabel, Counter>,
    pub xds_nacks: Counter,
    /// Encoded bytes of the xDS responses sent: what a push costs on the wire and in Envoy's parsing.
    pub xds_pushed_bytes: Family<PushLabel, Counter>,
    /// Resources carried by the xDS responses sent (a delta push carries only what changed).
    pub xds_pushed_resources: Family<PushLabel, Counter>,
    pub containers_retired: Counter,
    pub containers_lost: Counter,
    pub containers_orphaned: Counter,
    pub handovers: Counter,
    pub marks: Family<ReasonLabel, Counter>,
    pub unmarks: Counter,
    pub sweeps: Counter,
    pub containers_marked: Gauge,
    pub fragmentation: Gauge<f64, AtomicU64>,
    /// From publishing a new container's endpoint to its Envoy node acknowledging (applying) it.
    pub publish_to_ack: Histogram,
    pub stems_ready: Gauge,
    pub prewarm_used: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            cold_starts: Family::default(),
            containers_ready: Gauge::default(),
            containers_starting: Gauge::default(),
            xds_pushes: Family::default(),
            xds_nacks: Counter::default(),
            xds_pushed_bytes: Family::default(),
            xds_pushed_resources: Family::default(),
            containers_retired: Counter::default(),
            containers_lost: Counter::default(),
            containers_orphaned: Counter::default(),
            handovers: Counter::default(),
            marks: Family::default(),
            unmarks: Counter::default(),
            sweeps: Counter::default(),
            containers_marked: Gauge::default(),
            fragmentation: Gauge::default(),
            publish_to_ack: Histogram::new(PUBLISH_BUCKETS),
            stems_ready: Gauge::default(),
            prewarm_used: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("whisk_cold_starts", "Cold starts by outcome", self.cold_starts.clone());
        registry.register(
            "whisk_containers_ready",
            "Initialised, routable containers",
            self.containers_ready.clone(),
        );
        registry.register(
            "whisk_containers_starting",
            "Containers starting or in /init",
            self.containers_starting.clone(),
        );
        registry.register(
            "whisk_xds_pushes",
            "xDS responses sent, by resource type",
            self.xds_pushes.clone(),
        );
        registry.register("whisk_xds_nacks", "xDS responses Envoy rejected", self.xds_nacks.clone());
        registry.register(
            "whisk_xds_pushed_bytes",
            "Encoded bytes of the xDS responses sent, by resource type and variant (sotw, delta)",
            self.xds_pushed_bytes.clone(),
        );
        registry.register(
            "whisk_xds_pushed_resources",
            "Resources in the xDS responses sent, by resource type and variant (sotw, delta)",
            self.xds_pushed_resources.clone(),
        );
        registry.register(
            "whisk_containers_retired",
            "Containers the data plane retired (timeout, lost client, refused run)",
            self.containers_retired.clone(),
        );
        registry.register(
            "whisk_containers_lost",
            "Containers that stopped on their own (exited process; failed, evicted or deleted pod)",
            self.containers_lost.clone(),
        );
        registry.register(
            "whisk_containers_orphaned",
            "Containers no Envoy node named in its usage reports for the orphan timeout, stopped",
            self.containers_orphaned.clone(),
        );
        registry.register(
            "whisk_handovers",
            "Warm containers moved from one Envoy node to another (pool full)",
            self.handovers.clone(),
        );
        registry.register(
            "whisk_gc_marks",
            "Containers the collector marked, by reason (idle, compaction, reclaim, revision)",
            self.marks.clone(),
        );
        registry.register("whisk_gc_unmarks", "Marks cleared by a use", self.unmarks.clone());
        registry.register(
            "whisk_gc_sweeps",
            "Marked containers swept: out of xDS, then stopped",
            self.sweeps.clone(),
        );
        registry.register(
            "whisk_containers_marked",
            "Containers marked, not yet swept",
            self.containers_marked.clone(),
        );
        registry.register(
            "whisk_prewarmed_ready",
            "Prewarmed containers waiting for a cold start",
            self.stems_ready.clone(),
        );
        registry.register(
            "whisk_prewarmed_used",
            "Cold starts that specialised a prewarmed container",
            self.prewarm_used.clone(),
        );
        registry.register(
            "whisk_publish_to_ack_seconds",
            "From publishing a new container to its Envoy node acknowledging the endpoints",
            self.publish_to_ack.clone(),
        );
        registry.register(
            "whisk_pool_fragmentation",
            "Nodes in use over the bin-packing lower bound (1 is compact; 0 with an empty pool)",
            self.fragmentation.clone(),
        );
    }
}
