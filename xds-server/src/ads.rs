//! The Aggregated Discovery Service: one gRPC stream per Envoy carrying listeners, clusters and
//! endpoints, in either variant Envoy's bootstrap picks (`ads_config.api_type`): state of the world
//! (`GRPC`, every push carries the whole set of a type) or incremental (`DELTA_GRPC`, a push carries
//! only what changed, see [`delta`]). This module knows only the stream protocol (versions, nonces,
//! ACK and NACK); what to send comes from [`Published`] snapshots and the [`snapshot`] builders.
//!
//! ```text
//!  Envoy ──DiscoveryRequest(type, names, nonce, version|error)──► stream task ──► AckTracker
//!  Envoy ◄─DiscoveryResponse(type, version, nonce, resources)──── stream task ◄── watch<Published>
//!  Envoy ──DeltaDiscoveryRequest(type, (un)subscribe, nonce, error)──► delta task ──► AckTracker
//!  Envoy ◄─DeltaDiscoveryResponse(type, changed, removed, nonce)────── delta task ◄── watch<Published>
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::value::Kind;
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::delta;
use crate::metrics::{Metrics, PushLabel, TypeLabel};
use crate::snapshot::{self, CLUSTER_TYPE, ENDPOINT_TYPE, LB_ENDPOINT_TYPE, LISTENER_TYPE, Topology};
use crate::table::Table;

/// Static resources (listeners, clusters) never change during a server's life: one version.
const STATIC_VERSION: &str = "static-1";

/// A version of the container table as published to the data plane.
#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub table: Table,
}

/// The highest endpoints version each node acknowledged; cold starts wait on it so that a container
/// is handed to the filter only once that node's Envoy can route to it.
#[derive(Debug, Clone)]
pub struct AckTracker {
    acked: watch::Sender<BTreeMap<String, u64>>,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self { acked: watch::channel(BTreeMap::new()).0 }
    }
}

impl AckTracker {
    pub fn record(&self, node: &str, version: u64) {
        self.acked.send_if_modified(|acked| {
            let entry = acked.entry(node.to_owned()).or_default();
            let advanced = version > *entry;
            if advanced {
                *entry = version;
            }
            advanced
        });
    }

    /// Waits until `node` acknowledged `version` or later; false on timeout.
    pub async fn wait_for(&self, node: &str, version: u64, timeout: Duration) -> bool {
        let mut receiver = self.acked.subscribe();
        let acked = receiver.wait_for(|acked| acked.get(node).is_some_and(|v| *v >= version));
        matches!(tokio::time::timeout(timeout, acked).await, Ok(Ok(_)))
    }
}

/// What a stream's peer told us about itself in its first request.
#[derive(Debug, Clone)]
struct Peer {
    id: String,
    ingress: SocketAddr,
}

impl Peer {
    /// The node's ingress address comes from its bootstrap metadata (`ingress_address`), so that
    /// several Envoys on one machine each get their own listener.
    fn from_node(node: &Node, default_ingress: SocketAddr) -> Self {
        let ingress = node
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.fields.get("ingress_address"))
            .and_then(|value| match &value.kind {
                Some(Kind::StringValue(text)) => text.parse().ok(),
                _ => None,
            })
            .unwrap_or(default_ingress);
        Self { id: node.id.clone(), ingress }
    }
}

/// Per stream, per type: what Envoy asked for and what we last sent.
#[derive(Debug, Default)]
struct Subscription {
    names: Vec<String>,
    nonce: String,
}

/// The gRPC service.
#[derive(Clone)]
pub struct Ads {
    topology: Arc<Topology>,
    published: watch::Receiver<Arc<Published>>,
    acks: AckTracker,
    metrics: Arc<Metrics>,
}

