//! The Kubernetes cluster manager: one Pod per container in the actions namespace, through the real
//! API server (kube-rs). It only translates: what the pod looks like, how its identity is labelled
//! and what its status means live in [`super::pod`].
//!
//! ```text
//!  start ─► POST pods ─► watch pod (list, then watch from its resourceVersion) ─► Running+Ready
//!        ─► "<podIP>:8080"            409 → PodExists · ImagePullBackOff/Failed → PodFailed · timeout
//!  stop  ─► DELETE pod (short grace; 404 = already gone)
//!  stop_all ─► list pods labelled managed-by=whisk-xds-server ─► DELETE each
//!  adopt    ─► list them ─► Ready with a readable identity: adopted · anything else: DELETE
//!  watch_machines ─► reflector over every node ─► machines(): allocatable memory per node
//! ```
//!
//! A started or adopted pod reports the node the scheduler gave it, so that the collector's view of
//! nodes (which to drain, how fragmented the pool is) is the cluster's, not a guess.
//!
//! Waiting uses kube-runtime's watcher, never polling: it re-lists by itself after a `410 Gone`
//! (the resourceVersion it watched from was compacted) and reconnects after a dropped stream; this
//! module only backs off between errors so that a persistent one (e.g. RBAC refusing the watch)
//! does not spin, and reports the last thing it saw when the start times out.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::pod::{self, PodConfig, Readiness, RuntimeImage, RuntimeImages};
use super::{Adopted, ClusterError, ClusterManager, ContainerSpec, StartedContainer};

/// First and longest pause between two watch errors.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(10);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(1);

/// A kind of request this cluster manager makes of the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// The resource, in the core API group.
    pub resource: &'static str,
    /// In the actions namespace (`true`) or cluster-wide.
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
}

/// Everything this cluster manager asks of the API server. `deploy/`'s RBAC grants exactly this
/// (`tests/manifests.rs`), and every request in this module's API server scenarios must be one of
/// these. `get` is granted with the read verbs (the least-privilege set of docs/kubernetes.md:
/// create, delete, get, list, watch, patch) though the code only lists and watches.
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        resource: "pods",
        namespaced: true,
        verbs: &["create", "delete", "get", "list", "watch", "patch"],
    },
    ApiCall { resource: "nodes", namespaced: false, verbs: &["get", "list", "watch"] },
];

/// Where `--help` lists these flags (set per flag: a struct-level heading would leak onto the
/// flags that follow the flattened struct).
const HEADING: &str = "Kubernetes cluster manager";

/// Flags of the Kubernetes cluster manager (used with `--cluster-manager kubernetes`).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Namespace the action pods run in.
    #[arg(long, help_heading = HEADING, env = "WHISK_ACTIONS_NAMESPACE", default_value = "whisk-actions")]
    pub actions_namespace: String,
    /// Image of an action kind, as `kind=image`; an entry for a family (`nodejs`) serves every
    /// version (`nodejs:20`) without its own entry. Repeat the flag; commas separate entries in
    /// the variable.
    #[arg(long = "runtime-image", help_heading = HEADING, env = "WHISK_RUNTIME_IMAGES", value_delimiter = ',')]
    pub runtime_images: Vec<RuntimeImage>,
    /// How long a pod may take to become ready (scheduling, image pull, start), in milliseconds.
    #[arg(long, help_heading = HEADING, env = "WHISK_POD_START_TIMEOUT_MS", default_value_t = 60_000)]
    pub pod_start_timeout_ms: u64,
    /// Grace period of a stopped action pod, in seconds (the runtime holds no state worth saving).
    #[arg(long, help_heading = HEADING, env = "WHISK_POD_GRACE_SECONDS", default_value_t = 1)]
    pub pod_grace_seconds: u32,
    /// Scheduler of the action pods, e.g. a profile that scores nodes MostAllocated; the cluster's
    /// default scheduler when unset.
    #[arg(long, help_heading = HEADING, env = "WHISK_ACTION_SCHEDULER")]
    pub action_scheduler: Option<String>,
}

/// Why the Kubernetes cluster manager cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error("no --runtime-image given: the Kubernetes cluster manager needs at least one kind=image")]
    NoImages,
    #[error("no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or in-cluster)")]
    Client(#[source] kube::Error),
}

impl KubeArgs {
    /// The pod settings these flags describe, for the pods of control server `owner`.
    pub fn pod_config(&self, owner: &str) -> Result<PodConfig, KubeSetupError> {
        let images = RuntimeImages::new(self.runtime_images.iter().cloned());
        if images.is_empty() {
            return Err(KubeSetupError::NoImages);
        }
        Ok(PodConfig {
            namespace: self.actions_namespace.clone(),
            images,
            grace_period_seconds: self.pod_grace_seconds,
            scheduler_name: self.action_scheduler.clone(),
            owner: owner.to_owned(),
        })
    }
}

