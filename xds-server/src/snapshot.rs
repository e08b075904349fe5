//! Snapshot building: from the platform's topology and the container table to the Envoy resources
//! each node receives. Pure functions, no I/O; the ADS module only streams what these build.
//!
//! ```text
//!  listener "ingress" ── HCM ── wasm filter (whisk) ── router
//!      route: header x-whisk-route=container ──► cluster whisk_containers (EDS, override_host)
//!      route: everything else ─────────────────► cluster whisk_management_api
//!  clusters whisk_control_plane (cold starts), whisk_ingress (self, for non-blocking invokes)
//! ```
//!
//! Clusters stay static for the life of the server; only endpoints churn (Envoy pauses EDS and
//! warms clusters on every CDS change, so busy/free state never goes into xDS).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, cluster, load_balancing_policy,
};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, AsyncDataSource, ConfigSource, DataSource, SocketAddress,
    TypedExtensionConfig, address, async_data_source, config_source, data_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LedsClusterLocalityConfig, LocalityLbEndpoints, lb_endpoint,
    locality_lb_endpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    header_matcher, retry_policy, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::override_host::v3::{
    OverrideHost, override_host,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::random::v3::Random;
use envoy_types::pb::envoy::extensions::wasm::v3::{PluginConfig, VmConfig, plugin_config};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, StringValue, UInt32Value};
use prost::{Message, Name};
use whisk_contract::{FilterConfig, clusters, headers};

use crate::table::{Container, ContainerState, Table};

/// Listener resource type.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Cluster resource type.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Endpoint resource type.
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// LEDS resource type: one endpoint, one container.
pub const LB_ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.LbEndpoint";

/// The start of every LEDS resource name: xDS transport names, authority `whisk`, then the type.
const LEDS_PREFIX: &str = "xdstp://whisk/envoy.config.endpoint.v3.LbEndpoint";

/// Envoy buffers whole invoke bodies (the filter rewrites them) and whole replies (it turns them
/// into activation records): room for 1 MB payloads and results, with their JSON envelopes, and for
/// 48 MB action code streamed to the management API.
const BUFFER_LIMIT_BYTES: u32 = 8 * 1024 * 1024;

/// Longest action timeout OpenWhisk allows (300 s) plus room for the reply.
const CONTAINER_ROUTE_TIMEOUT_SECONDS: i64 = 310;

/// What every node's static part is built from.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The ingress listener address, unless the node's metadata says otherwise.
    pub ingress: SocketAddr,
    pub management_api: SocketAddr,
    pub control_api: SocketAddr,
    /// The compiled filter (`whisk_filter.wasm`), loaded by Envoy from this path.
    pub filter_wasm: PathBuf,
    pub filter_config: FilterConfig,
    /// Delta Envoys get each container as its own LEDS resource, the containers clusters'
    /// assignments only naming their collections: a container change then pushes one endpoint.
    pub leds: bool,
}

#[cfg(test)]
impl Topology {
    /// A topology on loopback ports, for tests.
    pub fn test() -> Self {
        Topology {
            ingress: SocketAddr::from(([127, 0, 0, 1], 3233)),
            management_api: SocketAddr::from(([127, 0, 0, 1], 3234)),
            control_api: SocketAddr::from(([127, 0, 0, 1], 3235)),
            filter_wasm: "/tmp/whisk_filter.wasm".into(),
            filter_config: FilterConfig {
                node_id: String::new(),
                internal_token: "t".into(),
                api_host: "http://127.0.0.1:3233".into(),
                max_payload_bytes: 1,
                resolve_timeout_ms: 1,
                cold_start_timeout_ms: 1,
                flush_period_ms: 1,
                record_batch_ms: 1,
                max_waiting_per_action: 1,
                max_wait_ms: 1,
                waiters_per_cold_start: 1,
                usage_report_period_ms: 1_000,
                max_blocking_wait_ms: 60_000,
                resolve_cache_max_age_ms: 1,
                container_clusters: 1,
                new_container_exclusive_ms: 1,
            },
            leds: false,
        }
    }
}

/// Packs a message as `Any`.
pub fn any<M: Message + Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

fn socket_address(address: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(address.port()))),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn typed_extension<M: Message + Name>(name: &str, message: &M) -> TypedExtensionConfig {
    TypedExtensionConfig { name: name.into(), typed_config: Some(any(message)) }
}

