//! The Aggregated Discovery Service, state-of-the-world variant: one gRPC stream per Envoy carrying
//! listeners, clusters and endpoints. This module knows only the stream protocol (versions, nonces,
//! ACK and NACK); what to send comes from [`Published`] snapshots and the [`snapshot`] builders.
//!
//! ```text
//!  Envoy ──DiscoveryRequest(type, names, nonce, version|error)──► stream task ──► AckTracker
//!  Envoy ◄─DiscoveryResponse(type, version, nonce, resources)──── stream task ◄── watch<Published>
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
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

use crate::metrics::Metrics;
use crate::snapshot::{self, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, Topology};
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
    digest: Vec<u8>,
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

    /// The resources of `type_url` for `peer`, with their version.
    fn resources(&self, peer: &Peer, type_url: &str, names: &[String]) -> Option<(String, Vec<Any>)> {
        match type_url {
            LISTENER_TYPE => Some((
                STATIC_VERSION.into(),
                vec![snapshot::any(&snapshot::listener(&self.topology, &peer.id, peer.ingress))],
            )),
            CLUSTER_TYPE => Some((
                STATIC_VERSION.into(),
                snapshot::clusters(&self.topology, peer.ingress).iter().map(snapshot::any).collect(),
            )),
            ENDPOINT_TYPE => {
                let published = self.published.borrow().clone();
                let assignment = snapshot::endpoints(&published.table, &peer.id);
                let wanted = names.is_empty() || names.contains(&assignment.cluster_name);
                let resources = if wanted { vec![snapshot::any(&assignment)] } else { vec![] };
                Some((published.version.to_string(), resources))
            }
            _ => None,
        }
    }
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
        let stream =
            StreamState { ads: self.clone(), sender, peer: None, subscriptions: HashMap::new(), nonce: 0 };
        tokio::spawn(stream.serve(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("this server speaks state-of-the-world ADS; set api_type: GRPC"))
    }
}

/// One Envoy's stream.
struct StreamState {
    ads: Ads,
    sender: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    peer: Option<Peer>,
    subscriptions: HashMap<String, Subscription>,
    nonce: u64,
}

impl StreamState {
    async fn serve(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut published = self.ads.published.clone();
        loop {
            tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        if !self.on_request(request).await {
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        debug!(%status, "ADS stream ended with an error");
                        break;
                    }
                    None => break,
                },
                changed = published.changed() => {
                    if changed.is_err() || !self.push(ENDPOINT_TYPE, false).await {
                        break;
                    }
                }
            }
        }
        if let Some(peer) = &self.peer {
            info!(node = %peer.id, "Envoy disconnected");
        }
    }

    /// Handles one request; false when the stream should end.
    async fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        if self.peer.is_none() {
            let Some(node) = &request.node else {
                let _ = self
                    .sender
                    .send(Err(Status::invalid_argument("the first request must carry the node")))
                    .await;
                return false;
            };
            let peer = Peer::from_node(node, self.ads.topology.ingress);
            info!(node = %peer.id, ingress = %peer.ingress, "Envoy connected");
            self.peer = Some(peer);
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
        self.push(&type_url, true).await
    }

    /// Sends the current resources of `type_url` if subscribed and changed (or `force`); false when
    /// the stream is gone.
    async fn push(&mut self, type_url: &str, force: bool) -> bool {
        let Some(peer) = self.peer.clone() else { return true };
        let Some(subscription) = self.subscriptions.get_mut(type_url) else { return true };
        let Some((version, resources)) = self.ads.resources(&peer, type_url, &subscription.names) else {
            warn!(node = %peer.id, type_url, "unknown resource type requested");
            return true;
        };
        let digest: Vec<u8> = resources.iter().flat_map(|r| r.encode_to_vec()).collect();
        if !force && digest == subscription.digest {
            return true;
        }
        self.nonce += 1;
        subscription.nonce = self.nonce.to_string();
        subscription.digest = digest;
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: subscription.nonce.clone(),
            ..Default::default()
        };
        self.ads.metrics.xds_pushes.get_or_create(&crate::metrics::TypeLabel::of(type_url)).inc();
        debug!(node = %peer.id, type_url, version, "push");
        self.sender.send(Ok(response)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