/// Action containers as pods.
pub struct KubeCluster {
    pods: Api<Pod>,
    nodes: Api<Node>,
    /// The nodes as last seen, kept by [`ClusterManager::watch_machines`].
    machines: Store<Node>,
    /// Taken by the one `watch_machines` that fills `machines`.
    machines_writer: std::sync::Mutex<Option<reflector::store::Writer<Node>>>,
    config: PodConfig,
    start_timeout: Duration,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("namespace", &self.config.namespace)
            .field("start_timeout", &self.start_timeout)
            .finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// Connects with the ambient configuration: `KUBECONFIG` or `~/.kube/config`, else the pod's
    /// service account when running in a cluster.
    pub async fn connect(args: &KubeArgs, owner: &str) -> Result<Self, KubeSetupError> {
        let config = args.pod_config(owner)?;
        let client = kube::Client::try_default().await.map_err(KubeSetupError::Client)?;
        info!(namespace = %config.namespace, "Kubernetes cluster manager");
        Ok(Self::new(client, config, Duration::from_millis(args.pod_start_timeout_ms)))
    }

    pub fn new(client: kube::Client, config: PodConfig, start_timeout: Duration) -> Self {
        let (machines, writer) = reflector::store();
        Self {
            pods: Api::namespaced(client.clone(), &config.namespace),
            nodes: Api::all(client),
            machines,
            machines_writer: std::sync::Mutex::new(Some(writer)),
            config,
            start_timeout,
        }
    }

    fn delete_params(&self) -> DeleteParams {
        DeleteParams {
            grace_period_seconds: Some(self.config.grace_period_seconds),
            ..DeleteParams::default()
        }
    }

    /// Deletes pod `name`; one that is already gone counts as deleted.
    async fn delete(&self, name: &str) -> Result<(), ClusterError> {
        match self.pods.delete(name, &self.delete_params()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                debug!(pod = name, "pod already gone");
                Ok(())
            }
            Err(source) => Err(ClusterError::Kube {
                operation: "delete",
                pod: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Follows pod `name` until it is ready, fails, vanishes or the start timeout passes: its IP and
    /// its node.
    async fn wait_ready(
        &self,
        id: &str,
        name: &str,
    ) -> Result<(std::net::IpAddr, Option<String>), ClusterError> {
        let deadline = Instant::now() + self.start_timeout;
        let mut events = pin!(watcher::watch_object(self.pods.clone(), name));
        let mut last = "nothing yet".to_owned();
        let mut pause = WATCH_RETRY_MIN;
        let failed =
            |reason: String| ClusterError::PodFailed { id: id.to_owned(), pod: name.to_owned(), reason };
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(event)) => event,
                // The watcher's stream never ends; be safe anyway.
                Ok(None) => return Err(failed("the watch ended".into())),
                Err(_) => {
                    return Err(ClusterError::PodTimeout {
                        id: id.to_owned(),
                        pod: name.to_owned(),
                        timeout: self.start_timeout,
                        last,
                    });
                }
            };
            match event {
                Ok(Some(pod)) => {
                    pause = WATCH_RETRY_MIN;
                    match pod::readiness(&pod) {
                        Readiness::Ready(ip) => return Ok((ip, pod::host(&pod))),
                        Readiness::Failed(reason) => return Err(failed(reason)),
                        Readiness::Waiting(what) => {
                            debug!(pod = name, state = %what, "pod not ready yet");
                            last = what;
                        }
                    }
                }
                Ok(None) => return Err(failed("the pod was deleted while starting".into())),
                Err(error) => {
                    // The watcher re-lists after 410 Gone and reconnects otherwise on the next poll.
                    debug!(pod = name, %error, "pod watch error; the watcher recovers");
                    last = format!("watch error: {error}");
                    tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
                    pause = (pause * 2).min(WATCH_RETRY_MAX);
                }
            }
        }
    }
}

