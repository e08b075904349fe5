//! The wire contract between the planes.
//!
//! The filter (wasm32), the control server, the management API and the local runtime are separate
//! processes; this crate is the one place that names the headers, internal endpoints and JSON bodies
//! they exchange, so that a change to any of them is a compile error on both sides.
//!
//! ```text
//!  client ──► Envoy ─┬─ wasm filter ── GET  /internal/v1/resolve ─────────► management-api
//!                    │                 POST /internal/v1/activations ────► management-api
//!                    │                 POST /v1/containers (cold start) ─► xds-server
//!                    └─ router ──► container (POST /run, pinned by x-whisk-container)
//!  xds-server ── GET /internal/v1/actions/{ns}/{name} (code for /init) ──► management-api
//! ```
//!
//! Only serde-level dependencies: it builds for the host and for wasm32-wasip1.

use serde::{Deserialize, Serialize};

/// Header names shared by the data plane, the control plane and the runtime.
pub mod headers {
    /// The exact container (`ip:port`) the filter claimed; read by Envoy's `override_host`
    /// load-balancing policy on the containers cluster.
    pub const CONTAINER_ADDRESS: &str = "x-whisk-container";
    /// The id of the container the filter claimed; our runtime refuses a `/run` whose id is not its
    /// own, so a request that Envoy's fallback policy sent elsewhere is never executed.
    pub const CONTAINER_ID: &str = "x-whisk-container-id";
    /// The containers cluster that holds [`CONTAINER_ADDRESS`] ([`super::clusters::containers_of`]);
    /// the container route takes its cluster from this header.
    pub const CONTAINER_CLUSTER: &str = "x-whisk-cluster";
    /// Set by the filter to `container` to select the route to the containers cluster.
    pub const ROUTE: &str = "x-whisk-route";
    /// Value of [`ROUTE`] selecting the containers cluster.
    pub const ROUTE_CONTAINER: &str = "container";
    /// Shared secret of the internal endpoints (filter, control server, management API).
    pub const INTERNAL_TOKEN: &str = "x-whisk-internal-token";
    /// Activation id chosen by the caller of an internal (non-blocking) invoke.
    pub const INTERNAL_ACTIVATION_ID: &str = "x-whisk-activation-id";
    /// OpenWhisk's response header carrying the activation id.
    pub const ACTIVATION_ID: &str = "x-openwhisk-activation-id";
    /// Logs of one activation, returned by our runtime on `/run`: base64 (standard alphabet) of a
    /// JSON array of log lines, each `"<ISO-8601 time> <stdout|stderr>: <text>"`.
    pub const RUNTIME_LOGS: &str = "x-whisk-logs";

    /// On an internal invoke of a sequence component: the activation id of the sequence that runs it
    /// (the component record's `cause`).
    pub const INTERNAL_CAUSE: &str = "x-whisk-cause";
    /// On an internal invoke of a sequence component: how many sequences enclose it (1 for a
    /// component of a topmost sequence), so that sequences nested through later updates cannot
    /// recurse without end.
    pub const SEQUENCE_DEPTH: &str = "x-whisk-sequence-depth";
    /// On an internal invoke: the run of a web action request, resolved without a key (the action
    /// must be exported) and answered with its record to the filter that turns it into the response.
    pub const INTERNAL_WEB: &str = "x-whisk-web";
    /// On an internal invoke: a container the client's stream claimed and hands over with the run
    /// (a blocking invoke that must be able to answer 202 at the end of its wait), so the run takes
    /// it instead of queueing again; `<container id> <address> <init ms or -> <slot key>`.
    pub const INTERNAL_CLAIM: &str = "x-whisk-claim";
    /// With [`INTERNAL_CLAIM`]: epoch milliseconds the client's request arrived at, so the record's
    /// `waitTime` counts the time it queued before handing over.
    pub const INTERNAL_ARRIVED: &str = "x-whisk-arrived";
    /// On an internal invoke: a run again of an activation whose first run was refused as misrouted
    /// (nothing ran); it is not run again a second time.
    pub const INTERNAL_RERUN: &str = "x-whisk-rerun";
    /// On an internal invoke of a web sequence's component: the namespace it runs as, the
    /// sequence's owner (a web request has no key to invoke the components with).
    pub const INTERNAL_SUBJECT: &str = "x-whisk-subject";
    /// A web action annotated `require-whisk-auth` with a secret wants it in this header.
    pub const REQUIRE_WHISK_AUTH: &str = "x-require-whisk-auth";