impl Ads {
    pub fn new(
        topology: Arc<Topology>,
        published: watch::Receiver<Arc<Published>>,
        acks: AckTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { topology, published, acks, metrics }
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The resources of `type_url` for `peer`, by name; `None` for a type we do not serve.
    /// `endpoints` is the stream's own copy of its node's endpoints, brought to the published
    /// version here: a publish then costs each stream the containers that changed. With
    /// `only_changed`, the endpoints are those of the clusters that changed since the stream last
    /// took them (Envoy holds the others). `leds`: the stream gets containers as LEDS resources,
    /// always those that changed since last taken and every one of the collections in `asked`
    /// (what Envoy just subscribed to), and assignments that only name their collections.
    fn snapshot(
        &self,
        peer: &Peer,
        type_url: &str,
        endpoints: &mut Option<snapshot::NodeEndpoints>,
        only_changed: bool,
        leds: bool,
        asked: &BTreeSet<String>,
    ) -> Option<TypeSnapshot> {
        let fixed = |resources| TypeSnapshot {
            version: STATIC_VERSION.into(),
            table_version: None,
            resources,
            gone: Vec::new(),
        };
        let count = self.topology.filter_config.container_clusters;
        match type_url {
            LISTENER_TYPE => {
                let listener = snapshot::listener(&self.topology, &peer.id, peer.ingress);
                Some(fixed(vec![(listener.name.clone(), snapshot::any(&listener))]))
            }
            CLUSTER_TYPE => Some(fixed(
                snapshot::clusters(&self.topology, peer.ingress)
                    .iter()
                    .map(|cluster| (cluster.name.clone(), snapshot::any(cluster)))
                    .collect(),
            )),
            ENDPOINT_TYPE if leds => Some(fixed(
                snapshot::leds_assignments(count)
                    .iter()
                    .map(|assignment| (assignment.cluster_name.clone(), snapshot::any(assignment)))
                    .collect(),
            )),
            // LEDS resources exist only on a LEDS stream; otherwise the type falls to "not served".
            ENDPOINT_TYPE | LB_ENDPOINT_TYPE if type_url == ENDPOINT_TYPE || leds => {
                let published = self.published.borrow().clone();
                let kept = match endpoints {
                    Some(kept) if kept.node() == peer.id => kept,
                    _ => endpoints.insert(snapshot::NodeEndpoints::new(&peer.id, count, leds)),
                };
                kept.update(&published.table);
                let (resources, gone) = match (type_url, only_changed) {
                    (LB_ENDPOINT_TYPE, _) => {
                        let changes = kept.lb_endpoints_in(asked);
                        (changes.changed, changes.gone)
                    }
                    (_, true) => (kept.changed_resources(), Vec::new()),
                    (_, false) => (kept.resources(), Vec::new()),
                };
                Some(TypeSnapshot {
                    version: published.version.to_string(),
                    table_version: Some(published.version),
                    resources,
                    gone,
                })
            }
            _ => None,
        }
    }

    /// Counts one response on the wire.
    fn count_push(&self, type_url: &str, variant: &'static str, bytes: usize, resources: usize) {
        let label = PushLabel::of(type_url, variant);
        self.metrics.xds_pushes.get_or_create(&TypeLabel::of(type_url)).inc();
        self.metrics.xds_pushed_bytes.get_or_create(&label).inc_by(bytes as u64);
        self.metrics.xds_pushed_resources.get_or_create(&label).inc_by(resources as u64);
    }
}

/// The resources of one type for one peer.
struct TypeSnapshot {
    /// SotW `version_info`, delta `system_version_info`.
    version: String,
    /// The published table version the endpoints were built from (endpoints only).
    table_version: Option<u64>,
    resources: Vec<(String, Any)>,
    /// Resources gone since the last snapshot of a changed-only one (LEDS containers).
    gone: Vec<String>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (sender, receiver) = mpsc::channel(16);
        let stream = StreamState {
            ads: self.clone(),
            sender,
            peer: None,
            subscriptions: HashMap::new(),
            nonce: 0,
            endpoints: None,
        };
        tokio::spawn(serve(stream, request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (sender, receiver) = mpsc::channel(16);
        let stream = DeltaStream {
            ads: self.clone(),
            sender,
            peer: None,
            types: HashMap::new(),
            nonce: 0,
            endpoints: None,
        };
        tokio::spawn(serve(stream, request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// The peer of a stream from its first request's node: the first request must carry it.
fn first_peer(node: Option<&Node>, default_ingress: SocketAddr) -> Result<Peer, Status> {
    let node = node.ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
    let peer = Peer::from_node(node, default_ingress);
    info!(node = %peer.id, ingress = %peer.ingress, "Envoy connected");
    Ok(peer)
}

/// What both stream variants do with their Envoy: handle its requests, and push when the table is
/// published anew.
trait AdsStream: Send + Sized + 'static {
    type Request: Send;
    const VARIANT: &'static str;
    fn published(&self) -> watch::Receiver<Arc<Published>>;
    fn peer(&self) -> Option<&Peer>;
    /// Handles one request; false when the stream should end.
    fn on_request(&mut self, request: Self::Request) -> impl Future<Output = bool> + Send;
    /// The table changed; false when the stream is gone.
    fn on_published(&mut self) -> impl Future<Output = bool> + Send;
}

/// One stream's life: requests and table changes in arrival order, until either side ends it.
async fn serve<S: AdsStream>(mut stream: S, mut inbound: Streaming<S::Request>)
where
    Streaming<S::Request>: Stream<Item = Result<S::Request, Status>> + Unpin,
{
    let mut published = stream.published();
    loop {
        tokio::select! {
            request = inbound.next() => match request {
                Some(Ok(request)) => {
                    if !stream.on_request(request).await {
                        break;
                    }
                }
                Some(Err(status)) => {
                    debug!(%status, variant = S::VARIANT, "ADS stream ended with an error");
                    break;
                }
                None => break,
            },
            changed = published.changed() => {
                if changed.is_err() || !stream.on_published().await {
                    break;
                }
            }
        }
    }
    if let Some(peer) = stream.peer() {
        info!(node = %peer.id, variant = S::VARIANT, "Envoy disconnected");
    }
}

/// One Envoy's state-of-the-world stream.
struct StreamState {
    ads: Ads,
    sender: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    peer: Option<Peer>,
    subscriptions: HashMap<String, Subscription>,
    nonce: u64,
    /// This node's endpoints as last sent, kept up to date version by version.
    endpoints: Option<snapshot::NodeEndpoints>,
}

impl AdsStream for StreamState {
    type Request = DiscoveryRequest;
    const VARIANT: &'static str = "state of the world";

    fn published(&self) -> watch::Receiver<Arc<Published>> {
        self.ads.published.clone()
    }

    fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        StreamState::on_request(self, request).await
    }

    async fn on_published(&mut self) -> bool {
        self.push(ENDPOINT_TYPE, true).await
    }
}

impl StreamState {
    /// Handles one request; false when the stream should end.
    async fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        if self.peer.is_none() {
            match first_peer(request.node.as_ref(), self.ads.topology.ingress) {
                Ok(peer) => self.peer = Some(peer),
                Err(status) => {
                    let _ = self.sender.send(Err(status)).await;
                    return false;
                }
            }
        }
        let node = self.peer.as_ref().map(|p| p.id.clone()).unwrap_or_default();
        let type_url = request.type_url.clone();
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();

        if !request.response_nonce.is_empty() && request.response_nonce != subscription.nonce {
            // An answer to a response we have since superseded: the newer one is on its way.
            return true;
        }
        if let Some(error) = &request.error_detail {
            // A NACK: keep what Envoy has, say why, and do not push the same thing again in a loop.
            self.ads.metrics.xds_nacks.inc();
            warn!(
                node,
                type_url,
                version = request.version_info,
                error = error.message,
                "Envoy rejected a push"
            );
            subscription.names = request.resource_names;
            return true;
        }
        let names_changed = subscription.names != request.resource_names;
        subscription.names = request.resource_names;
        if !request.response_nonce.is_empty() {
            if type_url == ENDPOINT_TYPE
                && let Ok(version) = request.version_info.parse::<u64>()
            {
                self.ads.acks.record(&node, version);
            }
            debug!(node, type_url, version = request.version_info, "ACK");
            if !names_changed {
                return true;
            }
        }
        self.push(&type_url, false).await
    }

    /// Sends the resources of `type_url` if subscribed: all of them for a request, and for a new
    /// table version (`published`) the endpoints of the clusters that changed, if any. Envoy keeps
    /// the endpoints a state-of-the-world response leaves out (only listeners and clusters must
    /// always be sent whole), so a publish costs what changed. False when the stream is gone.
    async fn push(&mut self, type_url: &str, published: bool) -> bool {
        let Some(peer) = self.peer.clone() else { return true };
        let Some(subscription) = self.subscriptions.get_mut(type_url) else { return true };
        let only_changed = published && type_url == ENDPOINT_TYPE;
        let Some(snapshot) =
            self.ads.snapshot(&peer, type_url, &mut self.endpoints, only_changed, false, &BTreeSet::new())
        else {
            warn!(node = %peer.id, type_url, "unknown resource type requested");
            return true;
        };
        // Listeners and clusters are always sent whole; endpoints by the cluster names asked for.
        let names = &subscription.names;
        let resources: Vec<Any> = snapshot
            .resources
            .into_iter()
            .filter(|(name, _)| type_url != ENDPOINT_TYPE || names.is_empty() || names.contains(name))
            .map(|(_, resource)| resource)
            .collect();
        if published && resources.is_empty() {
            return true;
        }
        self.nonce += 1;
        subscription.nonce = self.nonce.to_string();
        let response = DiscoveryResponse {
            version_info: snapshot.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: subscription.nonce.clone(),
            ..Default::default()
        };
        self.ads.count_push(type_url, "sotw", response.encoded_len(), response.resources.len());
        debug!(node = %peer.id, type_url, version = snapshot.version, "push");
        self.sender.send(Ok(response)).await.is_ok()
    }
}

/// Per delta stream, per type: the subscription and what Envoy holds, and the responses in flight.
#[derive(Debug)]
struct DeltaType {
    state: delta::TypeState,
    /// Responses Envoy has not answered yet, by nonce, with the published table version each one
    /// brings Envoy up to (endpoints only). Envoy answers every delta response, in order.
    in_flight: BTreeMap<u64, Option<u64>>,
    /// Envoy rejected the last answered response: it does not hold what `state` says was sent.
    rejected: bool,
}

impl DeltaType {
    fn new(type_url: &str) -> Self {
        // Listeners and clusters are asked for as a whole; endpoints by cluster name, LEDS
        // containers by their cluster's collection.
        let wildcard_capable = type_url != ENDPOINT_TYPE && type_url != LB_ENDPOINT_TYPE;
        Self { state: delta::TypeState::new(wildcard_capable), in_flight: BTreeMap::new(), rejected: false }
    }
}

/// One Envoy's incremental stream.
struct DeltaStream {
    ads: Ads,
    sender: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    peer: Option<Peer>,
    types: HashMap<String, DeltaType>,
    nonce: u64,
    /// This node's endpoints as last sent, kept up to date version by version.
    endpoints: Option<snapshot::NodeEndpoints>,
}

impl AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    const VARIANT: &'static str = "delta";

    fn published(&self) -> watch::Receiver<Arc<Published>> {
        self.ads.published.clone()
    }

    fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> bool {
        DeltaStream::on_request(self, request).await
    }

    async fn on_published(&mut self) -> bool {
        // With LEDS the assignments never change: the containers are the LEDS resources.
        let type_url = if self.ads.topology.leds { LB_ENDPOINT_TYPE } else { ENDPOINT_TYPE };
        self.push(type_url, true).await
    }
}

impl DeltaStream {
    /// Handles one request: an ACK or NACK of a response, a subscription change, or both; false when
    /// the stream should end.
    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> bool {
        if self.peer.is_none() {
            match first_peer(request.node.as_ref(), self.ads.topology.ingress) {
                Ok(peer) => self.peer = Some(peer),
                Err(status) => {
                    let _ = self.sender.send(Err(status)).await;
                    return false;
                }
            }
        }
        let node = self.peer.as_ref().map(|p| p.id.clone()).unwrap_or_default();
        let type_url = request.type_url.clone();
        let entry = self.types.entry(type_url.clone()).or_insert_with(|| DeltaType::new(&type_url));

        if !request.response_nonce.is_empty() {
            let answered =
                request.response_nonce.parse::<u64>().ok().and_then(|n| entry.in_flight.remove(&n));
            match (answered, &request.error_detail) {
                // A nonce we did not send on this stream (or already saw answered): nothing to settle.
                (None, _) => debug!(node, type_url, nonce = request.response_nonce, "stale nonce"),
                (Some(_), Some(error)) => {
                    // A NACK: Envoy keeps what it had. What it rejected stays recorded as sent, so it
                    // is not pushed again in a loop; only a later change of that resource is.
                    entry.rejected = true;
                    self.ads.metrics.xds_nacks.inc();
                    warn!(
                        node,
                        type_url,
                        nonce = request.response_nonce,
                        error = error.message,
                        "Envoy rejected a push"
                    );
                }
                (Some(table_version), None) => {
                    entry.rejected = false;
                    if let Some(version) = table_version {
                        self.ads.acks.record(&node, version);
                    }
                    debug!(node, type_url, nonce = request.response_nonce, "ACK");
                }
            }
        }
        entry.state.subscribe(
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
            &request.initial_resource_versions,
        );
        self.push(&type_url, false).await
    }