fn wasm_filter(topology: &Topology, node_id: &str) -> HttpFilter {
    // The configuration is JSON the filter parses once into an immutable plan; it names the node
    // because the filter cannot read its node id from Envoy's attributes reliably across versions.
    let config = FilterConfig { node_id: node_id.to_owned(), ..topology.filter_config.clone() };
    let configuration = serde_json::to_string(&config).unwrap_or_default();
    let plugin = PluginConfig {
        name: "whisk".into(),
        root_id: "whisk".into(),
        configuration: Some(any(&StringValue { value: configuration })),
        // The filter holds request headers while it reads the body and decides the container.
        allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            vm_id: "whisk".into(),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(
                        topology.filter_wasm.to_string_lossy().into_owned(),
                    )),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    HttpFilter {
        name: "envoy.filters.http.wasm".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Wasm { config: Some(plugin) }))),
        ..Default::default()
    }
}

fn route_to(
    cluster: route_action::ClusterSpecifier,
    timeout_seconds: i64,
    retry_policy: Option<RetryPolicy>,
) -> route::Action {
    route::Action::Route(RouteAction {
        cluster_specifier: Some(cluster),
        timeout: Some(Duration { seconds: timeout_seconds, nanos: 0 }),
        retry_policy,
        ..Default::default()
    })
}

/// Retries of a `/run` our runtime refused as misrouted (421, which it answers before running
/// anything).
///
/// A node ACKs new endpoints once its main thread has applied them; each worker applies them on
/// its own event loop a moment later (0 to 9 ms apart in the bench's debug logs, and longer when
/// the worker's thread is descheduled in the middle of a loop iteration). A worker that forwards a
/// request to a container that just came up in that moment finds no such host, and
/// override_host's fallback sends the `/run` to another container, which refuses it. Seen under a
/// burst of cold starts: one invoke in about six runs of 16 clients saturating a new action was
/// answered 500, and the new container was retired.
///
/// The retry cannot go back to the stamped container: override_host reads its list of hosts once
/// per request and, when the first lookup misses, consumes the whole list, so every retry is the
/// fallback's pick, which by then may be the right one (one chance in as many containers as the
/// cluster holds). It rescues some misroutes, not all (decision 0001). Nothing else is retried:
/// an activation runs at most once, and a busy container's 409 (an overlap, which routing must
/// never cause) surfaces.
const RUN_MISROUTED: u32 = 421;
const RUN_RETRIES: u32 = 4;
/// Envoy's back-off is fully jittered: the n-th retry waits up to (2^n - 1) × base, at most max.
/// Any wait lets the worker apply the pending update before the retry picks again.
const RUN_RETRY_BASE_MS: i32 = 2;
const RUN_RETRY_MAX_MS: i32 = 20;

fn run_retry_policy() -> RetryPolicy {
    let millis = |ms: i32| Duration { seconds: 0, nanos: ms * 1_000_000 };
    RetryPolicy {
        retry_on: "retriable-status-codes".into(),
        retriable_status_codes: vec![RUN_MISROUTED],
        num_retries: Some(UInt32Value { value: RUN_RETRIES }),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(millis(RUN_RETRY_BASE_MS)),
            max_interval: Some(millis(RUN_RETRY_MAX_MS)),
        }),
        ..Default::default()
    }
}

