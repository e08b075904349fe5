//! Prometheus metrics of the control server: containers by state, cold starts, xDS pushes and NACKs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};

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
            _ => "other",
        };
        Self { r#type }
    }
}

/// Cold-start outcome label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Every metric the server exposes, registered once.
#[derive(Debug, Default)]
pub struct Metrics {
    pub cold_starts: Family<OutcomeLabel, Counter>,
    pub containers_ready: Gauge,
    pub containers_starting: Gauge,
    pub xds_pushes: Family<TypeLabel, Counter>,
    pub xds_nacks: Counter,
    pub containers_retired: Counter,
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
            "whisk_containers_retired",
            "Containers the data plane retired (timeout, lost client, refused run)",
            self.containers_retired.clone(),
        );
    }
}