    /// The management API's entity generation a resolve answer was read at (resolve cache validity).
    pub const GENERATION: &str = "x-whisk-generation";

    /// Every header with this prefix is internal: the filter strips them from client requests.
    pub const INTERNAL_PREFIX: &str = "x-whisk-";
}

/// Paths of the internal endpoints.
pub mod paths {
    /// Management API: `GET ?namespace=&action=` with the client's `authorization` header:
    /// authenticates the key and resolves the action. 200 [`super::ResolvedAction`], or an
    /// OpenWhisk error body with 401/403/404. With `&web=true` it resolves for a web request: no
    /// key needed, the action must be exported (`web-export`, else 404), `require-whisk-auth` is
    /// checked (a key in `authorization`, or its secret in `x-require-whisk-auth`, else 401), and
    /// the subject is the action's namespace.
    pub const RESOLVE: &str = "/internal/v1/resolve";
    /// Management API: `GET ?after=<generation>` answers `{"generation": "..."}` as soon as the
    /// entity generation differs from `after` (at once if it already does), or after 30 s.
    pub const GENERATION: &str = "/internal/v1/generation";
    /// Management API: `GET /internal/v1/actions/{namespace}/{name or pkg/name}` returns
    /// [`super::ActionCode`] (the control server needs the code to `/init` a container).
    pub const ACTION_CODE: &str = "/internal/v1/actions";
    /// Management API: `POST` a JSON array of [`super::ActivationRecord`]; 204 once stored.
    pub const ACTIVATIONS: &str = "/internal/v1/activations";
    /// Control server: `POST` a [`super::ColdStartRequest`]; 200 [`super::ColdStartResponse`]
    /// once the container is initialised and Envoy has acknowledged the endpoint, or an
    /// OpenWhisk error body.
    pub const COLD_START: &str = "/v1/containers";
    /// Control server: `DELETE /v1/containers/{id}?grace_ms=N[&swept=true]` retires a container the
    /// filter will not use again: out of xDS at once, stopped after the grace (a running activation
    /// may finish). `swept=true` says the filter's sweep retired it while free: a container being
    /// handed over to another Envoy then moves there instead of stopping. 204, or 404 for an
    /// unknown id.
    pub const CONTAINERS: &str = "/v1/containers";
    /// Control server: `POST` a [`super::UsageReport`] (what one worker of one Envoy node sees of
    /// the containers it started); 200 [`super::UsageAnswer`] with the collector's marks, unmarks
    /// and sweeps for them.
    pub const USAGE: &str = "/v1/usage";
    /// Every path with this prefix is internal: the filter refuses it at the ingress.
    pub const INTERNAL_PREFIX: &str = "/internal/";
}

/// OpenWhisk's error messages, shared so the filter and the API say the same thing.
pub mod messages {
    pub const UNAUTHENTICATED: &str = "The supplied authentication is invalid.";
    pub const NOT_AUTHORIZED: &str = "The supplied authentication is not authorized to access '{0}'.";
    pub const RESOURCE_DOES_NOT_EXIST: &str = "The requested resource does not exist.";
    pub const MALFORMED_CONTENT: &str = "The request content was malformed:";
    pub const ENTITY_TOO_BIG: &str = "The request content exceeds the maximum allowed size.";
    pub const INTERNAL_ERROR: &str = "Internal server error.";
    pub const ABNORMAL_RUN: &str = "The action did not produce a valid response and exited unexpectedly.";
    pub const NOT_A_JSON_OBJECT: &str = "The action did not return a dictionary.";
    pub const PARAMETERS_NOT_ALLOWED: &str =
        "Request defines parameters that are not allowed (e.g., reserved properties).";
    pub const NO_CAPACITY: &str = "No container could be started for the action; try again later.";
    /// What our runtime answers when an activation passed its deadline (it then restarts the
    /// action process); the filter turns it into [`timeout`]'s message.
    pub const RUNTIME_TIMED_OUT: &str = "The action exceeded its time limit.";