impl ClusterManager for KubeCluster {
    /// Creates the pod and waits for it to be Running and Ready. A failed start leaves the pod for
    /// the caller's `stop` (the control plane discards a failed container by id).
    async fn start(&self, spec: &ContainerSpec) -> Result<StartedContainer, ClusterError> {
        // A placement over nodes this server has not seen (before the first node listing, the
        // configured pool stands for one made-up machine) is no hint at all.
        let seen = |node: &str| self.machines.get(&reflector::ObjectRef::new(node)).is_some();
        let pod = if spec.placed_on.as_deref().is_some_and(|node| !seen(node)) {
            pod::pod_for(&ContainerSpec { placed_on: None, ..spec.clone() }, &self.config)?
        } else {
            pod::pod_for(spec, &self.config)?
        };
        let name = pod::pod_name(&spec.id);
        match self.pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            // Pod names come from container ids, which are fresh for every start: a taken name is
            // a start retried after its create went through. Not adopting it keeps one container
            // per reservation; the caller discards this one.
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
                return Err(ClusterError::PodExists { id: spec.id.clone(), pod: name });
            }
            Err(source) => {
                return Err(ClusterError::Kube { operation: "create", pod: name, source: Box::new(source) });
            }
        }
        let (ip, host) = self.wait_ready(&spec.id, &name).await?;
        let address = SocketAddr::new(ip, pod::RUNTIME_PORT).to_string();
        info!(container = %spec.id, action = %spec.action, pod = %name, %address, node = ?host, "pod ready");
        Ok(StartedContainer { address, host })
    }

    async fn stop(&self, id: &str) -> Result<(), ClusterError> {
        let name = pod::pod_name(id);
        self.delete(&name).await?;
        info!(container = id, pod = %name, "pod deleted");
        Ok(())
    }

    /// Lists the pods this server manages and deletes each (the Role grants no `deletecollection`).
    async fn stop_all(&self) {
        let selector = self.config.selector();
        let pods = match self.pods.list_metadata(&ListParams::default().labels(&selector)).await {
            Ok(pods) => pods,
            Err(error) => {
                warn!(%error, "could not list the action pods to delete them");
                return;
            }
        };
        let names: Vec<String> = pods.items.into_iter().filter_map(|pod| pod.metadata.name).collect();
        let count = names.len();
        futures::future::join_all(names.iter().map(|name| async move {
            if let Err(error) = self.delete(name).await {
                warn!(%error, "could not delete an action pod");
            }
        }))
        .await;
        info!(count, "all action pods deleted");
    }

    /// Watches every pod this server manages (kube-runtime's watcher: it re-lists after a `410 Gone`
    /// and reconnects by itself) and reports the failed and the deleted ones.
    async fn watch_lost(&self, lost: tokio::sync::mpsc::UnboundedSender<String>) {
        let selector = self.config.selector();
        let mut events =
            pin!(watcher::watcher(self.pods.clone(), watcher::Config::default().labels(&selector)));
        let mut pause = WATCH_RETRY_MIN;
        while let Some(event) = events.next().await {
            let found = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    pod::lost_container(&pod, false).map(|id| (id, pod))
                }
                Ok(watcher::Event::Delete(pod)) => pod::lost_container(&pod, true).map(|id| (id, pod)),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(error) => {
                    debug!(%error, "pod watch error; the watcher recovers");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WATCH_RETRY_MAX);
                    continue;
                }
            };
            pause = WATCH_RETRY_MIN;
            if let Some((id, pod)) = found {
                debug!(container = %id, pod = ?pod.metadata.name, "pod lost");
                if lost.send(id).is_err() {
                    return;
                }
            }
        }
    }

    /// Rewrites the pod's identity labels and annotations for the action it now serves.
    async fn relabel(&self, spec: &ContainerSpec) -> Result<(), ClusterError> {
        let name = pod::pod_name(&spec.id);
        let patch = serde_json::json!({"metadata": {
            "labels": pod::labels(spec),
            "annotations": pod::annotations(spec),
        }});
        self.pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|error| ClusterError::Relabel { id: spec.id.clone(), reason: error.to_string() })
    }

    /// Every node that reads as a machine; `None` until the first listing of nodes is in (the
    /// control plane then uses its configured pool).
    fn machines(&self) -> Option<Vec<crate::placement::Node>> {
        let nodes = self.machines.state();
        if nodes.is_empty() {
            return None;
        }
        Some(nodes.iter().filter_map(|node| pod::machine(node).ok()).collect())
    }

    /// Mirrors every node into `machines` (kube-runtime's reflector: it re-lists after a `410 Gone`
    /// and backs off between errors by itself). Nodes that cannot be read are logged once per change.
    async fn watch_machines(&self) {
        let writer = self.machines_writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(writer) = writer else { return std::future::pending::<()>().await };
        let events = watcher::watcher(self.nodes.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let mut events = pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(node) => match pod::machine(&node) {
                    Ok(machine) => debug!(node = %machine.name, memory_mb = machine.capacity_mb, "node seen"),
                    Err(error) => warn!(%error, "a node placement cannot use"),
                },
                Err(error) => debug!(%error, "node watch error; the watcher recovers"),
            }
        }
    }

    /// Lists the pods this server manages: a Ready pod whose identity reads back is adopted; a pod
    /// still starting (its cold start died with the previous server), failed or unreadable is
    /// deleted, since nothing would ever route to it.
    async fn adopt(&self) -> Result<Vec<Adopted>, ClusterError> {
        let selector = self.config.selector();
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|error| ClusterError::Discovery(error.to_string()))?;
        let mut adopted = Vec::new();
        for found in pods.items {
            let name = found.metadata.name.clone().unwrap_or_default();
            let identity = pod::spec_from_meta(&found.metadata);
            match (identity, pod::readiness(&found)) {
                (Ok(spec), Readiness::Ready(ip)) => {
                    let address = SocketAddr::new(ip, pod::RUNTIME_PORT).to_string();
                    let host = pod::host(&found);
                    info!(container = %spec.id, action = %spec.action, pod = %name, %address, node = ?host, "pod adopted");
                    adopted.push(Adopted { spec, address, host });
                }
                (identity, readiness) => {
                    warn!(pod = %name, identity = ?identity.err(), ?readiness, "deleting a pod that cannot be adopted");
                    if let Err(error) = self.delete(&name).await {
                        warn!(%error, "could not delete a pod left by a previous run");
                    }
                }
            }
        }
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    //! The API server is a `tower_test` mock: each scenario states the requests it expects, in
    //! order, and what the server answers.

    use std::collections::BTreeMap;

    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle, SendResponse};

    use super::*;
    use crate::cluster::pod::fixtures::{self, spec};

    const PODS: &str = "/api/v1/namespaces/whisk-actions/pods";

    /// One request as the API server received it.
    #[derive(Debug)]
    struct Received {
        method: Method,
        path: String,
        query: BTreeMap<String, String>,
        body: Value,
    }

    /// The mock API server's side of the pair.
    struct ApiServer {
        handle: Handle<Request<Body>, Response<Body>>,
    }

    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                byte => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn status(code: u16, reason: &str, message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
    }

    impl ApiServer {
        /// The next request, which must come within five seconds.
        async fn receive(&mut self) -> (Received, SendResponse<Response<Body>>) {
            let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request());
            let (request, send) =
                next.await.expect("the client sent no request in time").expect("the client hung up");
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let received = Received { method, path, query, body };
            assert!(is_an_api_call(&received), "not in API_CALLS (so not granted by deploy/): {received:?}");
            (received, send)
        }

        async fn expect(&mut self, method: Method, path: &str) -> (Received, SendResponse<Response<Body>>) {
            let (received, send) = self.receive().await;
            assert_eq!((&received.method, received.path.as_str()), (&method, path), "{received:?}");
            (received, send)
        }

        fn reply(send: SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
            let response =
                Response::builder().status(code).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap();
            send.send_response(response);
        }

        /// `POST pods`: answers 201 with the pod as sent (Pending, no status) and returns it.
        async fn pod_is_created(&mut self) -> Pod {
            let (received, send) = self.expect(Method::POST, PODS).await;
            let mut pod: Pod = serde_json::from_value(received.body.clone()).unwrap();
            pod.metadata.resource_version = Some("1".into());
            Self::reply(send, StatusCode::CREATED, &serde_json::to_value(&pod).unwrap());
            pod
        }

        /// The watcher's initial `GET pods?fieldSelector=metadata.name=<pod>`, answered with `pod`.
        async fn list_shows(&mut self, pod: &Pod, list_version: &str) {
            let (received, send) = self.expect(Method::GET, PODS).await;
            let name = pod.metadata.name.clone().unwrap();
            assert_eq!(received.query.get("fieldSelector"), Some(&format!("metadata.name={name}")));
            assert_eq!(received.query.get("watch"), None, "a list, not a watch: {received:?}");
            let list = json!({"apiVersion": "v1", "kind": "PodList",
                              "metadata": {"resourceVersion": list_version}, "items": [pod]});
            Self::reply(send, StatusCode::OK, &list);
        }

        /// The watcher's `GET pods?watch=true&resourceVersion=<from>`; streams `events` and returns
        /// the response handle when `events` is `None` (the watch stays open, silent).
        async fn watch_from(
            &mut self,
            from: &str,
            events: Option<Vec<Value>>,
        ) -> Option<SendResponse<Response<Body>>> {
            let (received, send) = self.expect(Method::GET, PODS).await;
            assert_eq!(received.query.get("watch").map(String::as_str), Some("true"), "{received:?}");
            assert_eq!(received.query.get("resourceVersion").map(String::as_str), Some(from));
            assert!(received.query["fieldSelector"].starts_with("metadata.name=whisk-"));
            let Some(events) = events else { return Some(send) };
            let mut body = Vec::new();
            for event in events {
                body.extend(serde_json::to_vec(&event).unwrap());
                body.push(b'\n');
            }
            send.send_response(Response::builder().body(Body::from(body)).unwrap());
            None
        }
    }

    /// Whether `received` is a request [`API_CALLS`] lists, by the verb RBAC would check.
    fn is_an_api_call(received: &Received) -> bool {
        let segments: Vec<&str> = received.path.trim_start_matches("/api/v1/").split('/').collect();
        let (namespaced, rest) = match segments.as_slice() {
            ["namespaces", "whisk-actions", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let (resource, named) = match rest {
            [resource] => (*resource, false),
            [resource, _name] => (*resource, true),
            _ => return false,
        };
        let verb = match (&received.method, named) {
            (&Method::GET, _) if received.query.get("watch").is_some_and(|watch| watch == "true") => "watch",
            (&Method::GET, false) => "list",
            (&Method::GET, true) => "get",
            (&Method::POST, false) => "create",
            (&Method::DELETE, true) => "delete",
            (&Method::PATCH, true) => "patch",
            _ => return false,
        };
        API_CALLS.iter().any(|call| {
            call.resource == resource && call.namespaced == namespaced && call.verbs.contains(&verb)
        })
    }

    fn event(kind: &str, object: &Pod) -> Value {
        json!({"type": kind, "object": object})
    }

    fn gone() -> Value {
        json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 2 (40)")})
    }

    /// A client whose API server is the returned mock.
    fn cluster(timeout: Duration) -> (KubeCluster, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        (KubeCluster::new(client, PodConfig::test(), timeout), ApiServer { handle })
    }

    fn at(pod: &Pod, version: &str, status: PodStatus) -> Pod {
        fixtures::with_status(pod, version, status)
    }

    #[tokio::test]
    async fn relabel_patches_the_pods_identity() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (received, send) = server.expect(Method::PATCH, &format!("{PODS}/whisk-aaa")).await;
            ApiServer::reply(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "whisk-aaa"}}),
            );
            received.body
        });
        cluster.relabel(&spec("aaa")).await.unwrap();
        let body = scenario.await.unwrap();
        assert_eq!(body["metadata"]["annotations"]["whisk/action"], "hello");
        assert_eq!(body["metadata"]["annotations"]["whisk/slot"], "0");
        assert_eq!(body["metadata"]["labels"]["whisk/envoy-node"], "envoy-1");
    }

    #[tokio::test]
    async fn adopt_takes_ready_pods_and_deletes_the_rest() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (received, send) = server.expect(Method::GET, PODS).await;
            assert_eq!(
                received.query.get("labelSelector").map(String::as_str),
                Some("app.kubernetes.io/managed-by=whisk-xds-server,whisk/owner=test-owner")
            );
            let config = PodConfig::test();
            let mut ready =
                at(&pod::pod_for(&spec("aaa"), &config).unwrap(), "5", fixtures::ready("10.0.0.7"));
            ready.spec.as_mut().unwrap().node_name = Some("worker-1".into());
            let starting = at(&pod::pod_for(&spec("bbb"), &config).unwrap(), "6", fixtures::pending());
            let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
                              "items": [ready, starting]});
            ApiServer::reply(send, StatusCode::OK, &list);
            let (_, send) = server.expect(Method::DELETE, &format!("{PODS}/whisk-bbb")).await;
            ApiServer::reply(send, StatusCode::OK, &status(200, "", ""));
        });
        let adopted = cluster.adopt().await.unwrap();
        scenario.await.unwrap();
        assert_eq!(
            adopted,
            [Adopted { spec: spec("aaa"), address: "10.0.0.7:8080".into(), host: Some("worker-1".into()) }]
        );
    }

    #[tokio::test]
    async fn machines_follow_a_watch_of_every_node() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let cluster = std::sync::Arc::new(cluster);
        assert_eq!(cluster.machines(), None, "no listing yet: the configured pool stands in");
        let watching = tokio::spawn({
            let cluster = cluster.clone();
            async move { cluster.watch_machines().await }
        });
        let node = |name: &str, memory: &str, ready: bool, version: &str| {
            let mut node = fixtures::node(name, memory, ready);
            node.metadata.resource_version = Some(version.into());
            serde_json::to_value(node).unwrap()
        };
        let (received, send) = server.expect(Method::GET, "/api/v1/nodes").await;
        assert_eq!(received.query.get("watch"), None, "a list first: {received:?}");
        let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "9"},
                          "items": [node("a", "4Gi", true, "3"), node("b", "8Gi", false, "4")]});
        ApiServer::reply(send, StatusCode::OK, &list);
        let (received, send) = server.expect(Method::GET, "/api/v1/nodes").await;
        assert_eq!(received.query.get("watch").map(String::as_str), Some("true"), "{received:?}");
        let mut machines = wait_for_machines(&cluster, 2).await;
        machines.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(machines, [crate::placement::Node::new("a", 4096), crate::placement::Node::new("b", 0)]);

        // Node b becomes Ready; node a is deleted.
        let events = [
            json!({"type": "MODIFIED", "object": node("b", "8Gi", true, "10")}),
            json!({"type": "DELETED", "object": node("a", "4Gi", true, "11")}),
        ];
        let body: Vec<u8> =
            events.iter().flat_map(|e| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()].concat()).collect();
        send.send_response(Response::builder().body(Body::from(body)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while cluster.machines() != Some(vec![crate::placement::Node::new("b", 8192)]) {
            assert!(Instant::now() < deadline, "machines stayed {:?}", cluster.machines());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A pod placed on a node the watch has seen carries the placement as a preferred node.
        let starting = tokio::spawn({
            let cluster = cluster.clone();
            async move {
                let placed = ContainerSpec { placed_on: Some("b".into()), ..spec("c0ffee") };
                cluster.start(&placed).await
            }
        });
        let mut held_watches = Vec::new();
        let created = loop {
            let (received, send) = server.receive().await;
            if received.path == "/api/v1/nodes" {
                held_watches.push(send); // the node watch reconnecting: left open and silent
                continue;
            }
            assert_eq!((&received.method, received.path.as_str()), (&Method::POST, PODS));
            ApiServer::reply(send, StatusCode::INTERNAL_SERVER_ERROR, &status(500, "InternalError", "x"));
            break received.body;
        };
        assert!(starting.await.unwrap().is_err());
        let term = &created["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(term["preference"]["matchFields"][0]["values"], json!(["b"]), "{created}");
        watching.abort();
    }

    async fn wait_for_machines(cluster: &KubeCluster, count: usize) -> Vec<crate::placement::Node> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(machines) = cluster.machines().filter(|machines| machines.len() == count) {
                return machines;
            }
            assert!(Instant::now() < deadline, "machines stayed {:?}", cluster.machines());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn failed_and_deleted_pods_are_reported_lost_from_one_watch_of_all_pods() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let (sender, mut lost) = tokio::sync::mpsc::unbounded_channel();
        let watching = tokio::spawn(async move { cluster.watch_lost(sender).await });
        let config = PodConfig::test();
        let healthy = at(&pod::pod_for(&spec("aaa"), &config).unwrap(), "5", fixtures::ready("10.0.0.7"));
        let crashed = at(&pod::pod_for(&spec("bbb"), &config).unwrap(), "6", fixtures::ready("10.0.0.8"));
        let mut crashed_status = crashed.status.clone().unwrap();
        crashed_status.phase = Some("Failed".into());
        crashed_status.reason = Some("Evicted".into());
        let crashed = at(&crashed, "7", crashed_status);

        // The watcher lists every pod this server manages (no pod name), then watches them all.
        let (received, send) = server.expect(Method::GET, PODS).await;
        assert_eq!(
            received.query.get("labelSelector").map(String::as_str),
            Some("app.kubernetes.io/managed-by=whisk-xds-server,whisk/owner=test-owner")
        );
        assert_eq!(received.query.get("fieldSelector"), None);
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
                          "items": [healthy, crashed]});
        ApiServer::reply(send, StatusCode::OK, &list);
        let first = tokio::time::timeout(Duration::from_secs(5), lost.recv()).await.unwrap();
        assert_eq!(first.as_deref(), Some("bbb"), "the evicted pod is lost; the healthy one is not");

        let (received, send) = server.expect(Method::GET, PODS).await;
        assert_eq!(received.query.get("watch").map(String::as_str), Some("true"), "{received:?}");
        assert_eq!(received.query.get("resourceVersion").map(String::as_str), Some("9"));
        let deleted = serde_json::to_vec(&event("DELETED", &healthy)).unwrap();
        send.send_response(Response::builder().body(Body::from(deleted)).unwrap());
        let second = tokio::time::timeout(Duration::from_secs(5), lost.recv()).await.unwrap();
        assert_eq!(second.as_deref(), Some("aaa"), "a pod deleted by someone else is lost");
        watching.abort();
    }

    #[tokio::test]
    async fn start_creates_the_pod_and_waits_for_it_to_be_ready() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let pod = server.pod_is_created().await;
            server.list_shows(&at(&pod, "2", fixtures::pending()), "2").await;
            // The scheduler chose a node on the way to Running.
            let mut scheduled = pod.clone();
            scheduled.spec.as_mut().unwrap().node_name = Some("worker-2".into());
            let events = vec![
                event("MODIFIED", &at(&scheduled, "3", fixtures::running_not_ready("10.1.2.3"))),
                event("MODIFIED", &at(&scheduled, "4", fixtures::ready("10.1.2.3"))),
            ];
            server.watch_from("2", Some(events)).await;
            (pod, server)
        });
        let started = cluster.start(&spec("c0ffee")).await.unwrap();
        assert_eq!(started.address, "10.1.2.3:8080");
        assert_eq!(started.host.as_deref(), Some("worker-2"), "the node the scheduler chose");

        // What was created: the exact pod the pure core builds.
        let (created, _server) = scenario.await.unwrap();
        let expected = pod::pod_for(&spec("c0ffee"), &PodConfig::test()).unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("whisk-c0ffee"));
        assert_eq!(created.metadata.labels, expected.metadata.labels);
        assert_eq!(created.metadata.annotations, expected.metadata.annotations);
        assert_eq!(created.spec, expected.spec);
    }

    #[tokio::test]
    async fn the_create_request_carries_the_pod_spec() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (received, send) = server.expect(Method::POST, PODS).await;
            ApiServer::reply(
                send,
                StatusCode::INTERNAL_SERVER_ERROR,
                &status(500, "InternalError", "etcd down"),
            );
            received
        });
        // Placed on a node this server has not seen (no node listing yet): no hint goes out.
        let placed = ContainerSpec { placed_on: Some("cluster".into()), ..spec("c0ffee") };
        let error = cluster.start(&placed).await.unwrap_err();
        assert!(matches!(error, ClusterError::Kube { operation: "create", .. }), "{error}");

        let body = scenario.await.unwrap().body;
        assert_eq!(body["spec"].get("affinity"), None, "{body}");
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "Pod");
        assert_eq!(body["metadata"]["name"], "whisk-c0ffee");
        assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "whisk-xds-server");
        assert_eq!(body["metadata"]["labels"]["whisk/container-id"], "c0ffee");
        assert_eq!(body["metadata"]["annotations"]["whisk/kind"], "nodejs:20");
        assert_eq!(body["spec"]["automountServiceAccountToken"], false);
        assert_eq!(body["spec"]["restartPolicy"], "Never");
        let container = &body["spec"]["containers"][0];
        assert_eq!(container["image"], "openwhisk/action-nodejs-v20");
        assert_eq!(container["ports"][0]["containerPort"], 8080);
        assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(container["resources"]["requests"]["memory"], "256Mi");
    }

    #[tokio::test]
    async fn the_watcher_relists_after_410_gone() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let pod = server.pod_is_created().await;
            server.list_shows(&at(&pod, "2", fixtures::pending()), "2").await;
            // The resourceVersion the watcher resumes from was compacted away.
            server.watch_from("2", Some(vec![gone()])).await;
            // So it starts over with a fresh list, which already shows the pod ready.
            server.list_shows(&at(&pod, "40", fixtures::ready("10.9.8.7")), "40").await;
        });
        let started = cluster.start(&spec("c0ffee")).await.unwrap();
        assert_eq!(started.address, "10.9.8.7:8080");
        scenario.await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_pod_name_is_an_error_not_an_adoption() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (_, send) = server.expect(Method::POST, PODS).await;
            let conflict = status(409, "AlreadyExists", r#"pods "whisk-c0ffee" already exists"#);
            ApiServer::reply(send, StatusCode::CONFLICT, &conflict);
            server
        });
        let error = cluster.start(&spec("c0ffee")).await.unwrap_err();
        assert!(matches!(&error, ClusterError::PodExists { pod, .. } if pod == "whisk-c0ffee"), "{error}");
        assert!(error.to_string().contains("already exists"), "{error}");
        // Nothing else was asked: no watch of a pod that is not ours to adopt.
        let mut server = scenario.await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(50), server.handle.next_request());
        assert!(quiet.await.is_err());
    }

    #[tokio::test]
    async fn an_image_that_cannot_be_pulled_fails_the_start_at_once() {
        let (cluster, mut server) = cluster(Duration::from_secs(60));
        let scenario = tokio::spawn(async move {
            let pod = server.pod_is_created().await;
            server.list_shows(&at(&pod, "2", fixtures::pending()), "2").await;
            server
                .watch_from("2", Some(vec![event("MODIFIED", &at(&pod, "3", fixtures::pulling_failed()))]))
                .await;
        });
        let error = cluster.start(&spec("c0ffee")).await.unwrap_err();
        assert!(
            matches!(&error, ClusterError::PodFailed { reason, .. } if reason.starts_with("ImagePullBackOff"))
        );
        scenario.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_deleted_while_starting_fails_the_start() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let pod = server.pod_is_created().await;
            server.list_shows(&at(&pod, "2", fixtures::pending()), "2").await;
            server.watch_from("2", Some(vec![event("DELETED", &at(&pod, "3", fixtures::pending()))])).await;
        });
        let error = cluster.start(&spec("c0ffee")).await.unwrap_err();
        assert!(
            matches!(&error, ClusterError::PodFailed { reason, .. } if reason.contains("deleted")),
            "{error}"
        );
        scenario.await.unwrap();
    }

    #[tokio::test]
    async fn a_pod_that_never_gets_ready_times_out_with_what_it_waited_for() {
        let (cluster, mut server) = cluster(Duration::from_millis(200));
        let scenario = tokio::spawn(async move {
            let pod = server.pod_is_created().await;
            server.list_shows(&at(&pod, "2", fixtures::unschedulable()), "2").await;
            // The watch opens and stays silent.
            let open = server.watch_from("2", None).await;
            (open, server)
        });
        let error = cluster.start(&spec("c0ffee")).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ClusterError::PodTimeout { .. }), "{text}");
        assert!(text.contains("Insufficient memory"), "{text}");
        drop(scenario.await.unwrap());
    }

    #[tokio::test]
    async fn stop_deletes_the_pod_with_a_short_grace_period() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (received, send) = server.expect(Method::DELETE, &format!("{PODS}/whisk-c0ffee")).await;
            let pod = pod::pod_for(&spec("c0ffee"), &PodConfig::test()).unwrap();
            ApiServer::reply(send, StatusCode::OK, &serde_json::to_value(&pod).unwrap());
            received
        });
        cluster.stop("c0ffee").await.unwrap();
        let received = scenario.await.unwrap();
        assert_eq!(received.body["gracePeriodSeconds"], 1, "{received:?}");
    }

    #[tokio::test]
    async fn stop_of_a_pod_already_gone_succeeds() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (_, send) = server.expect(Method::DELETE, &format!("{PODS}/whisk-c0ffee")).await;
            ApiServer::reply(
                send,
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", r#"pods "whisk-c0ffee" not found"#),
            );
        });
        cluster.stop("c0ffee").await.unwrap();
        scenario.await.unwrap();
    }

    #[tokio::test]
    async fn stop_reports_other_api_errors() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (_, send) = server.expect(Method::DELETE, &format!("{PODS}/whisk-c0ffee")).await;
            ApiServer::reply(send, StatusCode::FORBIDDEN, &status(403, "Forbidden", "pods is forbidden"));
        });
        let error = cluster.stop("c0ffee").await.unwrap_err();
        assert!(matches!(error, ClusterError::Kube { operation: "delete", .. }), "{error}");
        scenario.await.unwrap();
    }

    #[tokio::test]
    async fn stop_all_deletes_every_owned_pod() {
        let (cluster, mut server) = cluster(Duration::from_secs(5));
        let scenario = tokio::spawn(async move {
            let (received, send) = server.expect(Method::GET, PODS).await;
            assert_eq!(
                received.query.get("labelSelector").map(String::as_str),
                Some("app.kubernetes.io/managed-by=whisk-xds-server,whisk/owner=test-owner")
            );
            let item = |name: &str| {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                           "metadata": {"name": name}})
            };
            let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                              "metadata": {"resourceVersion": "7"},
                              "items": [item("whisk-a"), item("whisk-b")]});
            ApiServer::reply(send, StatusCode::OK, &list);
            let mut deleted = Vec::new();
            for _ in 0..2 {
                let (received, send) = server.receive().await;
                assert_eq!(received.method, Method::DELETE);
                deleted.push(received.path);
                ApiServer::reply(send, StatusCode::NOT_FOUND, &status(404, "NotFound", "gone"));
            }
            deleted.sort();
            deleted
        });
        cluster.stop_all().await;
        assert_eq!(scenario.await.unwrap(), vec![format!("{PODS}/whisk-a"), format!("{PODS}/whisk-b")]);
    }

    #[test]
    fn kubernetes_mode_needs_an_image_table() {
        let args = KubeArgs {
            actions_namespace: "whisk-actions".into(),
            runtime_images: Vec::new(),
            pod_start_timeout_ms: 1,
            pod_grace_seconds: 1,
            action_scheduler: None,
        };
        assert!(matches!(args.pod_config("o"), Err(KubeSetupError::NoImages)));
        let args = KubeArgs { runtime_images: vec!["nodejs=img".parse().unwrap()], ..args };
        assert_eq!(args.pod_config("o").unwrap().images.image_for("nodejs:20"), Some("img"));
    }
}