/// With one containers cluster the container route names it; with more, it takes the cluster the
/// filter stamped ([`headers::CONTAINER_CLUSTER`]).
fn route_config(container_clusters: u32) -> RouteConfiguration {
    let to_containers = Route {
        name: "invoke".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers: vec![HeaderMatcher {
                name: headers::ROUTE.into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(
                            headers::ROUTE_CONTAINER.into(),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }),
        action: Some(route_to(
            if container_clusters <= 1 {
                route_action::ClusterSpecifier::Cluster(clusters::CONTAINERS.into())
            } else {
                route_action::ClusterSpecifier::ClusterHeader(headers::CONTAINER_CLUSTER.into())
            },
            CONTAINER_ROUTE_TIMEOUT_SECONDS,
            Some(run_retry_policy()),
        )),
        ..Default::default()
    };
    let to_management = Route {
        name: "management".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route_to(
            route_action::ClusterSpecifier::Cluster(clusters::MANAGEMENT_API.into()),
            120,
            None,
        )),
        ..Default::default()
    };
    RouteConfiguration {
        name: "ingress".into(),
        virtual_hosts: vec![VirtualHost {
            name: "whisk".into(),
            domains: vec!["*".into()],
            routes: vec![to_containers, to_management],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The ingress listener of node `node_id`, listening on `ingress`.
pub fn listener(topology: &Topology, node_id: &str, ingress: SocketAddr) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: "ingress".into(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(route_config(
            topology.filter_config.container_clusters,
        ))),
        http_filters: vec![
            wasm_filter(topology, node_id),
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    Listener {
        name: "ingress".into(),
        address: Some(socket_address(ingress)),
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: BUFFER_LIMIT_BYTES }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn static_cluster(name: &str, address: SocketAddr) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: BUFFER_LIMIT_BYTES }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint_at(address)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn lb_endpoint_at(address: SocketAddr) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(address)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The containers cluster: endpoints by EDS, the exact host chosen by the filter's header.
fn containers_cluster(name: String) -> Cluster {
    // The fallback only runs when the stamped host is not in the worker's endpoint set: a container
    // that went away, or one so new that the worker has not applied the endpoint its node ACKed.
    // Our runtime refuses a /run stamped for another container id (421), and the route retries it.
    let fallback = LoadBalancingPolicy {
        policies: vec![load_balancing_policy::Policy {
            typed_extension_config: Some(typed_extension(
                "envoy.load_balancing_policies.random",
                &Random::default(),
            )),
        }],
    };
    let override_host = OverrideHost {
        override_host_sources: vec![override_host::OverrideHostSource {
            header: headers::CONTAINER_ADDRESS.into(),
            ..Default::default()
        }],
        fallback_policy: Some(fallback),
        ..Default::default()
    };
    Cluster {
        name,
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), ..Default::default() }),
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: BUFFER_LIMIT_BYTES }),
        load_balancing_policy: Some(LoadBalancingPolicy {
            policies: vec![load_balancing_policy::Policy {
                typed_extension_config: Some(typed_extension(
                    "envoy.load_balancing_policies.override_host",
                    &override_host,
                )),
            }],
        }),
        ..Default::default()
    }
}

/// The clusters of a node whose ingress listens on `ingress`.
pub fn clusters(topology: &Topology, ingress: SocketAddr) -> Vec<Cluster> {
    let mut all: Vec<Cluster> = clusters::all_containers(topology.filter_config.container_clusters)
        .into_iter()
        .map(containers_cluster)
        .collect();
    all.extend([
        static_cluster(clusters::MANAGEMENT_API, topology.management_api),
        static_cluster(clusters::CONTROL_PLANE, topology.control_api),
        static_cluster(clusters::INGRESS, ingress),
    ]);
    all
}

/// The containers given to `node`, as the endpoints of the `count` containers clusters: one
/// assignment per cluster, empty ones included (Envoy keeps a cluster warming until its first
/// assignment arrives), each container in the cluster its address hashes to.
pub fn endpoints(table: &Table, node: &str, count: u32) -> Vec<ClusterLoadAssignment> {
    let names = clusters::all_containers(count);
    // By position, not by name: one hash per container, no name built for it.
    let mut by_cluster: Vec<Vec<LbEndpoint>> = vec![Vec::new(); names.len()];
    for (index, socket) in table.iter().filter_map(|container| routable_on(container, node, count)) {
        if let Some(lb_endpoints) = by_cluster.get_mut(index) {
            lb_endpoints.push(lb_endpoint_at(socket));
        }
    }
    names.into_iter().zip(by_cluster).map(|(name, lb_endpoints)| assignment(name, lb_endpoints)).collect()
}

/// Where `container` is an endpoint of `node`: the position of its containers cluster among the
/// `count`, and its address; `None` when it is not routable there (starting, another node's, or
/// without a valid address).
fn routable_on(container: &Container, node: &str, count: u32) -> Option<(usize, SocketAddr)> {
    if container.state != ContainerState::Ready || container.node != node {
        return None;
    }
    let address = container.address.as_deref()?;
    Some((clusters::containers_index(address, count), address.parse().ok()?))
}

/// One containers cluster's assignment.
fn assignment(cluster_name: String, lb_endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name,
        endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
        ..Default::default()
    }
}

/// The LEDS glob collection that holds the containers of cluster `cluster`.
pub fn leds_collection(cluster: &str) -> String {
    format!("{LEDS_PREFIX}/{cluster}/*")
}