    /// OpenWhisk's sequence messages (a create refused with 400, or a sequence run ended by them).
    pub const SEQUENCE_TOO_LONG: &str = "Too many actions in the sequence.";
    pub const SEQUENCE_NO_COMPONENT: &str = "No component specified for the sequence.";
    pub const SEQUENCE_IS_CYCLIC: &str = "Sequence may not refer to itself.";
    pub const SEQUENCE_COMPONENT_NOT_FOUND: &str = "Sequence component does not exist.";
    /// A component ended without an activation record (the platform failed it).
    pub const SEQUENCE_FAILED: &str = "Sequence failed.";

    /// OpenWhisk's message for an activation ended by its time limit.
    pub fn too_many_per_minute(count: u64, allowed: u64) -> String {
        format!("Too many requests in the last minute (count: {count}, allowed: {allowed}).")
    }

    pub fn too_many_concurrent(count: u64, allowed: u64) -> String {
        format!("Too many concurrent requests in flight (count: {count}, allowed: {allowed}).")
    }

    pub fn timeout(limit_ms: u64) -> String {
        format!("The action exceeded its time limits of {limit_ms} milliseconds.")
    }
}

/// `exec.kind` of a sequence: an action with no code whose components run one after another.
pub const SEQUENCE_KIND: &str = "sequence";

/// OpenWhisk's `actionSequenceLimit`: the most atomic actions one sequence may run, nested sequences
/// inlined.
pub const SEQUENCE_LIMIT: usize = 50;

/// A `{"key": …, "value": …}` pair, OpenWhisk's shape for parameters and annotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: serde_json::Value,
}

/// An action's limits, in OpenWhisk's units (milliseconds, megabytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionLimits {
    pub timeout: u64,
    pub memory: u64,
    pub logs: u64,
    pub concurrency: u64,
}

impl Default for ActionLimits {
    /// OpenWhisk's defaults: 60 s, 256 MB, 10 MB of logs, one activation at a time.
    fn default() -> Self {
        Self { timeout: 60_000, memory: 256, logs: 10, concurrency: 1 }
    }
}

/// What the filter needs to invoke an action: the answer of [`paths::RESOLVE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedAction {
    /// The namespace that owns the action (`_` already resolved).
    pub namespace: String,
    /// The package, for `pkg/name` actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub name: String,
    /// The semantic version shown to users (`0.0.1`, bumped on every update).
    pub version: String,
    /// Opaque and unique per update: containers are keyed by it, so new code never meets an old
    /// container.
    pub revision: String,
    /// The runtime kind (`nodejs:20`, `python:3`, …).
    pub kind: String,
    pub limits: ActionLimits,
    /// Default parameters, merged under the invoke's parameters.
    #[serde(default)]
    pub parameters: Vec<KeyValue>,
    #[serde(default)]
    pub annotations: Vec<KeyValue>,
    /// The namespace of the key that invoked (the activation's `subject` and record namespace).
    pub subject: String,
    /// The invoking namespace's rate limits, which the filter enforces.
    #[serde(default)]
    pub subject_limits: NamespaceLimits,
    /// For a sequence ([`SEQUENCE_KIND`]): its components, fully qualified (`/ns/name` or
    /// `/ns/pkg/name`, `_` already resolved), run by the filter one after another. `None` for an
    /// action with code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    /// Resolved for a web request of an action annotated `require-whisk-auth: true`: the namespace
    /// of the key that came with it (the action's `__ow_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_user: Option<String>,
}

/// Per-namespace invocation limits (OpenWhisk's `concurrentInvocations` and
/// `invocationsPerMinute`), enforced by each Envoy on the invoking namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceLimits {
    /// Activations of the namespace in flight (running or waiting for a container) at once.
    pub concurrent_invocations: u64,
    /// Invokes the namespace may start in one minute.
    pub invocations_per_minute: u64,
}