    /// Sends what changed of `type_url` since this stream last sent it, if anything; false when the
    /// stream is gone. `published` (a new table version, not a request) compares only the endpoints
    /// of the clusters whose members changed: the cost of a publish is that of its changes.
    async fn push(&mut self, type_url: &str, published: bool) -> bool {
        let Some(peer) = self.peer.clone() else { return true };
        let Some(entry) = self.types.get_mut(type_url) else { return true };
        let leds = self.ads.topology.leds;
        // LEDS containers are always taken as changes (and what was just asked for): a request
        // for one collection of a thousand must not cost every container.
        let partial = type_url == LB_ENDPOINT_TYPE;
        let only_changed = published && type_url == ENDPOINT_TYPE;
        let asked = entry.state.asked();
        let Some(snapshot) =
            self.ads.snapshot(&peer, type_url, &mut self.endpoints, only_changed, leds, asked)
        else {
            warn!(node = %peer.id, type_url, "unknown resource type requested");
            return true;
        };
        let current = delta::resources(snapshot.resources);
        let changes = if only_changed || partial {
            entry.state.delta_of(&current, &snapshot.gone)
        } else {
            entry.state.delta(&current)
        };
        if changes.is_empty() {
            // A new table version that changed nothing for this node: Envoy already has everything
            // of it once it holds what was last sent, so a cold start waiting for it must not wait
            // for a push that never comes.
            if let Some(version) = snapshot.table_version
                && entry.state.is_subscribed()
                && !entry.rejected
            {
                match entry.in_flight.values_mut().next_back() {
                    Some(Some(pending)) => *pending = (*pending).max(version),
                    _ => self.ads.acks.record(&peer.id, version),
                }
            }
            return true;
        }
        self.nonce += 1;
        entry.in_flight.insert(self.nonce, snapshot.table_version);
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.version.clone(),
            resources: changes
                .send
                .into_iter()
                .map(|(name, resource)| Resource {
                    name,
                    version: resource.version,
                    resource: Some(resource.body),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_owned(),
            removed_resources: changes.removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.ads.count_push(type_url, "delta", response.encoded_len(), response.resources.len());
        debug!(
            node = %peer.id,
            type_url,
            version = snapshot.version,
            changed = response.resources.len(),
            removed = response.removed_resources.len(),
            "delta push"
        );
        self.sender.send(Ok(response)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whisk_contract::clusters;

    #[tokio::test]
    async fn ack_waiters_wake_on_the_version_they_need_and_time_out_otherwise() {
        let acks = AckTracker::default();
        acks.record("envoy-1", 3);
        assert!(acks.wait_for("envoy-1", 2, Duration::from_millis(10)).await);
        assert!(!acks.wait_for("envoy-1", 4, Duration::from_millis(10)).await);
        assert!(!acks.wait_for("envoy-2", 1, Duration::from_millis(10)).await);
        let waiter = {
            let acks = acks.clone();
            tokio::spawn(async move { acks.wait_for("envoy-1", 5, Duration::from_secs(5)).await })
        };
        acks.record("envoy-1", 5);
        assert!(waiter.await.unwrap());
        // Versions never go backwards: a late ACK of an older version is ignored.
        acks.record("envoy-1", 1);
        assert!(acks.wait_for("envoy-1", 5, Duration::from_millis(10)).await);
    }

    /// A delta stream of node `envoy-1` driven by hand: requests in, responses out, table changes
    /// published by the test.
    struct DeltaHarness {
        stream: DeltaStream,
        responses: mpsc::Receiver<Result<DeltaDiscoveryResponse, Status>>,
        published: watch::Sender<Arc<Published>>,
        acks: AckTracker,
        metrics: Arc<Metrics>,
    }

    impl DeltaHarness {
        fn new() -> Self {
            Self::with(Topology::test())
        }

        fn with(topology: Topology) -> Self {
            let published = watch::channel(Arc::new(Published::default())).0;
            let acks = AckTracker::default();
            let metrics = Arc::new(Metrics::default());
            let ads = Ads::new(Arc::new(topology), published.subscribe(), acks.clone(), metrics.clone());
            let (sender, responses) = mpsc::channel(16);
            let stream =
                DeltaStream { ads, sender, peer: None, types: HashMap::new(), nonce: 0, endpoints: None };
            Self { stream, responses, published, acks, metrics }
        }

        async fn send(&mut self, request: DeltaDiscoveryRequest) -> Option<DeltaDiscoveryResponse> {
            assert!(self.stream.on_request(request).await);
            self.next()
        }

        fn next(&mut self) -> Option<DeltaDiscoveryResponse> {
            self.responses.try_recv().ok().map(|response| response.unwrap())
        }

        /// Publishes `table` as `version` and lets the stream react as its select loop would.
        async fn publish(&mut self, version: u64, table: Table) -> Option<DeltaDiscoveryResponse> {
            self.published.send_replace(Arc::new(Published { version, table }));
            assert!(self.stream.on_published().await);
            self.next()
        }

        async fn acked(&self, version: u64) -> bool {
            self.acks.wait_for("envoy-1", version, Duration::from_millis(5)).await
        }
    }

    fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(Node { id: "envoy-1".into(), ..Default::default() }),
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
        let error = envoy_types::pb::google::rpc::Status { message: "bad".into(), ..Default::default() };
        DeltaDiscoveryRequest { error_detail: Some(error), ..ack(type_url, nonce) }
    }

    fn one_container(node: &str, address: &str) -> Table {
        Table::test().with_ready("a", "hello", node, address)
    }

    #[tokio::test]
    async fn with_leds_a_container_change_pushes_that_container_alone() {
        let mut topology = Topology::test();
        topology.filter_config.container_clusters = 2;
        topology.leds = true;
        let mut envoy = DeltaHarness::with(topology);
        let names = clusters::all_containers(2);
        let subscribed: Vec<&str> = names.iter().map(String::as_str).collect();
        let assignments = envoy.send(subscribe(ENDPOINT_TYPE, &subscribed)).await.unwrap();
        assert_eq!(assignments.resources.len(), 2);
        assert!(envoy.send(ack(ENDPOINT_TYPE, &assignments.nonce)).await.is_none());

        // Envoy asks for both collections, both empty: each is answered with its removal.
        let globs: Vec<String> = names.iter().map(|name| snapshot::leds_collection(name)).collect();
        let globs: Vec<&str> = globs.iter().map(String::as_str).collect();
        let empty = envoy.send(subscribe(LB_ENDPOINT_TYPE, &globs)).await.unwrap();
        assert!(empty.resources.is_empty());
        assert_eq!(empty.removed_resources, globs);
        assert!(envoy.send(ack(LB_ENDPOINT_TYPE, &empty.nonce)).await.is_none());

        // A cold start pushes its container alone, in its cluster's collection; the ACK
        // acknowledges the published version.
        let address = "127.0.0.1:4001";
        let change = envoy.publish(1, one_container("envoy-1", address)).await.unwrap();
        assert_eq!((change.type_url.as_str(), change.resources.len()), (LB_ENDPOINT_TYPE, 1));
        let home = snapshot::leds_collection(&clusters::containers_of(address, 2));
        assert_eq!(delta::glob_of(&change.resources[0].name), Some(home));
        assert!(!envoy.acked(1).await);
        assert!(envoy.send(ack(LB_ENDPOINT_TYPE, &change.nonce)).await.is_none());
        assert!(envoy.acked(1).await);

        // Its retirement removes it by name, and nothing else is sent.
        let gone = envoy.publish(2, Table::test()).await.unwrap();
        assert!(gone.resources.is_empty());
        assert_eq!(gone.removed_resources, [change.resources[0].name.clone()]);
        assert!(envoy.next().is_none());
    }

    #[tokio::test]
    async fn delta_pushes_only_changes_and_endpoint_acks_feed_the_tracker() {
        let mut envoy = DeltaHarness::new();
        let clusters = envoy.send(subscribe(CLUSTER_TYPE, &[])).await.unwrap();
        assert_eq!(clusters.resources.len(), 4, "an empty first subscription is a wildcard");
        assert!(envoy.send(ack(CLUSTER_TYPE, &clusters.nonce)).await.is_none(), "an ACK asks for nothing");

        let endpoints = envoy.send(subscribe(ENDPOINT_TYPE, &[clusters::CONTAINERS])).await.unwrap();
        assert_eq!(endpoints.resources[0].name, clusters::CONTAINERS);
        assert!(envoy.send(ack(ENDPOINT_TYPE, &endpoints.nonce)).await.is_none());

        // A change for this node is pushed alone, and its ACK acknowledges the published version.
        let change = envoy.publish(1, one_container("envoy-1", "127.0.0.1:4001")).await.unwrap();
        assert_eq!((change.type_url.as_str(), change.resources.len()), (ENDPOINT_TYPE, 1));
        assert_eq!(change.system_version_info, "1");
        assert!(!envoy.acked(1).await, "not before Envoy ACKs");
        assert!(envoy.send(ack(ENDPOINT_TYPE, &change.nonce)).await.is_none());
        assert!(envoy.acked(1).await);

        // A version that changes nothing here sends nothing and is acknowledged at once.
        let mut elsewhere = one_container("envoy-1", "127.0.0.1:4001");
        elsewhere = elsewhere.with_ready("b", "hello", "envoy-2", "127.0.0.1:4002");
        assert!(envoy.publish(2, elsewhere.clone()).await.is_none());
        assert!(envoy.acked(2).await);

        // ...unless a push is still in flight: then the ACK of that push covers the new version too.
        let pending = envoy.publish(3, Table::test()).await.unwrap();
        assert!(envoy.publish(4, Table::test().with_ready("b", "hello", "envoy-2", "x")).await.is_none());
        assert!(!envoy.acked(3).await);
        assert!(envoy.send(ack(ENDPOINT_TYPE, &pending.nonce)).await.is_none());
        assert!(envoy.acked(4).await);

        let page =
            envoy.metrics.xds_pushed_resources.get_or_create(&PushLabel::of(ENDPOINT_TYPE, "delta")).get();
        assert_eq!(page, 3);
    }

    #[tokio::test]
    async fn a_nacked_delta_push_is_counted_once_and_not_sent_again() {
        let mut envoy = DeltaHarness::new();
        let listener = envoy.send(subscribe(LISTENER_TYPE, &[])).await.unwrap();
        assert!(envoy.send(nack(LISTENER_TYPE, &listener.nonce)).await.is_none(), "no push loop");
        assert_eq!(envoy.metrics.xds_nacks.get(), 1);
        // An answer to a nonce this stream never sent (or already settled) is ignored.
        assert!(envoy.send(nack(LISTENER_TYPE, &listener.nonce)).await.is_none());
        assert!(envoy.send(nack(LISTENER_TYPE, "99")).await.is_none());
        assert_eq!(envoy.metrics.xds_nacks.get(), 1);

        // A rejected endpoints push is not acknowledged, also not by a later version without change.
        let endpoints = envoy.send(subscribe(ENDPOINT_TYPE, &[clusters::CONTAINERS])).await.unwrap();
        let change = envoy.publish(1, one_container("envoy-1", "127.0.0.1:4001")).await.unwrap();
        assert!(envoy.send(ack(ENDPOINT_TYPE, &endpoints.nonce)).await.is_none());
        assert!(envoy.send(nack(ENDPOINT_TYPE, &change.nonce)).await.is_none());
        assert!(envoy.publish(2, one_container("envoy-1", "127.0.0.1:4001")).await.is_none());
        assert!(!envoy.acked(1).await);
        // A later change is pushed, and its ACK settles everything.
        let fixed = envoy.publish(3, one_container("envoy-1", "127.0.0.1:4009")).await.unwrap();
        assert!(envoy.send(ack(ENDPOINT_TYPE, &fixed.nonce)).await.is_none());
        assert!(envoy.acked(3).await);
    }

    #[tokio::test]
    async fn a_reconnecting_envoy_is_sent_only_what_it_does_not_hold() {
        // What a first server sent...
        let mut before = DeltaHarness::new();
        let clusters = before.send(subscribe(CLUSTER_TYPE, &[])).await.unwrap();
        let endpoints = before.send(subscribe(ENDPOINT_TYPE, &[clusters::CONTAINERS])).await.unwrap();
        let held = |response: &DeltaDiscoveryResponse| -> HashMap<String, String> {
            response.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect()
        };

        // ...a second one (same topology) does not send again; the endpoints are acknowledged at once.
        let mut after = DeltaHarness::new();
        after.published.send_replace(Arc::new(Published { version: 7, table: Table::test() }));
        let reconnect = |type_url: &str, names: &[&str], held| DeltaDiscoveryRequest {
            initial_resource_versions: held,
            ..subscribe(type_url, names)
        };
        assert!(after.send(reconnect(CLUSTER_TYPE, &[], held(&clusters))).await.is_none());
        assert!(
            after.send(reconnect(ENDPOINT_TYPE, &[clusters::CONTAINERS], held(&endpoints))).await.is_none()
        );
        assert!(after.acked(7).await);

        // A first request without the node ends the stream.
        let mut anonymous = DeltaHarness::new();
        assert!(!anonymous.stream.on_request(ack(CLUSTER_TYPE, "")).await);
        assert!(anonymous.responses.try_recv().unwrap().is_err());
    }

    /// Spread over 64 containers clusters (decision 0009), a change of one container among 1,000
    /// changes one assignment: delta re-sends about 1/64 of the pool.
    #[test]
    fn with_many_containers_clusters_one_change_changes_one_assignment() {
        let mut table = Table::test();
        for i in 0..1_000u32 {
            let address = format!("10.0.{}.{}:8080", i / 250, i % 250);
            table = table.with_ready(&format!("c{i}"), "hello", "envoy-1", &address);
        }
        let versions = |table: &Table| -> Vec<(String, String, usize)> {
            snapshot::endpoints(table, "envoy-1", 64)
                .iter()
                .map(|a| {
                    let body = snapshot::any(a);
                    (a.cluster_name.clone(), delta::version_of(&body), body.encoded_len())
                })
                .collect()
        };
        let before = versions(&table);
        assert_eq!(before.len(), 64);
        let table = table.with_ready("new", "hello", "envoy-1", "10.0.9.9:8080");
        let after = versions(&table);
        let changed: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b.1 != a.1).map(|(_, a)| a).collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].0, whisk_contract::clusters::containers_of("10.0.9.9:8080", 64));
        assert!(changed[0].2 < 1_000, "{} bytes re-sent", changed[0].2);
    }