/// The LEDS name of container `id` in cluster `cluster`: a member of [`leds_collection`]. The id is
/// percent-encoded, so whatever a cluster manager names its containers stays one path segment.
fn leds_name(cluster: &str, id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    format!("{LEDS_PREFIX}/{cluster}/{id}")
}

/// With LEDS, the assignments of the `count` containers clusters: each names its collection and
/// holds no endpoint, so they never change; the containers come as LEDS resources.
pub fn leds_assignments(count: u32) -> Vec<ClusterLoadAssignment> {
    clusters::all_containers(count)
        .into_iter()
        .map(|cluster_name| {
            let leds = LedsClusterLocalityConfig {
                leds_config: Some(ads()),
                leds_collection_name: leds_collection(&cluster_name),
            };
            ClusterLoadAssignment {
                cluster_name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_config: Some(locality_lb_endpoints::LbConfig::LedsClusterLocalityConfig(leds)),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// What one LEDS push carries: the containers that came or changed, by LEDS name, and the LEDS names
/// of those that went.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LedsChanges {
    pub changed: Vec<(String, Any)>,
    pub gone: Vec<String>,
}

/// One node's endpoints, carried from one table version to the next so that a new version costs
/// what changed between the two, not the whole pool: the table is a persistent map whose versions
/// share their unchanged parts, and the diff skips those. Only the assignments of clusters whose
/// members changed are encoded again. Always equal to [`endpoints`] of the last table given.
#[derive(Debug, Clone)]
pub struct NodeEndpoints {
    node: String,
    count: u32,
    built_from: Table,
    /// Per cluster, in [`clusters::all_containers`] order: its members by container id.
    members: Vec<BTreeMap<String, SocketAddr>>,
    /// Per cluster, the encoded assignment; `None` when its members changed since.
    encoded: Vec<Option<Any>>,
    /// Per cluster, whether its members changed since resources were last taken.
    dirty: Vec<bool>,
    /// With LEDS: the containers that entered or left a cluster since LEDS resources were last
    /// taken, by cluster position and id.
    touched: Option<BTreeSet<(usize, String)>>,
}

impl NodeEndpoints {
    /// The endpoints of `node` over `count` clusters; `leds` keeps track of single containers'
    /// changes for LEDS pushes.
    pub fn new(node: &str, count: u32, leds: bool) -> Self {
        let clusters = clusters::all_containers(count).len();
        Self {
            node: node.to_owned(),
            count,
            built_from: Table::default(),
            members: vec![BTreeMap::new(); clusters],
            encoded: vec![None; clusters],
            dirty: vec![false; clusters],
            touched: leds.then(BTreeSet::new),
        }
    }

    /// The node these are the endpoints of.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Brings the endpoints to `table`'s version.
    pub fn update(&mut self, table: &Table) {
        let (node, count) = (&self.node, self.count);
        let routable = |container: &Container| routable_on(container, node, count);
        for (before, after) in self.built_from.changes(table) {
            let (old, new) = (before.and_then(routable), after.and_then(routable));
            if old == new {
                continue;
            }
            let Some(id) = before.or(after).map(|container| container.id.clone()) else { continue };
            if let Some((index, _)) = old
                && let Some(members) = self.members.get_mut(index)
            {
                members.remove(&id);
                self.encoded[index] = None;
                self.dirty[index] = true;
                if let Some(touched) = &mut self.touched {
                    touched.insert((index, id.clone()));
                }
            }
            if let Some((index, socket)) = new
                && let Some(members) = self.members.get_mut(index)
            {
                if let Some(touched) = &mut self.touched {
                    touched.insert((index, id.clone()));
                }
                members.insert(id, socket);
                self.encoded[index] = None;
                self.dirty[index] = true;
            }
        }
        self.built_from = table.clone();
    }

    /// Every cluster's assignment, by name, in [`clusters::all_containers`] order.
    pub fn resources(&mut self) -> Vec<(String, Any)> {
        self.take(|_| true)
    }

    /// The assignments of the clusters whose members changed since resources were last taken (by
    /// this or [`NodeEndpoints::resources`]): what a push must carry when Envoy holds the rest.
    pub fn changed_resources(&mut self) -> Vec<(String, Any)> {
        self.take(|dirty| dirty)
    }

    /// With LEDS: the containers that came or changed since LEDS resources were last taken, with
    /// every container of the `collections` (LEDS globs) named, by LEDS name; and the names of the
    /// containers that went. What a push must carry when Envoy holds the rest and has just asked
    /// for `collections`.
    pub fn lb_endpoints_in(&mut self, collections: &BTreeSet<String>) -> LedsChanges {
        let Some(touched) = self.touched.as_mut() else { return LedsChanges::default() };
        let names = clusters::all_containers(self.count);
        let mut changed = BTreeMap::new();
        let mut gone = Vec::new();
        for (index, id) in std::mem::take(touched) {
            let (Some(cluster), Some(members)) = (names.get(index), self.members.get(index)) else {
                continue;
            };
            let name = leds_name(cluster, &id);
            match members.get(&id) {
                Some(socket) => {
                    changed.insert(name, any(&lb_endpoint_at(*socket)));
                }
                None => gone.push(name),
            }
        }
        if !collections.is_empty() {
            for (cluster, members) in names.iter().zip(&self.members) {
                if collections.contains(&leds_collection(cluster)) {
                    for (id, socket) in members {
                        changed.insert(leds_name(cluster, id), any(&lb_endpoint_at(*socket)));
                    }
                }
            }
        }
        LedsChanges { changed: changed.into_iter().collect(), gone }
    }

    /// The assignments of the clusters `pick` chooses by their dirty flag; clears every flag.
    fn take(&mut self, pick: impl Fn(bool) -> bool) -> Vec<(String, Any)> {
        let names = clusters::all_containers(self.count);
        let taken = names
            .into_iter()
            .zip(self.members.iter().zip(self.encoded.iter_mut()).zip(&self.dirty))
            .filter(|(_, (_, dirty))| pick(**dirty))
            .map(|(cluster_name, ((members, encoded), _))| {
                let body = encoded.get_or_insert_with(|| {
                    let lb_endpoints = members.values().copied().map(lb_endpoint_at).collect();
                    any(&assignment(cluster_name.clone(), lb_endpoints))
                });
                (cluster_name, body.clone())
            })
            .collect();
        self.dirty.fill(false);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::test()
    }

    #[test]
    fn endpoints_hold_only_the_nodes_ready_containers() {
        let table = Table::test().with_ready("a", "hello", "envoy-1", "127.0.0.1:4001").with_ready(
            "b",
            "hello",
            "envoy-2",
            "127.0.0.1:4002",
        );
        let assignments = endpoints(&table, "envoy-1", 1);
        assert_eq!(assignments.len(), 1);
        let assignment = &assignments[0];
        assert_eq!(assignment.cluster_name, clusters::CONTAINERS);
        let hosts: Vec<_> = assignment.endpoints[0]
            .lb_endpoints
            .iter()
            .filter_map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) => endpoint.address.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(hosts, vec![socket_address("127.0.0.1:4001".parse().unwrap())]);
    }

    #[test]
    fn spread_containers_go_to_the_cluster_of_their_address_and_the_route_reads_the_header() {
        let mut topology = topology();
        topology.filter_config.container_clusters = 4;
        let names: Vec<_> = clusters(&topology, topology.ingress).into_iter().map(|c| c.name).collect();
        assert_eq!(names[..4], clusters::all_containers(4));
        let routes = route_config(4);
        let Some(route::Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
            panic!("no route action")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::ClusterHeader(headers::CONTAINER_CLUSTER.into()))
        );

        let mut table = Table::test();
        for port in 4000..4020 {
            table = table.with_ready(&format!("c{port}"), "hello", "envoy-1", &format!("127.0.0.1:{port}"));
        }
        let assignments = endpoints(&table, "envoy-1", 4);
        assert_eq!(assignments.len(), 4, "every cluster gets an assignment, empty or not");
        let mut seen = 0;
        for assignment in &assignments {
            for endpoint in &assignment.endpoints[0].lb_endpoints {
                let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier else {
                    panic!("no endpoint")
                };
                let Some(address::Address::SocketAddress(socket)) =
                    endpoint.address.as_ref().and_then(|a| a.address.clone())
                else {
                    panic!("no socket address")
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
                    panic!("no port")
                };
                let address = format!("{}:{port}", socket.address);
                assert_eq!(assignment.cluster_name, clusters::containers_of(&address, 4));
                seen += 1;
            }
        }
        assert_eq!(seen, 20);
    }

    #[test]
    fn the_listener_carries_the_filter_config_and_both_routes() {
        let listener = listener(&topology(), "envoy-7", "127.0.0.1:9999".parse().unwrap());
        let Some(filter::ConfigType::TypedConfig(hcm)) = &listener.filter_chains[0].filters[0].config_type
        else {
            panic!("no typed config")
        };
        let manager = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
        assert_eq!(manager.http_filters.len(), 2);
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) = manager.route_specifier
        else {
            panic!("no inline routes")
        };
        assert_eq!(routes.virtual_hosts[0].routes.len(), 2);
        let Some(http_filter::ConfigType::TypedConfig(wasm)) = &manager.http_filters[0].config_type else {
            panic!("no wasm config")
        };
        let wasm = Wasm::decode(wasm.value.as_slice()).unwrap();
        let configuration = wasm.config.unwrap().configuration.unwrap();
        let text = StringValue::decode(configuration.value.as_slice()).unwrap().value;
        let parsed: FilterConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, FilterConfig { node_id: "envoy-7".into(), ..topology().filter_config });
    }

    #[test]
    fn only_misrouted_runs_are_retried() {
        let routes = route_config(1);
        let actions: Vec<_> = routes.virtual_hosts[0]
            .routes
            .iter()
            .map(|route| match &route.action {
                Some(route::Action::Route(action)) => action.clone(),
                _ => panic!("no route action"),
            })
            .collect();
        let retry = actions[0].retry_policy.clone().expect("the container route retries");
        assert_eq!(retry.retry_on, "retriable-status-codes", "no retry on resets or 5xx");
        assert_eq!(retry.retriable_status_codes, [421], "never 409: an overlap must surface");
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 4 }));
        let back_off = retry.retry_back_off.expect("a short back-off, not Envoy's 25 ms");
        assert_eq!(back_off.base_interval, Some(Duration { seconds: 0, nanos: 2_000_000 }));
        assert_eq!(actions[1].retry_policy, None, "the management API's calls are not retried");
    }

    #[test]
    fn clusters_are_the_four_fixed_ones() {
        let names: Vec<_> = clusters(&topology(), topology().ingress).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [clusters::CONTAINERS, clusters::MANAGEMENT_API, clusters::CONTROL_PLANE, clusters::INGRESS]
        );
    }

    proptest::proptest! {
        /// Whatever the table goes through (containers starting, becoming ready, moving between
        /// nodes, going away), the kept endpoints equal the ones built afresh from the table.
        #[test]
        fn kept_endpoints_equal_endpoints_built_afresh(
            steps in proptest::collection::vec((0u8..4, 0u16..30, 0usize..2), 1..80),
            count in 1u32..6,
        ) {
            let nodes = ["envoy-1", "envoy-2"];
            let mut table = Table::default();
            let mut kept = NodeEndpoints::new("envoy-1", count, false);
            for (step, n, node) in steps {
                let id = format!("c{n}");
                match step {
                    0 if table.get(&id).is_none() => {
                        table.reserve(id, crate::table::action("a"), "nodejs:20".into(), nodes[node].into());
                    }
                    1 => {
                        table.set_ready(&id, format!("127.0.0.1:{}", 4000 + n));
                    }
                    2 => {
                        table.remove(&id);
                    }
                    3 => {
                        if let Some(container) = table.get_mut(&id) {
                            container.node = nodes[node].into();
                        }
                    }
                    _ => {}
                }
                kept.update(&table);
                let fresh: Vec<(String, Any)> =
                    endpoints(&table, "envoy-1", count).iter().map(|a| (a.cluster_name.clone(), any(a))).collect();
                proptest::prop_assert_eq!(kept.resources(), fresh);
            }
        }

        /// What a changed-only push carries, laid over what the previous push left, is the whole of
        /// the new endpoints: no change is ever left out.
        #[test]
        fn changed_resources_over_the_last_push_are_the_new_endpoints(
            steps in proptest::collection::vec((0u8..3, 0u16..30), 1..60),
            count in 1u32..6,
            take_every in 1usize..4,
        ) {
            let mut table = Table::default();
            let mut kept = NodeEndpoints::new("envoy-1", count, false);
            let mut held: BTreeMap<String, Any> = kept.resources().into_iter().collect();
            for (index, (step, n)) in steps.into_iter().enumerate() {
                let id = format!("c{n}");
                match step {
                    0 if table.get(&id).is_none() => {
                        table.reserve(id, crate::table::action("a"), "nodejs:20".into(), "envoy-1".into());
                    }
                    1 => {
                        table.set_ready(&id, format!("127.0.0.1:{}", 4000 + n));
                    }
                    2 => {
                        table.remove(&id);
                    }
                    _ => {}
                }
                kept.update(&table);
                // Publishes may come faster than pushes: several updates, then one push.
                if index % take_every == 0 {
                    held.extend(kept.changed_resources());
                    let fresh: BTreeMap<String, Any> = endpoints(&table, "envoy-1", count)
                        .iter()
                        .map(|a| (a.cluster_name.clone(), any(a)))
                        .collect();
                    proptest::prop_assert_eq!(&held, &fresh);
                    proptest::prop_assert!(kept.changed_resources().is_empty(), "taken once");
                }
            }
        }

        /// With LEDS, what a changed-only push carries, laid over what the previous pushes left
        /// (its gone names removed), is every container of the node as its own resource; the
        /// assignments never change.
        #[test]
        fn changed_lb_endpoints_over_the_last_push_are_the_new_containers(
            steps in proptest::collection::vec((0u8..4, 0u16..20, 0u16..3), 1..60),
            count in 1u32..6,
            take_every in 1usize..4,
        ) {
            let nodes = ["envoy-1", "envoy-2"];
            let mut table = Table::default();
            let every: BTreeSet<String> =
                clusters::all_containers(count).iter().map(|cluster| leds_collection(cluster)).collect();
            let mut kept = NodeEndpoints::new("envoy-1", count, true);
            let mut held: BTreeMap<String, Any> = kept.lb_endpoints_in(&every).changed.into_iter().collect();
            for (index, (step, n, shift)) in steps.into_iter().enumerate() {
                let id = format!("c{n}");
                match step {
                    0 if table.get(&id).is_none() => {
                        table.reserve(id, crate::table::action("a"), "nodejs:20".into(), nodes[usize::from(shift % 2)].into());
                    }
                    // A new address may move the container to another cluster.
                    1 => {
                        table.set_ready(&id, format!("127.0.0.1:{}", 4000 + n + 100 * shift));
                    }
                    2 => {
                        table.remove(&id);
                    }
                    3 => {
                        if let Some(container) = table.get_mut(&id) {
                            container.node = nodes[usize::from(shift % 2)].into();
                        }
                    }
                    _ => {}
                }
                kept.update(&table);
                if index % take_every == 0 {
                    let changes = kept.lb_endpoints_in(&BTreeSet::new());
                    let mut fresh = NodeEndpoints::new("envoy-1", count, true);
                    fresh.update(&table);
                    let fresh: BTreeMap<String, Any> = fresh.lb_endpoints_in(&every).changed.into_iter().collect();
                    // A container that came and went between two pushes is named gone too: the
                    // delta drops the names Envoy never held.
                    for gone in &changes.gone {
                        proptest::prop_assert!(!fresh.contains_key(gone), "{gone} is not gone");
                        held.remove(gone);
                    }
                    held.extend(changes.changed);
                    proptest::prop_assert_eq!(held.len(), endpoints(&table, "envoy-1", count).iter().map(|a| a.endpoints[0].lb_endpoints.len()).sum::<usize>());
                    proptest::prop_assert_eq!(&held, &fresh);
                    proptest::prop_assert_eq!(kept.lb_endpoints_in(&BTreeSet::new()), LedsChanges::default(), "taken once");
                }
            }
        }
    }

    #[test]
    fn leds_assignments_name_one_collection_per_cluster() {
        let assignments = leds_assignments(3);
        assert_eq!(assignments.len(), 3);
        for assignment in &assignments {
            let [locality] = assignment.endpoints.as_slice() else { panic!("one locality") };
            assert!(locality.lb_endpoints.is_empty());
            let Some(locality_lb_endpoints::LbConfig::LedsClusterLocalityConfig(leds)) = &locality.lb_config
            else {
                panic!("no LEDS config")
            };
            assert_eq!(leds.leds_collection_name, format!("{LEDS_PREFIX}/{}/*", assignment.cluster_name));
            assert_eq!(leds.leds_config, Some(ads()));
        }
        // Ids that are not plain stay one path segment of their collection.
        let name = leds_name("whisk_containers", "pod/a b");
        assert_eq!(
            crate::delta::glob_of(&name).as_deref(),
            Some(leds_collection("whisk_containers").as_str())
        );
    }
}