impl Default for NamespaceLimits {
    /// OpenWhisk's system defaults: 100 concurrent, 120 per minute.
    fn default() -> Self {
        Self { concurrent_invocations: 100, invocations_per_minute: 120 }
    }
}

impl ResolvedAction {
    /// `namespace/name` or `namespace/package/name`, OpenWhisk's `path` annotation.
    pub fn path(&self) -> String {
        // Joined rather than formatted: these run on every warm invoke, in the filter's VM too.
        match &self.package {
            Some(package) => [&self.namespace, "/", package, "/", &self.name].concat(),
            None => [&self.namespace, "/", &self.name].concat(),
        }
    }

    /// `name` or `package/name`: the action within its namespace.
    pub fn action_path(&self) -> String {
        match &self.package {
            Some(package) => [package, "/", &self.name].concat(),
            None => self.name.clone(),
        }
    }

    /// `/namespace/name` or `/namespace/package/name`, the `/run` envelope's `action_name`.
    pub fn fully_qualified_name(&self) -> String {
        match &self.package {
            Some(package) => ["/", &self.namespace, "/", package, "/", &self.name].concat(),
            None => ["/", &self.namespace, "/", &self.name].concat(),
        }
    }
}

/// The code of one action revision: the answer of [`paths::ACTION_CODE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionCode {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub name: String,
    pub revision: String,
    pub kind: String,
    /// Entry point; `main` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// Source text, or base64 when `binary`.
    pub code: String,
    #[serde(default)]
    pub binary: bool,
    /// The image a blackbox action runs (`wsk action create --docker IMAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A request to the control plane for a new container of one action revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStartRequest {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    pub name: String,
    pub revision: String,
    pub kind: String,
    pub memory_mb: u64,
    /// The Envoy node (`node.id`) that will route to the container: the control plane answers only
    /// once that node has acknowledged the endpoint.
    pub node_id: String,
}

/// A container ready for its first activation, already claimed by the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStartResponse {
    pub container_id: String,
    /// `ip:port`, the value for [`headers::CONTAINER_ADDRESS`].
    pub address: String,
    /// The container's slot among the containers of its action revision on this Envoy node, unique
    /// while the container lives: the filter writes the container into its shared-data table at
    /// this slot, so no two writers ever create the same key (creating a shared-data key is not
    /// atomic).
    pub slot: u32,
    /// Milliseconds spent in `/init`: the first activation's `initTime` annotation. `None` for a
    /// warm container handed over from another Envoy node (its first activation here is warm).
    #[serde(default)]
    pub init_ms: Option<u64>,
}

/// A fully qualified action name, `/namespace/name` or `/namespace/package/name`: how a sequence
/// stores its components. The management API writes them, the filter invokes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub namespace: String,
    pub package: Option<String>,
    pub name: String,
}

