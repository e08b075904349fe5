//! The proxy-wasm adapter: Envoy's callbacks in, the pure core's decisions out.
//!
//! ```text
//!  request headers ─► classify ─► (invoke) hold headers, buffer body
//!  body complete   ─► resolve (management API) ─► claim warm container ──────────────┐
//!                                              └► none: cold start (control plane) ─┤
//!                      stamp container, rewrite body into /run, resume ◄─────────────┘
//!  response        ─► classify answer ─► record ─► release ─► reply; record to the outbox
//!  root tick       ─► flush outbox: records to the management API, non-blocking runs to self
//! ```
//!
//! Waiting is kept inside the request's own worker: every callout is dispatched from the request's
//! context and resumes that context. Work that must outlive a request (storing its record, running a
//! non-blocking invoke) goes through the worker's outbox, flushed by the root context.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use whisk_contract::{
    ActivationRecord, ActivationResponse, ActivationStatus, ColdStartRequest, ColdStartResponse, ErrorBody,
    FilterConfig, ResolvedAction, clusters, headers, messages, paths,
};

use crate::activation::{self, Timing};
use crate::envelope::{self, RunContext};
use crate::pool::{self, CasMismatch, Claim, SharedData, SlotState};
use crate::route::{self, Invocation, Route};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Envoy's shared data, through the hostcalls that report errors instead of panicking.
struct EnvoySharedData;