    /// The honest limit of decision 0008 with one containers cluster: it is one resource, so a
    /// delta push of one container change re-sends the node's whole assignment, as state of the
    /// world does.
    #[test]
    fn one_endpoints_push_with_a_thousand_containers_is_about_twenty_three_kilobytes() {
        let mut table = Table::test();
        for i in 0..1_000u32 {
            let address = format!("10.0.{}.{}:8080", i / 250, i % 250);
            table = table.with_ready(&format!("c{i}"), "hello", "envoy-1", &address);
        }
        let assignment = snapshot::endpoints(&table, "envoy-1", 1).remove(0);
        let body = snapshot::any(&assignment);
        let sotw = DiscoveryResponse {
            version_info: "1000".into(),
            resources: vec![body.clone()],
            type_url: ENDPOINT_TYPE.into(),
            nonce: "1000".into(),
            ..Default::default()
        };
        let delta = DeltaDiscoveryResponse {
            system_version_info: "1000".into(),
            resources: vec![Resource {
                name: assignment.cluster_name.clone(),
                version: delta::version_of(&body),
                resource: Some(body),
                ..Default::default()
            }],
            type_url: ENDPOINT_TYPE.into(),
            nonce: "1000".into(),
            ..Default::default()
        };
        let (sotw, delta) = (sotw.encoded_len(), delta.encoded_len());
        assert!((20_000..26_000).contains(&delta), "{delta} bytes");
        assert!(delta.abs_diff(sotw) < 100, "delta {delta}, sotw {sotw}: the same assignment either way");
    }
}