impl QualifiedName {
    /// Splits `text` into its two or three segments (the leading `/` may be left out, as OpenWhisk
    /// allows). `None` for any other shape or an empty segment; the segments are not otherwise
    /// checked, which is the writer's job.
    pub fn parse(text: &str) -> Option<Self> {
        let path = text.strip_prefix('/').unwrap_or(text);
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return None;
        }
        let (namespace, package, name) = match segments.as_slice() {
            [namespace, name] => (*namespace, None, *name),
            [namespace, package, name] => (*namespace, Some(*package), *name),
            _ => return None,
        };
        Some(Self {
            namespace: namespace.to_owned(),
            package: package.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// `/namespace/name` or `/namespace/package/name`: how it is stored and shown.
    pub fn fully_qualified(&self) -> String {
        match &self.package {
            Some(package) => format!("/{}/{package}/{}", self.namespace, self.name),
            None => format!("/{}/{}", self.namespace, self.name),
        }
    }
}

/// Names of the Envoy clusters the control server publishes and the filter calls.
pub mod clusters {
    /// EDS cluster whose endpoints are the action containers (override-host load balancing); with
    /// more than one containers cluster, the prefix of their names.
    pub const CONTAINERS: &str = "whisk_containers";

    /// The containers cluster that holds the container at `address` when the containers are spread
    /// over `count` clusters: [`CONTAINERS`] when there is one, else `whisk_containers_<k>` with `k`
    /// from a hash of the address. The control plane files the container there, the filter routes
    /// to it there; a container change then re-sends one cluster's endpoints, about 1/`count` of
    /// the pool, instead of all of them.
    pub fn containers_of(address: &str, count: u32) -> String {
        if count <= 1 {
            return CONTAINERS.to_owned();
        }
        format!("{CONTAINERS}_{}", containers_index(address, count))
    }

    /// The position of [`containers_of`]'s cluster in [`all_containers`].
    pub fn containers_index(address: &str, count: u32) -> usize {
        if count <= 1 {
            return 0;
        }
        usize::try_from(fnv1a(address.as_bytes()) % u64::from(count)).unwrap_or(0)
    }

    /// The names of all `count` containers clusters.
    pub fn all_containers(count: u32) -> Vec<String> {
        if count <= 1 {
            return vec![CONTAINERS.to_owned()];
        }
        (0..count).map(|k| format!("{CONTAINERS}_{k}")).collect()
    }

    /// FNV-1a, 64 bits: stable across builds and targets (the filter is wasm, the server native),
    /// which the standard library's hasher does not promise.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
    /// The management API (resolve, action code, activation records).
    pub const MANAGEMENT_API: &str = "whisk_management_api";
    /// The control server's HTTP API (cold starts).
    pub const CONTROL_PLANE: &str = "whisk_control_plane";
    /// This Envoy's own ingress listener: non-blocking invokes run through it as internal blocking ones.
    pub const INGRESS: &str = "whisk_ingress";
}

/// The filter's plugin configuration, written by the control server into the listener it pushes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The Envoy node this configuration was built for: cold starts name it so the control plane
    /// answers once this node acknowledged the new endpoint.
    #[serde(default)]
    pub node_id: String,
    /// Shared secret of the internal endpoints.
    pub internal_token: String,
    /// `api_host` passed to actions in the `/run` envelope.
    pub api_host: String,
    /// Largest invoke payload accepted, in bytes (OpenWhisk: 1 MB).
    #[serde(default = "FilterConfig::default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Bound on the resolve call to the management API.
    #[serde(default = "FilterConfig::default_resolve_timeout_ms")]
    pub resolve_timeout_ms: u64,
    /// Bound on a cold start (process start, `/init`, EDS acknowledgement).
    #[serde(default = "FilterConfig::default_cold_start_timeout_ms")]
    pub cold_start_timeout_ms: u64,
    /// How often each worker flushes activation records and starts queued non-blocking invokes.
    #[serde(default = "FilterConfig::default_flush_period_ms")]
    pub flush_period_ms: u64,
    /// How long an activation record may wait to be stored with later ones: each store is an HTTP
    /// call costing Envoy far more than a record, so records go in batches (or at once, when a
    /// batch is full).
    #[serde(default = "FilterConfig::default_record_batch_ms")]
    pub record_batch_ms: u64,
    /// Requests that may wait for a container of one action, per worker; more are refused (429).
    #[serde(default = "FilterConfig::default_max_waiting_per_action")]
    pub max_waiting_per_action: usize,
    /// How long a request may wait for a container before it is answered 503.
    #[serde(default = "FilterConfig::default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Longest a cached resolution is trusted even with an unchanged generation.
    #[serde(default = "FilterConfig::default_resolve_cache_max_age_ms")]
    pub resolve_cache_max_age_ms: u64,
    /// Waiting requests per container asked for: a container that frees up serves the others
    /// sooner than a new one starts, so cold starts are coalesced.
    #[serde(default = "FilterConfig::default_waiters_per_cold_start")]
    pub waiters_per_cold_start: usize,
    /// How often each worker reports the use of its containers to the control plane's collector.
    #[serde(default = "FilterConfig::default_usage_report_period_ms")]
    pub usage_report_period_ms: u64,
    /// Longest a client waits on a blocking invoke (OpenWhisk: 60 s). An action whose time limit
    /// is longer runs detached: the client gets its result if it ends within this wait, else 202
    /// with the activation id, and the record appears when the action ends.
    #[serde(default = "FilterConfig::default_max_blocking_wait_ms")]
    pub max_blocking_wait_ms: u64,
    /// How many containers clusters the containers are spread over ([`clusters::containers_of`]).
    #[serde(default = "FilterConfig::default_container_clusters")]
    pub container_clusters: u32,
    /// How long a container that just joined the pool is claimed only by the worker whose cold
    /// start brought it: the other workers apply the endpoint update each on its own event loop,
    /// after the node acknowledged it, and until then would route the container's requests to
    /// another container.
    #[serde(default = "FilterConfig::default_new_container_exclusive_ms")]
    pub new_container_exclusive_ms: u64,
}

impl FilterConfig {
    fn default_max_payload_bytes() -> usize {
        1_048_576
    }
    fn default_resolve_timeout_ms() -> u64 {
        5_000
    }
    fn default_cold_start_timeout_ms() -> u64 {
        70_000
    }
    fn default_flush_period_ms() -> u64 {
        10
    }
    fn default_record_batch_ms() -> u64 {
        50
    }
    fn default_max_waiting_per_action() -> usize {
        1_000
    }
    fn default_max_wait_ms() -> u64 {
        60_000
    }
    fn default_resolve_cache_max_age_ms() -> u64 {
        30_000
    }
    fn default_waiters_per_cold_start() -> usize {
        2
    }
    fn default_usage_report_period_ms() -> u64 {
        1_000
    }
    fn default_max_blocking_wait_ms() -> u64 {
        60_000
    }
    fn default_container_clusters() -> u32 {
        1
    }
    fn default_new_container_exclusive_ms() -> u64 {
        50
    }
}

/// A container's slot as the filter last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotUse {
    /// Free (never used or released).
    Free,
    /// Running an activation.
    Busy,
    /// Free, and not chosen while an unmarked container of its action is free.
    Marked,
    /// Never used again (swept, timed out, abandoned); its removal is on its way.
    Retired,
}