impl SharedData for EnvoySharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) => Some((bytes, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| CasMismatch)
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// 32 hex characters, OpenWhisk's activation id format.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy from the host: fall back on time, which is unique enough per worker.
        bytes[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error_body(message: &str) -> Vec<u8> {
    let body = ErrorBody { error: message.to_owned(), code: new_id() };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Work that outlives the request that produced it.
enum Outgoing {
    Record(ActivationRecord),
    /// A non-blocking invoke, run as an internal blocking one through this Envoy's ingress.
    Run {
        path: String,
        authorization: String,
        activation_id: String,
        body: Vec<u8>,
    },
}

/// The per-worker plan shared by the root context and its HTTP contexts.
struct Shared {
    config: FilterConfig,
    outbox: RefCell<VecDeque<Outgoing>>,
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
        // Record stores and internal runs report their own failures; a non-2xx here is logged.
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if !status.starts_with('2') {
            warn!("outbox call answered {status}");
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            error!("whisk filter: no plugin configuration");
            return false;
        };
        let config: FilterConfig = match serde_json::from_slice(&bytes) {
            Ok(config) => config,
            Err(parse) => {
                error!("whisk filter: bad plugin configuration: {parse}");
                return false;
            }
        };
        let _ = hostcalls::set_tick_period(Duration::from_millis(config.flush_period_ms.max(1)));
        self.shared = Some(Rc::new(Shared { config, outbox: RefCell::new(VecDeque::new()) }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        let mut records = Vec::new();
        let pending: Vec<Outgoing> = shared.outbox.borrow_mut().drain(..).collect();
        for item in pending {
            match item {
                Outgoing::Record(record) => records.push(record),
                Outgoing::Run { path, authorization, activation_id, body } => {
                    let call = hostcalls::dispatch_http_call(
                        clusters::INGRESS,
                        vec![
                            (":method", "POST"),
                            (":path", &path),
                            (":authority", "whisk-ingress"),
                            ("content-type", "application/json"),
                            ("authorization", &authorization),
                            (headers::INTERNAL_TOKEN, &shared.config.internal_token),
                            (headers::INTERNAL_ACTIVATION_ID, &activation_id),
                        ],
                        Some(&body),
                        vec![],
                        // The longest action timeout and a cold start fit in this bound.
                        Duration::from_millis(310_000 + shared.config.cold_start_timeout_ms),
                    );
                    if let Err(status) = call {
                        error!("could not start non-blocking activation {activation_id}: {status:?}");
                    }
                }
            }
        }
        if records.is_empty() {
            return;
        }
        let Ok(body) = serde_json::to_vec(&records) else { return };
        let call = hostcalls::dispatch_http_call(
            clusters::MANAGEMENT_API,
            vec![
                (":method", "POST"),
                (":path", paths::ACTIVATIONS),
                (":authority", "whisk-management"),
                ("content-type", "application/json"),
                (headers::INTERNAL_TOKEN, &shared.config.internal_token),
            ],
            Some(&body),
            vec![],
            Duration::from_secs(10),
        );
        if let Err(status) = call {
            error!("could not store {} activation records: {status:?}", records.len());
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Request::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What an HTTP context is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Resolve(u32),
    ColdStart(u32),
    /// A bodyless blocking invoke re-sent through the ingress with an empty object as body.
    Relay(u32),
}

/// One request through the filter.
struct Request {
    shared: Rc<Shared>,
    invocation: Option<Invocation>,
    /// A non-blocking invoke relayed by this Envoy's own root context.
    internal_activation_id: Option<String>,
    authorization: String,
    original_path: String,
    body: Vec<u8>,
    waiting: Waiting,
    action: Option<ResolvedAction>,
    parameters: serde_json::Map<String, serde_json::Value>,
    activation_id: String,
    claim: Option<Claim>,
    timing: Timing,
    forwarded: bool,
    response_status: u16,
    response_logs: Option<String>,
}

impl Request {
    fn new(shared: Rc<Shared>) -> Self {
        Self {
            shared,
            invocation: None,
            internal_activation_id: None,
            authorization: String::new(),
            original_path: String::new(),
            body: Vec::new(),
            waiting: Waiting::Nothing,
            action: None,
            parameters: serde_json::Map::new(),
            activation_id: String::new(),
            claim: None,
            timing: Timing { arrived: 0, forwarded: 0, end: 0, init_ms: None },
            forwarded: false,
            response_status: 0,
            response_logs: None,
        }
    }

    fn reply_error(&self, status: u32, message: &str) {
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(&error_body(message)),
        );
    }

    /// Strips every internal header a client sent; returns the internal activation id when the
    /// request carries the right internal token (a relayed non-blocking invoke).
    fn take_internal_headers(&self) -> Option<String> {
        let token = self.get_http_request_header(headers::INTERNAL_TOKEN);
        let activation_id = self.get_http_request_header(headers::INTERNAL_ACTIVATION_ID);
        for (name, _) in self.get_http_request_headers() {
            if name.starts_with(headers::INTERNAL_PREFIX) {
                self.set_http_request_header(&name, None);
            }
        }
        match (token, activation_id) {
            (Some(token), Some(id)) if token == self.shared.config.internal_token && !id.is_empty() => {
                Some(id)
            }
            _ => None,
        }
    }

    /// Re-sends a bodyless blocking invoke through this Envoy's ingress with `{}` as its body and
    /// answers with whatever that internal invoke answers.
    fn relay_with_empty_body(&mut self) -> Action {
        let timeout = Duration::from_millis(310_000 + self.shared.config.cold_start_timeout_ms);
        let call = self.dispatch_http_call(
            clusters::INGRESS,
            vec![
                (":method", "POST"),
                (":path", &self.original_path),
                (":authority", "whisk-ingress"),
                ("content-type", "application/json"),
                ("authorization", &self.authorization),
                (headers::INTERNAL_TOKEN, &self.shared.config.internal_token),
                (headers::INTERNAL_ACTIVATION_ID, &self.activation_id),
            ],
            Some(b"{}"),
            vec![],
            timeout,
        );
        match call {
            Ok(token) => self.waiting = Waiting::Relay(token),
            Err(status) => {
                error!("relay call failed to start: {status:?}");
                self.reply_error(503, messages::INTERNAL_ERROR);
            }
        }
        Action::Pause
    }

    /// Body complete: validate it and ask the management API who may run what.
    fn start_resolve(&mut self) -> Action {
        let Some(invocation) = &self.invocation else { return Action::Continue };
        if self.body.len() > self.shared.config.max_payload_bytes {
            self.reply_error(413, messages::ENTITY_TOO_BIG);
            return Action::Pause;
        }
        match envelope::parse_parameters(&self.body) {
            Ok(parameters) => self.parameters = parameters,
            Err(malformed) => {
                self.reply_error(400, &malformed.0);
                return Action::Pause;
            }
        }
        let path = format!(
            "{}?namespace={}&action={}",
            paths::RESOLVE,
            query_escape(&invocation.namespace),
            query_escape(&invocation.action_path())
        );
        let call = self.dispatch_http_call(
            clusters::MANAGEMENT_API,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", "whisk-management"),
                ("authorization", &self.authorization),
                (headers::INTERNAL_TOKEN, &self.shared.config.internal_token),
            ],
            None,
            vec![],
            Duration::from_millis(self.shared.config.resolve_timeout_ms),
        );
        match call {
            Ok(token) => {
                self.waiting = Waiting::Resolve(token);
                Action::Pause
            }
            Err(status) => {
                error!("resolve call failed to start: {status:?}");
                self.reply_error(503, messages::INTERNAL_ERROR);
                Action::Pause
            }
        }
    }

    fn on_resolved(&mut self, status: u16, body: Vec<u8>) {
        if status != 200 {
            // The management API already speaks OpenWhisk's error shape: relay it.
            let status = if status == 0 { 503 } else { u32::from(status) };
            self.send_http_response(status, vec![("content-type", "application/json")], Some(&body));
            return;
        }
        let action: ResolvedAction = match serde_json::from_slice(&body) {
            Ok(action) => action,
            Err(parse) => {
                error!("resolve answered an unreadable body: {parse}");
                self.reply_error(500, messages::INTERNAL_ERROR);
                return;
            }
        };
        let blocking = self.invocation.as_ref().is_some_and(|i| i.blocking);
        if self.internal_activation_id.is_none() && !blocking {
            // Non-blocking: answer now with the id; the run goes through this Envoy's ingress as an
            // internal blocking invoke, started by the worker's root context.
            let path = self.original_path.split('?').next().unwrap_or_default().to_owned() + "?blocking=true";
            self.shared.outbox.borrow_mut().push_back(Outgoing::Run {
                path,
                authorization: self.authorization.clone(),
                activation_id: self.activation_id.clone(),
                body: std::mem::take(&mut self.body),
            });
            let body = serde_json::json!({ "activationId": self.activation_id }).to_string();
            self.send_http_response(
                202,
                vec![("content-type", "application/json"), (headers::ACTIVATION_ID, &self.activation_id)],
                Some(body.as_bytes()),
            );
            return;
        }
        let prefix = pool::action_prefix(&action.namespace, &action_path(&action), &action.revision);
        self.action = Some(action);
        match pool::claim(&EnvoySharedData, &prefix) {
            Some(claim) => self.forward(claim),
            None => self.start_cold_start(),
        }
    }

    fn start_cold_start(&mut self) {
        let Some(action) = &self.action else { return };
        let request = ColdStartRequest {
            namespace: action.namespace.clone(),
            package: action.package.clone(),
            name: action.name.clone(),
            revision: action.revision.clone(),
            kind: action.kind.clone(),
            memory_mb: action.limits.memory,
            node_id: self.shared.config.node_id.clone(),
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let call = self.dispatch_http_call(
            clusters::CONTROL_PLANE,
            vec![
                (":method", "POST"),
                (":path", paths::COLD_START),
                (":authority", "whisk-control"),
                ("content-type", "application/json"),
                (headers::INTERNAL_TOKEN, &self.shared.config.internal_token),
            ],
            Some(&body),
            vec![],
            Duration::from_millis(self.shared.config.cold_start_timeout_ms),
        );
        match call {
            Ok(token) => self.waiting = Waiting::ColdStart(token),
            Err(status) => {
                error!("cold start call failed to start: {status:?}");
                self.reply_error(503, messages::NO_CAPACITY);
            }
        }
    }

    fn on_cold_started(&mut self, status: u16, body: Vec<u8>) {
        let Some(action) = &self.action else { return };
        match status {
            200 => match serde_json::from_slice::<ColdStartResponse>(&body) {
                Ok(started) => {
                    let prefix =
                        pool::action_prefix(&action.namespace, &action_path(action), &action.revision);
                    let claim = pool::insert_claimed(
                        &EnvoySharedData,
                        &prefix,
                        started.slot,
                        &started.container_id,
                        &started.address,
                    );
                    self.timing.init_ms = Some(started.init_ms);
                    self.forward(claim);
                }
                Err(parse) => {
                    error!("cold start answered an unreadable body: {parse}");
                    self.reply_error(500, messages::INTERNAL_ERROR);
                }
            },
            502 => {
                // /init refused the code: the developer's error, recorded as an activation.
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|error| error.error)
                    .unwrap_or_else(|_| messages::ABNORMAL_RUN.to_owned());
                let response = ActivationResponse::new(
                    ActivationStatus::DeveloperError,
                    serde_json::json!({ "error": message }),
                );
                self.timing.forwarded = now_ms();
                self.timing.end = self.timing.forwarded;
                self.finish_without_container(response);
            }
            _ => {
                let status = if status == 0 { 503 } else { u32::from(status) };
                let body = if body.is_empty() { error_body(messages::NO_CAPACITY) } else { body };
                self.send_http_response(status, vec![("content-type", "application/json")], Some(&body));
            }
        }
    }

    /// A record for an activation that never reached a container (init failure).
    fn finish_without_container(&mut self, response: ActivationResponse) {
        let Some(action) = &self.action else { return };
        let record = activation::record(action, &self.activation_id, response, vec![], self.timing);
        let result_only = self.invocation.as_ref().is_some_and(|i| i.result_only);
        let (status, body) = activation::reply(&record, result_only);
        self.shared.outbox.borrow_mut().push_back(Outgoing::Record(record));
        self.send_http_response(
            u32::from(status),
            vec![("content-type", "application/json"), (headers::ACTIVATION_ID, &self.activation_id)],
            Some(&body),
        );
    }

    /// Pins the request to the claimed container, rewrites it into `/run` and lets it go.
    fn forward(&mut self, claim: Claim) {
        let Some(action) = &self.action else { return };
        let now = now_ms();
        let context = RunContext {
            activation_id: &self.activation_id,
            transaction_id: &self.activation_id,
            api_host: &self.shared.config.api_host,
            deadline_ms: now + action.limits.timeout,
        };
        let parameters = envelope::merge_parameters(&action.parameters, std::mem::take(&mut self.parameters));
        let run = envelope::run_body(action, parameters, &context);
        self.set_http_request_header(headers::ROUTE, Some(headers::ROUTE_CONTAINER));
        self.set_http_request_header(headers::CONTAINER_ADDRESS, Some(&claim.address));
        self.set_http_request_header(headers::CONTAINER_ID, Some(&claim.container_id));
        self.set_http_request_header(":path", Some("/run"));
        self.set_http_request_header("content-type", Some("application/json"));
        self.set_http_request_header("content-length", Some(&run.len().to_string()));
        // The container never sees the user's key.
        self.set_http_request_header("authorization", None);
        self.set_http_request_body(0, self.body.len().max(usize::MAX / 2), &run);
        debug!("activation {} -> container {claim}", self.activation_id);
        self.claim = Some(claim);
        self.timing.forwarded = now;
        self.forwarded = true;
        self.resume_http_request();
    }

    /// The container's answer is complete: record, release, reply.
    fn finish(&mut self, body: &[u8], has_body: bool) {
        let Some(action) = &self.action else { return };
        self.timing.end = now_ms();
        // Only an answer that came from the container proves the container is done with it;
        // anything Envoy produced itself (timeout, reset) leaves the container possibly busy.
        let via_upstream = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .is_some_and(|details| details == b"via_upstream");
        let (response, next) = if via_upstream {
            (activation::classify(self.response_status, body), SlotState::Free)
        } else {
            let message = if self.response_status == 504 {
                format!("The action exceeded its time limits of {} milliseconds.", action.limits.timeout)
            } else {
                messages::ABNORMAL_RUN.to_owned()
            };
            (
                ActivationResponse::new(
                    ActivationStatus::DeveloperError,
                    serde_json::json!({ "error": message }),
                ),
                SlotState::Retired,
            )
        };
        if let Some(claim) = self.claim.take() {
            pool::release(&EnvoySharedData, &claim, next);
        }
        let logs = activation::decode_logs(self.response_logs.as_deref());
        let record = activation::record(action, &self.activation_id, response, logs, self.timing);
        let result_only = self.invocation.as_ref().is_some_and(|i| i.result_only);
        let (status, reply) = activation::reply(&record, result_only);
        self.shared.outbox.borrow_mut().push_back(Outgoing::Record(record));
        if !has_body {
            // A bodyless answer has no buffer to rewrite: reply locally (headers not sent yet).
            self.send_http_response(
                u32::from(status),
                vec![("content-type", "application/json"), (headers::ACTIVATION_ID, &self.activation_id)],
                Some(&reply),
            );
            return;
        }
        self.set_http_response_header(":status", Some(&status.to_string()));
        self.set_http_response_header("content-type", Some("application/json"));
        self.set_http_response_header("content-length", Some(&reply.len().to_string()));
        self.set_http_response_header(headers::RUNTIME_LOGS, None);
        self.set_http_response_header(headers::ACTIVATION_ID, Some(&self.activation_id));
        self.set_http_response_body(0, body.len().max(usize::MAX / 2), &reply);
    }
}

/// `name` or `pkg/name` of a resolved action.
fn action_path(action: &ResolvedAction) -> String {
    match &action.package {
        Some(package) => format!("{package}/{}", action.name),
        None => action.name.clone(),
    }
}

/// Percent-encodes a query value (names may hold spaces, `@`, `/`).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::Resolve(expected) if expected == token => self.on_resolved(status, body),
            Waiting::ColdStart(expected) if expected == token => self.on_cold_started(status, body),
            Waiting::Relay(expected) if expected == token => {
                let status = if status == 0 { 503 } else { u32::from(status) };
                let activation_id =
                    self.get_http_call_response_header(headers::ACTIVATION_ID).unwrap_or_default();
                self.send_http_response(
                    status,
                    vec![("content-type", "application/json"), (headers::ACTIVATION_ID, &activation_id)],
                    Some(&body),
                );
            }
            other => {
                warn!("unexpected callout answer {token} while waiting for {other:?}");
                self.waiting = other;
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let internal = self.take_internal_headers();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match route::classify(&method, &path) {
            Route::PassThrough => Action::Continue,
            Route::Internal => {
                self.reply_error(404, messages::RESOURCE_DOES_NOT_EXIST);
                Action::Pause
            }
            Route::Invoke(invocation) => {
                self.timing.arrived = now_ms();
                self.activation_id = internal.clone().unwrap_or_else(new_id);
                self.internal_activation_id = internal;
                self.authorization = self.get_http_request_header("authorization").unwrap_or_default();
                self.original_path = path;
                let blocking = invocation.blocking;
                self.invocation = Some(invocation);
                if !end_of_stream {
                    return Action::Pause;
                }
                if blocking && self.internal_activation_id.is_none() {
                    // Envoy cannot give a bodyless request a body later, and /run needs one.
                    return self.relay_with_empty_body();
                }
                self.start_resolve()
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.invocation.is_none() || self.forwarded {
            return Action::Continue;
        }
        if body_size > self.shared.config.max_payload_bytes {
            self.reply_error(413, messages::ENTITY_TOO_BIG);
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.start_resolve()
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if !self.forwarded {
            return Action::Continue;
        }
        self.response_status =
            self.get_http_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        self.response_logs = self.get_http_response_header(headers::RUNTIME_LOGS);
        if end_of_stream {
            self.finish(&[], false);
            return Action::Pause;
        }
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.forwarded {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        self.finish(&body, true);
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream ended before the container answered (client gone, reset): the container may
        // still be running the activation, so it is retired, never handed out again.
        if let Some(claim) = self.claim.take() {
            warn!("activation {} ended without an answer; retiring container {claim}", self.activation_id);
            pool::release(&EnvoySharedData, &claim, SlotState::Retired);
        }
    }
}