/// One container in a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUse {
    pub id: String,
    pub state: SlotUse,
    /// Activations the container has been claimed for since it started; the collector compares it
    /// with the last report to see use without a report per activation.
    pub uses: u64,
}

/// What one worker of an Envoy node reports of the containers it started, off the hot path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub node_id: String,
    pub containers: Vec<ContainerUse>,
}

/// The collector's answer to a [`UsageReport`], about the reported containers only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAnswer {
    /// Stop choosing these while another container of their action is free.
    #[serde(default)]
    pub mark: Vec<String>,
    /// In use again (or recycled): choose them as before.
    #[serde(default)]
    pub unmark: Vec<String>,
    /// Marked, confirmed and unused for the grace period: retire each unless an activation claimed
    /// it meanwhile, then ask for its removal (`DELETE` on [`paths::CONTAINERS`]).
    #[serde(default)]
    pub sweep: Vec<String>,
    /// Not in the control plane's table (removed, or lost by a restart): no longer routable, so
    /// retire each that is not running an activation.
    #[serde(default)]
    pub unknown: Vec<String>,
    /// Wanted by another Envoy while the pool is full: retire each that is free (marked or not),
    /// then ask for its removal as a sweep; the control plane moves it instead of stopping it.
    #[serde(default)]
    pub hand_over: Vec<String>,
}

/// OpenWhisk's error body: `{"error": "...", "code": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub code: String,
}

/// `response.status` of an activation, with OpenWhisk's `statusCode` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationStatus {
    #[serde(rename = "success")]
    Success,
    #[serde(rename = "application error")]
    ApplicationError,
    #[serde(rename = "action developer error")]
    DeveloperError,
    #[serde(rename = "whisk internal error")]
    WhiskError,
}

impl ActivationStatus {
    /// OpenWhisk's numeric `statusCode`.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::ApplicationError => 1,
            Self::DeveloperError => 2,
            Self::WhiskError => 3,
        }
    }

    /// The HTTP status of a blocking invoke that ended this way.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Success => 200,
            Self::ApplicationError | Self::DeveloperError => 502,
            Self::WhiskError => 500,
        }
    }
}

/// The `response` of an activation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationResponse {
    pub status: ActivationStatus,
    pub status_code: u8,
    pub success: bool,
    pub result: serde_json::Value,
}

impl ActivationResponse {
    pub fn new(status: ActivationStatus, result: serde_json::Value) -> Self {
        Self { status, status_code: status.code(), success: status == ActivationStatus::Success, result }
    }
}

/// An activation record in OpenWhisk's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationRecord {
    pub activation_id: String,
    /// The invoking subject's namespace.
    pub namespace: String,
    /// The action's name (without package; the `path` annotation has the full path).
    pub name: String,
    pub version: String,
    pub subject: String,
    pub publish: bool,
    /// Epoch milliseconds.
    pub start: u64,
    pub end: u64,
    pub duration: u64,
    pub response: ActivationResponse,
    pub logs: Vec<String>,
    pub annotations: Vec<KeyValue>,
    /// The activation that caused this one: for a sequence component, the sequence's activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_have_two_or_three_non_empty_segments() {
        let packaged = QualifiedName::parse("/guest/my pkg/b@x").unwrap();
        assert_eq!(packaged.package.as_deref(), Some("my pkg"));
        assert_eq!(packaged.fully_qualified(), "/guest/my pkg/b@x");
        assert_eq!(QualifiedName::parse("guest/a").unwrap().fully_qualified(), "/guest/a");
        for bad in ["a", "/a", "/guest/a/b/c", "/guest//a", "//a", "/guest/", ""] {
            assert_eq!(QualifiedName::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_containers_cluster_keeps_its_plain_name_and_more_spread_the_pool() {
        assert_eq!(clusters::containers_of("127.0.0.1:4000", 1), "whisk_containers");
        assert_eq!(clusters::all_containers(1), ["whisk_containers"]);
        let all = clusters::all_containers(8);
        let mut used = std::collections::BTreeMap::<String, usize>::new();
        for port in 30_000..31_000 {
            let cluster = clusters::containers_of(&format!("127.0.0.1:{port}"), 8);
            assert!(all.contains(&cluster), "{cluster}");
            *used.entry(cluster).or_default() += 1;
        }
        // A thousand neighbouring ports land in every cluster, none with more than twice its share.
        assert_eq!(used.len(), 8, "{used:?}");
        assert!(used.values().all(|&n| n < 250), "{used:?}");
        // A fixed value (FNV-1a computed by hand): the filter (wasm) and the control server (native)
        // must agree, also across versions while a rolling update runs both.
        assert_eq!(clusters::containers_of("10.0.0.1:8080", 256), "whisk_containers_149");
        assert_eq!(
            clusters::all_containers(256)[clusters::containers_index("10.0.0.1:8080", 256)],
            "whisk_containers_149"
        );
    }

    #[test]
    fn status_serialises_with_openwhisk_names_and_codes() {
        let response =
            ActivationResponse::new(ActivationStatus::DeveloperError, serde_json::json!({"error": "x"}));
        let json = serde_json::to_value(&response).unwrap_or_default();
        assert_eq!(json["status"], "action developer error");
        assert_eq!(json["statusCode"], 2);
        assert_eq!(json["success"], false);
    }

    #[test]
    fn paths_include_the_package_when_there_is_one() {
        let mut action = ResolvedAction {
            namespace: "guest".into(),
            package: None,
            name: "hello".into(),
            version: "0.0.1".into(),
            revision: "r1".into(),
            kind: "nodejs:20".into(),
            limits: ActionLimits::default(),
            parameters: vec![],
            annotations: vec![],
            subject: "guest".into(),
            subject_limits: NamespaceLimits::default(),
            components: None,
            web_user: None,
        };
        assert_eq!(action.fully_qualified_name(), "/guest/hello");
        action.package = Some("utils".into());
        assert_eq!(action.path(), "guest/utils/hello");
    }
}
