//! The proxy-wasm adapter: Envoy's callbacks in, the pure core's decisions out.
//!
//! ```text
//!  request headers ─► classify ─► (invoke) hold headers, buffer body
//!  body complete   ─► resolve (management API) ─► claim a free container ─► forward
//!                                              └► none: wait in the worker's queue for the action
//!  root tick (1 ms while anyone waits)
//!                  ─► serve waiters from free containers (any worker may have freed one)
//!                  ─► ask the control plane for containers when waiters outnumber starts
//!                  ─► flush the outbox: records to the management API, retirements, runs
//!                  ─► every usage period: report this worker's containers to the collector,
//!                     apply its marks, unmarks and sweeps (CAS on the slots)
//!  forward         ─► stamp the container, rewrite the body into /run, resume
//!  response        ─► classify ─► record ─► release ─► reply; serve this worker's waiters
//!  a sequence      ─► no container: each component is a blocking internal invoke through this
//!                     Envoy's ingress, the next sent when the last answers; then its record, reply
//! ```
//!
//! A paused request can only be resumed by its own worker's VM. Each request's state lives behind an
//! `Rc` shared with the worker's wait queue, so the root context (or another request's callback that
//! just freed a container) can switch Envoy's effective context to the waiting request and resume it.
//! Envoy defers the resulting stream continuations until the current VM call returns.
//!
//! Cold starts are the root context's own callouts: a container asked for by a request that has since
//! been served elsewhere (or has gone) still lands in the pool, where the next waiter takes it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use whisk_contract::{
    ActivationRecord, ActivationResponse, ActivationStatus, ColdStartRequest, ColdStartResponse,
    ContainerUse, ErrorBody, FilterConfig, ResolvedAction, SlotUse, UsageAnswer, UsageReport, clusters,
    headers, messages, paths,
};

use crate::activation::{self, Answer, Timing};
use crate::cache::{self, Resolver};
use crate::envelope::{self, RunContext, RunValue};
use crate::limits::{self, Admission, InFlight};
use crate::pool::{self, CasMismatch, Claim, SharedData, SlotState};
use crate::queue::{self, Queues, Waiting};
use crate::route::{self, Invocation, Route, percent_encode};
use crate::sequence::{self, Step};
use crate::web::{self, WebTarget};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
}}

/// Fast tick while requests wait: how soon another worker's freed container is noticed.
const WAITING_TICK: Duration = Duration::from_millis(1);
/// After the control plane refused a container (capacity), how long before asking again.
const REFUSED_BACKOFF_MS: u64 = 50;
/// Activation records a worker keeps while the management API cannot store them.
const MAX_PENDING_RECORDS: usize = 10_000;
/// Slots remembered per action revision as freed by this worker, and revisions remembered.
const FREED_PER_REVISION: usize = 4;
const FREED_REVISIONS: usize = 256;
/// Records sent in one call.
const RECORD_BATCH: usize = 500;
/// After a failed record batch, how long before retrying.
const RECORD_RETRY_MS: u64 = 500;
/// Bound on CAS retries of one publication of a worker's head of line.
const HEAD_ATTEMPTS: usize = 8;
/// After a cold start failed while warm containers exist, how long before asking again.
const FAILED_BACKOFF_MS: u64 = 500;
/// OpenWhisk's longest action time limit: what a run of an action not resolved yet may take.
const MAX_ACTION_TIMEOUT_MS: u64 = 300_000;
/// Room on top of the longest a run can take, before its callout gives up on it.
const RUN_BOUND_SLACK_MS: u64 = 10_000;
/// How much later than the action's time limit Envoy gives up on the container.
const UPSTREAM_TIMEOUT_MARGIN_MS: u64 = 1_000;

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

thread_local! {
    /// How deep the worker is in calls from Envoy ([`Callback`]), and the clock as first read in
    /// the outermost one.
    static CALLBACK_CLOCK: Cell<(u32, Option<u64>)> = const { Cell::new((0, None)) };
    /// The worker's generator of activation ids: seeded once from the host's entropy, so that an
    /// id costs no call out of the VM. An id must be unique, not secret (knowing one grants
    /// nothing: every read of a record checks the reader's key against its namespace), so a small
    /// fast generator does, where a cryptographic one cost two microseconds per id in the VM.
    static ID_GENERATOR: RefCell<SmallRng> = RefCell::new(seeded_generator());
}

/// Times the rest of the enclosing block as a part of a callback (`whisk_profile_span_<name>_ns`
/// and `_calls`), in a `callback-profile` build; nothing otherwise.
macro_rules! span {
    ($name:literal) => {
        #[cfg(feature = "callback-profile")]
        let _span = profile::Timed::named(concat!("span_", $name));
    };
}

/// One call from Envoy into the filter, for as long as it lasts. Within it [`now_ms`] reads the
/// host's clock once (a warm invoke's body callback asked five times): a callback's work is one
/// moment. On the bench machine a clock read costs about 0.1 µs, so this is about consistency more
/// than speed; the crossings that cost are those that return data (a shared-data read, 3.5 µs on a
/// request's path, where Envoy has to call back into the VM to allocate the answer). Outside any
/// callback (one not marked) every `now_ms` reads the host.
///
/// Built with the `callback-profile` feature, it also counts the time spent in the VM per kind of
/// call as Envoy stats (`whisk_profile_*`; `scripts/profile-filter-callbacks.sh`).
struct Callback {
    #[cfg(feature = "callback-profile")]
    _timed: profile::Timed,
}

/// The calls from Envoy into the filter, as the callback profile names them.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "callback-profile"), allow(dead_code))]
enum Entry {
    RootCallout,
    WakeUp,
    Tick,
    RequestCallout,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
}

impl Callback {
    fn enter(entry: Entry) -> Self {
        CALLBACK_CLOCK.with(|clock| {
            let (depth, now) = clock.get();
            clock.set((depth + 1, now));
        });
        #[cfg(not(feature = "callback-profile"))]
        let _ = entry;
        Self {
            #[cfg(feature = "callback-profile")]
            _timed: profile::Timed::start(entry),
        }
    }
}

#[cfg(feature = "callback-profile")]
mod profile {
    //! Time spent in the VM per kind of call from Envoy, as two counters each
    //! (`whisk_profile_<entry>_ns` and `_calls`): a profiling build only, since reading the clock
    //! and bumping the counters are four more calls out of the VM per callback.
    use std::cell::RefCell;
    use std::collections::HashMap;

    use proxy_wasm::hostcalls;
    use proxy_wasm::types::MetricType;

    use super::{Entry, host_time};

    /// An entry's two counters (nanoseconds, calls), defined on its first call.
    type Counters = (Option<u32>, Option<u32>);

    thread_local! {
        static COUNTERS: RefCell<HashMap<&'static str, Counters>> = RefCell::new(HashMap::new());
    }

    fn name(entry: Entry) -> &'static str {
        match entry {
            Entry::RootCallout => "root_callout",
            Entry::WakeUp => "wake_up",
            Entry::Tick => "tick",
            Entry::RequestCallout => "request_callout",
            Entry::RequestHeaders => "request_headers",
            Entry::RequestBody => "request_body",
            Entry::ResponseHeaders => "response_headers",
            Entry::ResponseBody => "response_body",
            Entry::Log => "log",
        }
    }

    pub struct Timed {
        name: &'static str,
        started_ns: u128,
    }

    impl Timed {
        pub fn start(entry: Entry) -> Self {
            Self::named(name(entry))
        }

        /// A part of a callback (`span!`), counted under its own name.
        pub fn named(name: &'static str) -> Self {
            Self { name, started_ns: host_time().as_nanos() }
        }
    }

    impl Drop for Timed {
        fn drop(&mut self) {
            let spent_ns = host_time().as_nanos().saturating_sub(self.started_ns);
            let name = self.name;
            let (ns, calls) = COUNTERS.with(|counters| {
                *counters.borrow_mut().entry(name).or_insert_with(|| {
                    let define = |suffix: &str| {
                        hostcalls::define_metric(
                            MetricType::Counter,
                            &format!("whisk_profile_{name}_{suffix}"),
                        )
                        .ok()
                    };
                    (define("ns"), define("calls"))
                })
            });
            if let (Some(ns), Some(calls)) = (ns, calls) {
                let _ = hostcalls::increment_metric(ns, i64::try_from(spent_ns).unwrap_or(i64::MAX));
                let _ = hostcalls::increment_metric(calls, 1);
            }
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        CALLBACK_CLOCK.with(|clock| {
            let (depth, now) = clock.get();
            let depth = depth.saturating_sub(1);
            clock.set((depth, if depth == 0 { None } else { now }));
        });
    }
}

fn now_ms() -> u64 {
    CALLBACK_CLOCK.with(|clock| {
        let (depth, read) = clock.get();
        if let Some(now) = read {
            return now;
        }
        let now = host_now_ms();
        if depth > 0 {
            clock.set((depth, Some(now)));
        }
        now
    })
}

/// The host's clock since the epoch (zero if the host cannot tell).
fn host_time() -> Duration {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn host_now_ms() -> u64 {
    host_time().as_millis() as u64
}

fn seeded_generator() -> SmallRng {
    // No entropy from the host: seed from the time, unique enough per worker and start.
    SmallRng::try_from_os_rng().unwrap_or_else(|_| SmallRng::seed_from_u64(host_time().as_nanos() as u64))
}

/// 32 hex characters, OpenWhisk's activation id format.
fn new_id() -> String {
    let bytes: [u8; 16] = ID_GENERATOR.with(|generator| generator.borrow_mut().random());
    hex::encode(bytes)
}

fn error_body(message: &str) -> Vec<u8> {
    let body = ErrorBody { error: message.to_owned(), code: new_id() };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Makes hostcalls act on another context until dropped, then switches back.
struct OnBehalfOf {
    restore: u32,
}

impl OnBehalfOf {
    fn enter(target: u32, restore: u32) -> Self {
        let _ = hostcalls::set_effective_context(target);
        Self { restore }
    }
}

impl Drop for OnBehalfOf {
    fn drop(&mut self) {
        let _ = hostcalls::set_effective_context(self.restore);
    }
}

/// Work that outlives the request that produced it.
enum Outgoing {
    Record(ActivationRecord),
    /// An activation whose record is still to be built (built here, in a batch).
    Finished(Box<activation::Finished>),
    /// A run that could not be started from the callback that asked for it ([`Shared::launch`]).
    Run(Run),
    /// A container this worker will not use again: the control plane takes it out of xDS now and
    /// stops it after the grace (an activation may still be running in it).
    Retire {
        container_id: String,
        grace_ms: u64,
        /// Retired by a sweep while free: nothing can be running in it (it may move to another
        /// Envoy rather than stop).
        swept: bool,
    },
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Headers or body still arriving, or the resolve, relay or web run callout in flight.
    Receiving,
    /// In the worker's queue for a container.
    Waiting,
    /// Sent to a container.
    Forwarded,
    /// Running a sequence: one component's internal invoke in flight at a time.
    Sequencing,
    /// An internal run refused as misrouted: its run again is in flight, its answer relayed.
    Rerunning,
    /// A blocking invoke or web request whose run went out as a callout of the worker's root context
    /// (it may outlast the client's wait): answered with the run's answer, or 202 once the wait is over.
    Detached,
    /// Answered locally (error, 202, relay, sequence).
    Answered,
    /// The stream is over.
    Ended,
}

/// One request's state, shared with the worker's wait queue.
struct State {
    context_id: u32,
    phase: Phase,
    invocation: Option<Invocation>,
    /// A non-blocking invoke relayed by this Envoy's own root context.
    internal_activation_id: Option<String>,
    /// The invoking namespace counted in flight by this request, to count out when it ends.
    in_flight: Option<String>,
    /// The sequence that invoked this activation (its record's `cause`), on an internal invoke.
    cause: Option<String>,
    /// How many sequences enclose this invoke (0 unless it is a sequence's component).
    sequence_depth: u32,
    /// The run of a sequence this request is answering for.
    sequence: Option<sequence::Run>,
    authorization: String,
    original_path: String,
    /// A blocking invoke that came without a body (Envoy cannot give it one for `/run` later, so it
    /// runs detached, with `{}` as its body: decision 0004).
    bodyless: bool,
    /// A web action request, answered from its internal run's record.
    web: Option<WebRequest>,
    /// An invoke to resolve as a web request's (no key; the action must be exported): the web
    /// request itself, or its internal run.
    web_resolve: bool,
    /// The `x-require-whisk-auth` secret a web request came with.
    web_secret: Option<String>,
    /// The namespace a web sequence's component runs as, without a key (the sequence's owner).
    run_as: Option<String>,
    /// This activation already went out again after a misrouted run: it does not a second time.
    rerun: bool,
    /// The invoke body, checked but not parsed: the `/run` value as it came, unless the action has
    /// defaults to merge (or is a sequence, or final with parameters).
    body: Vec<u8>,
    /// This request's key in the resolve cache.
    cache_key: cache::Key,
    /// A write to the API's entities passing through to the management API.
    entity_write: bool,
    callout: Option<(u32, Callout)>,
    action: Option<Rc<ResolvedAction>>,
    prefix: String,
    activation_id: String,
    claim: Option<Claim>,
    /// On a detached run: the container its client's stream claimed and handed over, until this
    /// stream forwards to it (or releases it, when it ends without running).
    handed: Option<Claim>,
    /// Epoch milliseconds by which the activation must end.
    deadline_ms: u64,
    timing: Timing,
    /// The client's headers that go on to the container ([`envelope::run_request_headers`]):
    /// [`forward`] writes the `/run` request's in one host call.
    request_headers: HeaderList,
    /// The container's answer as its headers say: the status and the runtime's logs header, the
    /// two [`Request::finish`] needs.
    answered: Answered,
}

/// The content type of every reply the filter makes.
const JSON: &str = "application/json";

/// What the filter reads of an upstream answer's headers.
#[derive(Default)]
struct Answered {
    /// `:status`, 0 when absent or unreadable.
    status: u16,
    /// The runtime's logs header, when it sent one.
    logs: Option<String>,
    /// The answer says it is JSON already (as the reply must): no need to say it again.
    json: bool,
}

impl From<Vec<(String, String)>> for Answered {
    /// From all the headers, read in one call: two reads by name cost more than the whole map.
    fn from(pairs: Vec<(String, String)>) -> Self {
        let mut answered = Self::default();
        for (name, value) in pairs {
            if name == ":status" {
                answered.status = value.parse().unwrap_or(0);
            } else if name == headers::RUNTIME_LOGS {
                answered.logs = Some(value);
            } else if name == "content-type" {
                answered.json = value == JSON;
            }
        }
        answered
    }
}

type SharedState = Rc<RefCell<State>>;

/// What a request's own callout is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callout {
    Resolve,
    /// A sequence's component, invoked blocking through the ingress.
    Component,
    /// The run again of an internal run refused as misrouted, whose answer this stream relays.
    Rerun,
}

/// A web action request in flight.
struct WebRequest {
    target: WebTarget,
    http: web::HttpRequest,
    export: web::Export,
}

/// What an internal invoke (carrying the internal token) says about itself.
struct Internal {
    activation_id: String,
    cause: Option<String>,
    sequence_depth: u32,
    /// The run of a web request.
    web: bool,
    /// When the client's request arrived, for a run sent on its behalf.
    arrived: Option<u64>,
    /// The namespace a web sequence's component runs as.
    run_as: Option<String>,
    /// The container the client's stream claimed and handed over with the run.
    claim: Option<Claim>,
    /// A run again after a misrouted one.
    rerun: bool,
}

/// A request parked until a container of its action is free.
struct Waiter {
    state: SharedState,
}

impl Waiting for Waiter {
    /// A request being worked on right now (borrowed) is not waiting either.
    fn still_waits(&self) -> bool {
        self.state.try_borrow().is_ok_and(|state| state.phase == Phase::Waiting)
    }
}

/// The filter's counters, as Envoy stats (`/stats?filter=whisk`): shared by every worker.
struct Counters {
    /// Counted once per warm invoke: added up in the worker and handed to Envoy on its tick.
    resolve_cache_hits: Batched,
    resolve_cache_misses: Option<u32>,
    waits: Option<u32>,
    cold_start_requests: Option<u32>,
    retired: Option<u32>,
    records_dropped: Option<u32>,
    misrouted_reruns: Option<u32>,
}

impl Counters {
    fn define() -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Self {
            resolve_cache_hits: Batched { id: counter("whisk_resolve_cache_hits"), pending: Cell::new(0) },
            resolve_cache_misses: counter("whisk_resolve_cache_misses"),
            waits: counter("whisk_waits"),
            cold_start_requests: counter("whisk_cold_start_requests"),
            retired: counter("whisk_retired"),
            records_dropped: counter("whisk_records_dropped"),
            misrouted_reruns: counter("whisk_misrouted_reruns"),
        }
    }

    fn bump(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    /// Hands Envoy what the batched counters counted since the last tick.
    fn flush(&self) {
        self.resolve_cache_hits.flush();
    }
}

/// A counter bumped on the warm path, where each call out of the VM counts: one call per tick
/// instead of one per request (Envoy's stats lag by at most a tick).
struct Batched {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Batched {
    fn bump(&self) {
        self.pending.set(self.pending.get() + 1);
    }

    fn flush(&self) {
        let pending = self.pending.replace(0);
        if let (Some(id), 1..) = (self.id, pending) {
            let _ = hostcalls::increment_metric(id, pending as i64);
        }
    }
}

/// A non-blocking, detached or web invoke's run: an internal blocking invoke through this Envoy's
/// ingress, a callout of the worker's root context so that it outlives the client's stream.
struct Run {
    path: String,
    authorization: String,
    activation_id: String,
    /// When the client's request arrived (epoch ms), for the record's `waitTime`.
    arrived: u64,
    /// The container the client's stream claimed and hands over with the run.
    claim: Option<Claim>,
    /// Set on a web request's run.
    web: Option<WebRun>,
    /// How long the run may take in all ([`run_bound`]).
    bound: Duration,
    body: Vec<u8>,
    /// The activation's run again after a misrouted one.
    rerun: bool,
}

/// What the run of a web request carries beyond an invoke's.
struct WebRun {
    /// The `x-require-whisk-auth` secret the web request came with.
    secret: Option<String>,
}

/// The per-worker plan and queues shared by the root context and its HTTP contexts.
struct Shared {
    config: FilterConfig,
    counters: Counters,
    outbox: RefCell<VecDeque<Outgoing>>,
    /// Requests waiting for a container, FIFO per action revision (pool prefix).
    waiting: RefCell<Queues<Waiter>>,
    /// Cold starts this worker has in flight, per action revision.
    starting: RefCell<HashMap<String, usize>>,
    /// No cold start is asked for an action revision before this time (the control plane was full).
    refused_until: RefCell<HashMap<String, u64>>,
    fast_tick: Cell<bool>,
    /// Detached blocking invokes by activation id, with the epoch milliseconds their wait ends.
    detached: RefCell<HashMap<String, (SharedState, u64)>>,
    /// The worker's root context: runs are its callouts.
    root_context_id: u32,
    /// Runs in flight (non-blocking, detached and web invokes): callout token → activation id, and
    /// the claim handed over with the run (taken back when the run answers without adopting it).
    runs: RefCell<HashMap<u32, (String, Option<Claim>)>>,
    /// This worker's name in the revisions' heads (`queue::first_in_line`).
    worker_id: String,
    /// The shared queue that wakes this worker's root at once (see [`Shared::wake_root`]).
    wake: Option<u32>,
    /// A wake-up is queued and the root has not run yet.
    wake_pending: Cell<bool>,
    /// The revisions this worker has a head published for.
    published_heads: RefCell<BTreeSet<String>>,
    /// This worker's copy of the resolutions it used (the shared cache's entries, parsed).
    resolved: RefCell<cache::Local>,
    /// Per action revision, the slots this worker freed last (most recent last): tried before a
    /// scan of the pool, which reads every slot below the first free one.
    freed: RefCell<HashMap<String, Vec<String>>>,
    /// Per action revision, until when a container this worker's cold start brought is its alone
    /// (epoch ms): only then is a scan for such a container worth its reads.
    brought_until: RefCell<HashMap<String, u64>>,
}

impl Shared {
    /// Claims a container of `prefix`: the slot this worker freed last if it is still free (most
    /// recently used first, which also leaves the others idle for the collector), else the lowest.
    fn claim(&self, prefix: &str) -> Option<Claim> {
        let claimant = self.claimant(false);
        loop {
            let hint = self.freed.borrow_mut().get_mut(prefix).and_then(Vec::pop);
            let Some(key) = hint else { break };
            if let Some(claim) = pool::claim_at(&EnvoySharedData, &key, &claimant) {
                return Some(claim);
            }
        }
        self.freed.borrow_mut().remove(prefix);
        pool::claim(&EnvoySharedData, prefix, &claimant)
    }

    /// This worker as a claimant now; `own_new_only` when another worker's waiter waited longer.
    fn claimant(&self, own_new_only: bool) -> pool::Claimant<'_> {
        pool::Claimant {
            worker: &self.worker_id,
            now_ms: now_ms(),
            exclusive_ms: self.config.new_container_exclusive_ms,
            own_new_only,
        }
    }

    /// Retires a claimed container for good and asks the control plane to remove it, stopping it
    /// after `grace_ms` (time for an activation that may still run in it to reach its deadline).
    fn retire(&self, claim: Claim, grace_ms: u64) {
        pool::release(&EnvoySharedData, &claim, SlotState::Retired);
        self.outbox.borrow_mut().push_back(Outgoing::Retire {
            container_id: claim.container_id,
            grace_ms,
            swept: false,
        });
    }

    /// Remembers a slot this worker just freed (a few per revision, for a bounded number of them).
    fn remember_freed(&self, prefix: &str, key: String) {
        let mut freed = self.freed.borrow_mut();
        if freed.len() >= FREED_REVISIONS && !freed.contains_key(prefix) {
            freed.clear();
        }
        let keys = freed.entry(prefix.to_owned()).or_default();
        keys.retain(|known| *known != key);
        if keys.len() >= FREED_PER_REVISION {
            keys.remove(0);
        }
        keys.push(key);
    }

    fn enqueue(&self, state: SharedState, prefix: &str) -> bool {
        let bound = self.config.max_waiting_per_action;
        if self.waiting.borrow_mut().push(prefix, Waiter { state }, now_ms(), bound).is_err() {
            return false;
        }
        self.publish_head(prefix);
        if !self.fast_tick.replace(true) {
            let _ = hostcalls::set_tick_period(WAITING_TICK);
        }
        // The root asks for the cold start (its callouts outlive any request): now, not at a tick,
        // which Envoy fires up to several milliseconds late on a busy worker.
        self.wake_root();
        true
    }

    /// Has the root tend the waiters and send what waits in the outbox on Envoy's next turn of the
    /// event loop, once however many requests ask before it runs.
    fn wake_root(&self) {
        let Some(queue) = self.wake else { return };
        if !self.wake_pending.replace(true) && hostcalls::enqueue_shared_queue(queue, Some(b"w")).is_err() {
            self.wake_pending.set(false);
        }
    }

    /// Hands free containers of `prefix` to its waiters, oldest first. `current` is the context whose
    /// callback this runs in.
    fn serve_waiters(&self, prefix: &str, current: u32) {
        if self.serve_waiters_quietly(prefix, current) {
            self.publish_head(prefix);
        }
    }

    /// [`Self::serve_waiters`] without publishing the new head: for the root's tick, which
    /// republishes every head after it has also expired waiters.
    fn serve_waiters_quietly(&self, prefix: &str, current: u32) -> bool {
        let mut served = false;
        loop {
            if !self.waiting.borrow_mut().has_waiter(prefix) {
                break;
            }
            // Behind another worker's waiter, this one still takes a container only it may route
            // to yet (its own cold start's): the other worker could not use it for a while.
            let claim = if self.first_in_line(prefix) {
                self.claim(prefix)
            } else if self.brought_until.borrow().get(prefix).is_some_and(|until| now_ms() < *until) {
                pool::claim(&EnvoySharedData, prefix, &self.claimant(true))
            } else {
                None
            };
            let Some(claim) = claim else { break };
            let waiter = self.waiting.borrow_mut().next(prefix);
            let Some(waiter) = waiter else {
                pool::release(&EnvoySharedData, &claim, SlotState::Free);
                break;
            };
            served = true;
            let Ok(mut state) = waiter.state.try_borrow_mut() else {
                // Being worked on up the stack, so not waiting after all: the container stays free.
                pool::release(&EnvoySharedData, &claim, SlotState::Free);
                continue;
            };
            let _switch = OnBehalfOf::enter(state.context_id, current);
            self.run_claimed(&waiter.state, &mut state, claim, true, current);
        }
        served
    }

    /// True when this worker's oldest waiter of `prefix` is first in the Envoy-wide line: a free
    /// container goes to whichever worker's waiter has waited longest.
    fn first_in_line(&self, prefix: &str) -> bool {
        let Some(since_ms) = self.waiting.borrow().head_since(prefix) else { return true };
        let heads =
            EnvoySharedData.get(&queue::heads_key(prefix)).map(|(bytes, _)| bytes).unwrap_or_default();
        queue::first_in_line(&String::from_utf8_lossy(&heads), &self.worker_id, since_ms, now_ms())
    }

    /// Publishes since when this worker's oldest waiter of `prefix` waits (or that none does), by
    /// CAS on the revision's heads; a lost race is retried, and every tick republishes anyway.
    fn publish_head(&self, prefix: &str) {
        let since_ms = self.waiting.borrow().head_since(prefix);
        let key = queue::heads_key(prefix);
        for _ in 0..HEAD_ATTEMPTS {
            let (text, cas) = match EnvoySharedData.get(&key) {
                Some((bytes, cas)) => (String::from_utf8_lossy(&bytes).into_owned(), Some(cas)),
                None => (String::new(), None),
            };
            if since_ms.is_none() && !queue::has_head(&text, &self.worker_id) {
                break;
            }
            let heads = queue::with_head(&text, &self.worker_id, since_ms, now_ms());
            if EnvoySharedData.set(&key, heads.as_bytes(), cas).is_ok() {
                break;
            }
        }
        let mut published = self.published_heads.borrow_mut();
        if since_ms.is_some() {
            published.insert(prefix.to_owned());
        } else {
            published.remove(prefix);
        }
    }

    /// Runs the request in the claimed container: on its own stream, unless it is a client's
    /// blocking invoke that waited so long that its answer could come later than the client may
    /// wait; that one runs detached and hands its claim to the run, so it neither queues again nor
    /// loses its turn. `current` is the context whose callback this runs in. Returns true when it
    /// runs on its own stream.
    fn run_claimed(
        &self,
        handle: &SharedState,
        state: &mut State,
        claim: Claim,
        resume: bool,
        current: u32,
    ) -> bool {
        let blocking_client = state.internal_activation_id.is_none()
            && state.invocation.as_ref().is_some_and(|invocation| invocation.blocking);
        let late = blocking_client
            && state.action.as_ref().is_some_and(|action| {
                let waited_ms = now_ms().saturating_sub(state.timing.arrived);
                route::could_answer_late(waited_ms, action.limits.timeout, self.config.max_blocking_wait_ms)
            });
        if let Some(action) = late.then(|| state.action.clone()).flatten() {
            debug!("activation {} detached with container {claim}", state.activation_id);
            self.detach(handle, state, &action, Some(claim), current);
            return false;
        }
        forward(self, state, claim, resume);
        true
    }

    /// Starts the request's run (see [`Shared::launch`]): an internal blocking invoke through this
    /// Envoy's ingress under the same activation id, handing over `claim` if there is one. False
    /// when it could not start (the claim is released).
    fn start_run(
        &self,
        state: &mut State,
        action: &ResolvedAction,
        claim: Option<Claim>,
        current: u32,
    ) -> bool {
        let mut body = std::mem::take(&mut state.body);
        if body.is_empty() {
            // `/run` needs a body, and the run's own stream gets one (decision 0004).
            body = b"{}".to_vec();
        }
        // Nobody's until the run adopts it: if the run never gets that far, its answer takes it back.
        let claim = claim.filter(|claim| pool::hand_over(&EnvoySharedData, claim));
        let run = Run {
            path: state.original_path.split('?').next().unwrap_or_default().to_owned() + "?blocking=true",
            authorization: state.authorization.clone(),
            activation_id: state.activation_id.clone(),
            arrived: state.timing.arrived,
            claim,
            web: None,
            bound: run_bound(&self.config, Some(action)),
            body,
            rerun: state.rerun,
        };
        self.launch(run, state.context_id, current)
    }

    /// Starts `run` as a callout that outlives the client's stream (Envoy makes every callout on the
    /// worker's root context). The SDK hands the answer to the context whose callback dispatched
    /// it, so it is dispatched at once only from the root's callback or the client's own (both are
    /// there for the answer, or the client is gone and the answer has nobody to go to); from
    /// another request's callback, which may be over before the run, the root dispatches it when
    /// it wakes. False when it could not start.
    fn launch(&self, run: Run, client: u32, current: u32) -> bool {
        if current != self.root_context_id && current != client {
            self.outbox.borrow_mut().push_back(Outgoing::Run(run));
            self.wake_root();
            return true;
        }
        self.dispatch(run)
    }

    fn dispatch(&self, run: Run) -> bool {
        let arrived = run.arrived.to_string();
        let handed = run.claim.as_ref().map(Claim::to_header);
        let mut extra = vec![(headers::INTERNAL_ARRIVED, arrived.as_str())];
        if let Some(handed) = &handed {
            extra.push((headers::INTERNAL_CLAIM, handed));
        }
        if run.rerun {
            extra.push((headers::INTERNAL_RERUN, "1"));
        }
        if let Some(web) = &run.web {
            extra.push((headers::INTERNAL_WEB, "1"));
            if let Some(secret) = &web.secret {
                extra.push((headers::REQUIRE_WHISK_AUTH, secret));
            }
        }
        let call = invoke_internally(
            self,
            &run.path,
            &run.authorization,
            &run.activation_id,
            &extra,
            &run.body,
            run.bound,
        );
        match call {
            Ok(token) => {
                self.runs.borrow_mut().insert(token, (run.activation_id, run.claim));
                true
            }
            Err(status) => {
                error!("could not start activation {}: {status:?}", run.activation_id);
                if let Some(claim) = &run.claim {
                    pool::take_back(&EnvoySharedData, claim);
                }
                false
            }
        }
    }

    /// Detaches a client's blocking invoke: its run starts (see [`Shared::start_run`]) and the
    /// client waits here until the run answers ([`Shared::answer_detached`]) or its wait ends, when
    /// it gets 202 with the activation id (`Root::expire_detached`).
    fn detach(
        &self,
        handle: &SharedState,
        state: &mut State,
        action: &ResolvedAction,
        claim: Option<Claim>,
        current: u32,
    ) {
        if !self.start_run(state, action, claim, current) {
            answer_error(state, 503, messages::INTERNAL_ERROR);
            return;
        }
        self.wait_detached(handle, state);
    }

    fn wait_detached(&self, handle: &SharedState, state: &mut State) {
        // The run counts in flight on its own stream from now on, not twice.
        if let Some(namespace) = state.in_flight.take() {
            limits::leave(&EnvoySharedData, &namespace);
        }
        let wait_ends = state.timing.arrived + self.config.max_blocking_wait_ms;
        self.detached.borrow_mut().insert(state.activation_id.clone(), (handle.clone(), wait_ends));
        state.phase = Phase::Detached;
    }

    /// A run answered: the claim it was handed goes back to the pool if the run never adopted it
    /// (Envoy refused the internal request before the filter saw it), and the answer to its client.
    fn on_run_answered(&self, token: u32, status: u16, body: &[u8], current: u32) -> bool {
        let Some((activation_id, claim)) = self.runs.borrow_mut().remove(&token) else { return false };
        if let Some(claim) = claim
            && pool::take_back(&EnvoySharedData, &claim)
        {
            warn!("run {activation_id} never reached container {claim} (answered {status}); freed");
        }
        if !(200..300).contains(&status) && status != 502 {
            warn!("internal run {activation_id} answered {status}");
        }
        self.answer_detached(&activation_id, status, body, current);
        true
    }

    /// The answer of a detached invoke's run: to its client, if it still waits on this worker. A
    /// blocking invoke gets the record (or the result); a web request, the response made of it.
    fn answer_detached(&self, activation_id: &str, status: u16, body: &[u8], current: u32) {
        let Some((waiting, _)) = self.detached.borrow_mut().remove(activation_id) else { return };
        let Ok(mut state) = waiting.try_borrow_mut() else { return };
        if state.phase != Phase::Detached {
            return;
        }
        let _switch = OnBehalfOf::enter(state.context_id, current);
        if let Some(request) = &state.web {
            let reply = web::respond(&request.target, request.export, status, body);
            answer_web(&mut state, &reply);
            return;
        }
        let result_only = state.invocation.as_ref().is_some_and(|i| i.result_only);
        match serde_json::from_slice::<ActivationRecord>(body) {
            Ok(record) => {
                let (status, reply) = activation::reply(&record, result_only);
                answer(&mut state, u32::from(status), vec![(headers::ACTIVATION_ID, activation_id)], &reply);
            }
            // Refused or failed before it ran (throttled, gone, no capacity): already an error.
            Err(_) => {
                let status = if status == 0 { 503 } else { u32::from(status) };
                answer(&mut state, status, vec![(headers::ACTIVATION_ID, activation_id)], body);
            }
        }
    }

    /// Answers every waiter of `prefix` with `respond` (a cold start that cannot succeed for them).
    fn fail_waiters(&self, prefix: &str, current: u32, respond: &dyn Fn(&Shared, &mut State)) {
        let waiters = self.waiting.borrow_mut().take_all(prefix);
        for waiter in waiters {
            if let Ok(mut state) = waiter.state.try_borrow_mut() {
                let _switch = OnBehalfOf::enter(state.context_id, current);
                respond(self, &mut state);
            }
        }
    }
}

/// The invoking namespace's limits: a client's invoke counts against the minute's allowance (its
/// relayed non-blocking run does not count twice); a blocking invoke or a relayed run counts in
/// flight until its stream ends, and a non-blocking invoke is refused at the door when the
/// namespace is already at its in-flight limit (its run, once admitted, is never refused).
fn admit(state: &mut State, action: &ResolvedAction, blocking: bool) -> Result<(), limits::Refusal> {
    let (namespace, allowed) = (action.subject.as_str(), action.subject_limits);
    let relayed = state.internal_activation_id.is_some();
    let in_flight = if relayed {
        InFlight::Enter { allowed: u64::MAX }
    } else if blocking {
        InFlight::Enter { allowed: allowed.concurrent_invocations }
    } else {
        InFlight::Check { allowed: allowed.concurrent_invocations }
    };
    let admission = Admission {
        minute: now_ms() / 60_000,
        per_minute: (!relayed).then_some(allowed.invocations_per_minute),
        in_flight,
    };
    limits::admit(&EnvoySharedData, namespace, admission)?;
    if let InFlight::Enter { .. } = in_flight {
        state.in_flight = Some(namespace.to_owned());
    }
    Ok(())
}

/// A root-context callout: `POST path` of a JSON body to an internal endpoint of `cluster` (the
/// management API or the control server), with the shared token.
fn post_internal(
    shared: &Shared,
    cluster: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<u32, proxy_wasm::types::Status> {
    let authority = cluster.replace('_', "-");
    hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "POST"),
            (":path", path),
            (":authority", &authority),
            ("content-type", JSON),
            (headers::INTERNAL_TOKEN, &shared.config.internal_token),
        ],
        Some(body),
        vec![],
        timeout,
    )
}

/// A blocking invoke through this Envoy's own ingress, carrying the internal token and the
/// activation id it runs under (plus `extra` internal headers): how non-blocking and detached runs,
/// sequence components and web runs reach the same resolve, claim and cold start
/// as any invoke. The callout belongs to the effective context (a request's, or the root's).
fn invoke_internally(
    shared: &Shared,
    path: &str,
    authorization: &str,
    activation_id: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    bound: Duration,
) -> Result<u32, proxy_wasm::types::Status> {
    let mut request_headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", "whisk-ingress"),
        ("content-type", JSON),
        ("authorization", authorization),
        (headers::INTERNAL_TOKEN, shared.config.internal_token.as_str()),
        (headers::INTERNAL_ACTIVATION_ID, activation_id),
    ];
    request_headers.extend_from_slice(extra);
    hostcalls::dispatch_http_call(clusters::INGRESS, request_headers, Some(body), vec![], bound)
}

/// The longest a run through the ingress can take: waiting in the queue for a container, a cold
/// start, then the action's time limit (OpenWhisk's longest when the action is not known here, and
/// per component for a sequence). Its callout must not give up sooner: ending it ends the run's
/// stream, and the record with it.
fn run_bound(config: &FilterConfig, action: Option<&ResolvedAction>) -> Duration {
    let before_run = config.max_wait_ms + config.cold_start_timeout_ms + UPSTREAM_TIMEOUT_MARGIN_MS;
    let per_run = |limit: u64| before_run + limit + RUN_BOUND_SLACK_MS;
    let bound = match action {
        Some(action) => match &action.components {
            None => per_run(action.limits.timeout),
            Some(components) => per_run(MAX_ACTION_TIMEOUT_MS).saturating_mul(components.len().max(1) as u64),
        },
        None => per_run(MAX_ACTION_TIMEOUT_MS),
    };
    Duration::from_millis(bound)
}

/// Answers `state`'s request locally (hostcalls act on the effective context).
fn answer(state: &mut State, status: u32, extra: Vec<(&str, &str)>, body: &[u8]) {
    let mut response_headers = vec![("content-type", JSON)];
    response_headers.extend(extra);
    if let Err(status) = hostcalls::send_http_response(status, response_headers, Some(body)) {
        error!("could not answer activation {}: {status:?}", state.activation_id);
    }
    state.phase = Phase::Answered;
}

/// Sends a web action's response, with its activation id.
fn answer_web(state: &mut State, reply: &web::Reply) {
    let mut response_headers: Vec<(&str, &str)> =
        reply.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    response_headers.push((headers::ACTIVATION_ID, &state.activation_id));
    if let Err(status) =
        hostcalls::send_http_response(u32::from(reply.status), response_headers, Some(&reply.body))
    {
        error!("could not answer web activation {}: {status:?}", state.activation_id);
    }
    state.phase = Phase::Answered;
}

/// 202 with the activation id: the run goes on without this client.
fn answer_accepted(state: &mut State) {
    let body = serde_json::json!({ "activationId": state.activation_id }).to_string();
    let activation_id = state.activation_id.clone();
    answer(state, 202, vec![(headers::ACTIVATION_ID, &activation_id)], body.as_bytes());
}

fn answer_error(state: &mut State, status: u32, message: &str) {
    answer(state, status, vec![], &error_body(message));
}

/// True when the response came from the upstream (Envoy produced none of it: no timeout, no reset).
fn answered_by_upstream() -> bool {
    hostcalls::get_property(vec!["response", "code_details"])
        .ok()
        .flatten()
        .is_some_and(|details| details == b"via_upstream")
}

/// Answers with a record for an activation that never reached a container (init failure).
fn answer_without_container(shared: &Shared, state: &mut State, response: ActivationResponse) {
    let Some(action) = &state.action else { return };
    let now = now_ms();
    let timing = Timing { forwarded: now, end: now, ..state.timing };
    let mut record = activation::record(action, &state.activation_id, response, vec![], timing);
    record.cause = state.cause.clone();
    let result_only = state.invocation.as_ref().is_some_and(|i| i.result_only);
    let (status, body) = activation::reply(&record, result_only);
    shared.outbox.borrow_mut().push_back(Outgoing::Record(record));
    let activation_id = state.activation_id.clone();
    answer(state, u32::from(status), vec![(headers::ACTIVATION_ID, &activation_id)], &body);
}

/// Pins the request to the claimed container, rewrites it into `/run` and lets it go.
fn forward(shared: &Shared, state: &mut State, claim: Claim, resume: bool) {
    span!("forward");
    let Some(action) = &state.action else { return };
    let now = now_ms();
    // Only an action that asks for it gets the invoking key; a web request's run has none of its
    // own to give (its activation is the owner's, whose key is stored hashed).
    let api_key = (envelope::provides_api_key(action) && !state.web_resolve)
        .then(|| envelope::api_key_of(&state.authorization))
        .flatten();
    let context = RunContext {
        activation_id: &state.activation_id,
        transaction_id: &state.activation_id,
        api_host: &shared.config.api_host,
        deadline_ms: now + action.limits.timeout,
        api_key: api_key.as_deref(),
    };
    let run = envelope::run_body(action, RunValue::of(action, &state.body), &context);
    // Our runtime ends an activation at its deadline itself; Envoy's timeout is the backstop for
    // runtimes that do not, a little later so that the runtime's own answer wins when it can.
    let (mut timeout_text, mut length_text) = (itoa::Buffer::new(), itoa::Buffer::new());
    let upstream_timeout = timeout_text.format(action.limits.timeout + UPSTREAM_TIMEOUT_MARGIN_MS);
    state.deadline_ms = context.deadline_ms;
    let content_length = length_text.format(run.len());
    let count = shared.config.container_clusters;
    let cluster = (count > 1).then(|| clusters::containers_of(&claim.address, count));
    let mut set = vec![
        (headers::ROUTE, headers::ROUTE_CONTAINER),
        (headers::CONTAINER_ADDRESS, claim.address.as_str()),
        (headers::CONTAINER_ID, claim.container_id.as_str()),
        (":path", "/run"),
        ("x-envoy-upstream-rq-timeout-ms", upstream_timeout),
        ("content-type", JSON),
        ("content-length", content_length),
    ];
    if let Some(cluster) = &cluster {
        set.push((headers::CONTAINER_CLUSTER, cluster.as_str()));
    }
    // The key travels in the envelope only when the action asked for it, never as a header.
    let rewritten = envelope::run_request_headers(&state.request_headers.0, &set);
    let set_map = {
        span!("forward_headers_write");
        hostcalls::set_map(MapType::HttpRequestHeaders, rewritten)
    };
    if let Err(status) = set_map {
        error!("could not rewrite the headers of activation {}: {status:?}", state.activation_id);
    }
    let set_buffer = {
        span!("forward_body_write");
        hostcalls::set_buffer(BufferType::HttpRequestBody, 0, usize::MAX / 2, &run)
    };
    if let Err(status) = set_buffer {
        error!("could not rewrite the body of activation {}: {status:?}", state.activation_id);
    }
    debug!("activation {} -> container {claim}", state.activation_id);
    state.timing.forwarded = now;
    state.timing.init_ms = claim.init_ms;
    state.claim = Some(claim);
    state.phase = Phase::Forwarded;
    if resume {
        let _ = hostcalls::resume_http_request();
    }
}

/// A request's or a response's headers as Envoy had them when the filter first saw them, read in
/// one host call (each call that returns data costs a round trip into the VM to allocate it).
#[derive(Default)]
struct HeaderList(Vec<(String, String)>);

impl HeaderList {
    /// The first value of `name` (lower case), as Envoy's own lookup gives it.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }
}

/// The worker's root context: the outbox, the wait queues' clock, and the cold starts.
struct Root {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    /// Cold-start callouts in flight: token → pool prefix.
    cold_starts: HashMap<u32, String>,
    /// The long-poll of the management API's entity generation, when in flight.
    generation_poll: Option<u32>,
    /// No generation poll before this time (the last one failed).
    poll_not_before: u64,
    /// Containers this worker's cold starts put in the pool: id → slot key. This worker reports
    /// their use to the collector (each container has exactly one reporter).
    started: BTreeMap<String, String>,
    /// The usage report in flight, if any.
    usage_report: Option<u32>,
    /// No usage report before this time.
    next_report_ms: u64,
    /// Activation records not stored yet, oldest first (bounded; the overflow is counted).
    pending_records: VecDeque<ActivationRecord>,
    /// The batch of records being stored, kept until the management API confirms it.
    records_in_flight: Option<(u32, Vec<ActivationRecord>)>,
    /// No record batch before this time (the last one failed).
    records_not_before: u64,
    /// When the oldest pending record was queued: a batch goes when it is full or this is old
    /// enough (`record_batch_ms`).
    records_pending_since: u64,
}

impl Root {
    fn new(context_id: u32) -> Self {
        Self {
            context_id,
            shared: None,
            cold_starts: HashMap::new(),
            generation_poll: None,
            poll_not_before: 0,
            started: BTreeMap::new(),
            usage_report: None,
            next_report_ms: 0,
            pending_records: VecDeque::new(),
            records_in_flight: None,
            records_not_before: 0,
            records_pending_since: 0,
        }
    }

    /// Tells the collector how this worker's containers are used (off the hot path: one call per
    /// period for all of them), so idle ones can be marked and swept.
    fn report_usage(&mut self, shared: &Shared) {
        let now = now_ms();
        if self.usage_report.is_some() || now < self.next_report_ms || self.started.is_empty() {
            return;
        }
        self.next_report_ms = now + shared.config.usage_report_period_ms;
        let mut containers = Vec::with_capacity(self.started.len());
        let mut gone = Vec::new();
        for (id, key) in &self.started {
            let Some((state, uses)) = pool::inspect(&EnvoySharedData, key, id) else {
                // Its slot holds a successor: it was retired and its removal asked for already.
                gone.push(id.clone());
                continue;
            };
            let state = match state {
                SlotState::New | SlotState::Free => SlotUse::Free,
                SlotState::Marked => SlotUse::Marked,
                SlotState::Busy | SlotState::Handed => SlotUse::Busy,
                SlotState::Retired => {
                    // Reported once; its removal is the retire call's job.
                    gone.push(id.clone());
                    SlotUse::Retired
                }
            };
            containers.push(ContainerUse { id: id.clone(), state, uses });
        }
        for id in gone {
            self.started.remove(&id);
        }
        if containers.is_empty() {
            return;
        }
        let report = UsageReport { node_id: shared.config.node_id.clone(), containers };
        let Ok(body) = serde_json::to_vec(&report) else { return };
        let call =
            post_internal(shared, clusters::CONTROL_PLANE, paths::USAGE, &body, Duration::from_secs(5));
        match call {
            Ok(token) => self.usage_report = Some(token),
            Err(status) => warn!("usage report failed to start: {status:?}"),
        }
    }

    /// Applies the collector's answer: each change is a CAS on the slot, so none can take a
    /// container an activation holds.
    fn on_usage_answer(&mut self, shared: &Shared, status: u16, body: &[u8]) {
        self.usage_report = None;
        let answer = match serde_json::from_slice::<UsageAnswer>(body) {
            Ok(answer) if status == 200 => answer,
            _ => {
                warn!("usage report answered {status}");
                return;
            }
        };
        for id in &answer.mark {
            if let Some(key) = self.started.get(id) {
                pool::mark(&EnvoySharedData, key, id);
            }
        }
        for id in &answer.unmark {
            if let Some(key) = self.started.get(id) {
                pool::unmark(&EnvoySharedData, key, id);
            }
        }
        let sweeps = answer.sweep.iter().map(|id| (id, true));
        let hand_overs = answer.hand_over.iter().map(|id| (id, false));
        for (id, only_marked) in sweeps.chain(hand_overs) {
            if let Some(key) = self.started.get(id)
                && pool::retire_free(&EnvoySharedData, key, id, only_marked)
            {
                self.started.remove(id);
                shared.outbox.borrow_mut().push_back(Outgoing::Retire {
                    container_id: id.clone(),
                    grace_ms: 0,
                    swept: true,
                });
            }
        }
        for id in &answer.unknown {
            // Out of xDS already: routing to it could only fail. A busy one is retired when its
            // activation ends (the next report names it again).
            if let Some(key) = self.started.get(id)
                && pool::retire_free(&EnvoySharedData, key, id, false)
            {
                warn!("container {id} is unknown to the control plane; retired");
                self.started.remove(id);
            }
        }
    }

    /// Keeps one long-poll of the entity generation in flight, so cached resolutions die as soon as
    /// an entity is written.
    fn poll_generation(&mut self, shared: &Shared) {
        if self.generation_poll.is_some() || now_ms() < self.poll_not_before {
            return;
        }
        let current = cache::current_generation(&EnvoySharedData).unwrap_or_default();
        let path = format!("{}?after={}", paths::GENERATION, percent_encode(&current));
        let call = hostcalls::dispatch_http_call(
            clusters::MANAGEMENT_API,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", "whisk-management"),
                (headers::INTERNAL_TOKEN, &shared.config.internal_token),
            ],
            None,
            vec![],
            Duration::from_secs(35),
        );
        match call {
            Ok(token) => self.generation_poll = Some(token),
            Err(status) => {
                warn!("generation poll failed to start: {status:?}");
                self.poll_not_before = now_ms() + 500;
            }
        }
    }

    fn on_generation(&mut self, status: u16, body: &[u8]) {
        self.generation_poll = None;
        let generation = (status == 200)
            .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
            .flatten()
            .and_then(|value| value.get("generation").and_then(|g| g.as_str()).map(str::to_owned));
        match generation {
            Some(generation) => {
                let _ = EnvoySharedData.set(cache::GENERATION_KEY, generation.as_bytes(), None);
            }
            None => {
                // Unknown generation: fail closed (no cache hits) until the API answers again.
                let _ = EnvoySharedData.set(cache::GENERATION_KEY, b"", None);
                self.poll_not_before = now_ms() + 500;
            }
        }
    }

    fn flush_outbox(&mut self, shared: &Shared) {
        let pending: Vec<Outgoing> = shared.outbox.borrow_mut().drain(..).collect();
        for item in pending {
            match item {
                Outgoing::Record(record) => self.queue_record(shared, record),
                Outgoing::Finished(finished) => self.queue_record(shared, finished.record()),
                Outgoing::Run(run) => {
                    let activation_id = run.activation_id.clone();
                    if !shared.dispatch(run) {
                        let body = error_body(messages::INTERNAL_ERROR);
                        shared.answer_detached(&activation_id, 503, &body, self.context_id);
                    }
                }
                Outgoing::Retire { container_id, grace_ms, swept } => {
                    Counters::bump(shared.counters.retired);
                    let path =
                        format!("{}/{container_id}?grace_ms={grace_ms}&swept={swept}", paths::CONTAINERS);
                    let call = hostcalls::dispatch_http_call(
                        clusters::CONTROL_PLANE,
                        vec![
                            (":method", "DELETE"),
                            (":path", &path),
                            (":authority", "whisk-control"),
                            (headers::INTERNAL_TOKEN, &shared.config.internal_token),
                        ],
                        None,
                        vec![],
                        Duration::from_secs(10),
                    );
                    if let Err(status) = call {
                        error!("could not retire container {container_id}: {status:?}");
                    }
                }
            }
        }
        self.store_records(shared);
    }

    fn queue_record(&mut self, shared: &Shared, record: ActivationRecord) {
        if self.pending_records.len() >= MAX_PENDING_RECORDS {
            self.pending_records.pop_front();
            Counters::bump(shared.counters.records_dropped);
        }
        if self.pending_records.is_empty() {
            self.records_pending_since = now_ms();
        }
        self.pending_records.push_back(record);
    }

    /// Sends the oldest pending records, one batch at a time, once the oldest has waited
    /// `record_batch_ms` for company or a batch is full; a batch the management API did not
    /// confirm goes back to the front and is retried after a pause, so records are never lost to
    /// an unreachable store (only to the bound, counted in `whisk_records_dropped`).
    fn store_records(&mut self, shared: &Shared) {
        let now = now_ms();
        let full = self.pending_records.len() >= RECORD_BATCH;
        if self.records_in_flight.is_some()
            || self.pending_records.is_empty()
            || now < self.records_not_before
            || (!full && now < self.records_pending_since + shared.config.record_batch_ms)
        {
            return;
        }
        let take = self.pending_records.len().min(RECORD_BATCH);
        let batch: Vec<ActivationRecord> = self.pending_records.drain(..take).collect();
        let Ok(body) = serde_json::to_vec(&batch) else { return };
        match post_internal(
            shared,
            clusters::MANAGEMENT_API,
            paths::ACTIVATIONS,
            &body,
            Duration::from_secs(10),
        ) {
            Ok(token) => self.records_in_flight = Some((token, batch)),
            Err(status) => {
                error!("could not store {} activation records: {status:?}; retrying", batch.len());
                self.requeue_records(batch);
            }
        }
    }

    fn requeue_records(&mut self, batch: Vec<ActivationRecord>) {
        for record in batch.into_iter().rev() {
            self.pending_records.push_front(record);
        }
        self.pending_records.truncate(MAX_PENDING_RECORDS);
        self.records_not_before = now_ms() + RECORD_RETRY_MS;
    }

    /// Detached invokes whose wait is over get 202 with their id; their runs go on.
    fn expire_detached(&self, shared: &Shared) {
        let now = now_ms();
        let over: Vec<String> = shared
            .detached
            .borrow()
            .iter()
            .filter(|(_, (state, wait_ends))| {
                now >= *wait_ends || state.try_borrow().is_ok_and(|state| state.phase != Phase::Detached)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in over {
            let Some((waiting, _)) = shared.detached.borrow_mut().remove(&id) else { continue };
            let Ok(mut state) = waiting.try_borrow_mut() else { continue };
            if state.phase == Phase::Detached {
                let _switch = OnBehalfOf::enter(state.context_id, self.context_id);
                match &state.web {
                    Some(request) => {
                        let reply = web::accepted(request.export, &state.activation_id);
                        answer_web(&mut state, &reply);
                    }
                    None => answer_accepted(&mut state),
                }
            }
        }
    }

    /// Serves, expires and provisions the wait queues.
    fn tend_waiters(&mut self, shared: &Shared) {
        let prefixes = shared.waiting.borrow().prefixes();
        let now = now_ms();
        for prefix in prefixes {
            shared.serve_waiters_quietly(&prefix, self.context_id);
            self.expire_waiters(shared, &prefix, now);
            self.request_containers(shared, &prefix, now);
        }
        // Fresh heads for the revisions with waiters (served and expired above); none for those
        // whose queue emptied.
        let published: Vec<String> = shared.published_heads.borrow().iter().cloned().collect();
        for prefix in published {
            shared.publish_head(&prefix);
        }
        if shared.waiting.borrow().is_empty() && shared.fast_tick.replace(false) {
            let _ = hostcalls::set_tick_period(Duration::from_millis(shared.config.flush_period_ms.max(1)));
        }
    }

    fn expire_waiters(&self, shared: &Shared, prefix: &str, now: u64) {
        let expired = shared.waiting.borrow_mut().expire(prefix, now, shared.config.max_wait_ms);
        for waiter in expired {
            if let Ok(mut state) = waiter.state.try_borrow_mut() {
                let _switch = OnBehalfOf::enter(state.context_id, self.context_id);
                answer_error(&mut state, 503, messages::NO_CAPACITY);
            }
        }
    }

    /// Asks the control plane for containers while live waiters outnumber the starts in flight.
    fn request_containers(&mut self, shared: &Shared, prefix: &str, now: u64) {
        if shared.refused_until.borrow().get(prefix).is_some_and(|until| now < *until) {
            return;
        }
        let (live, first) = {
            let waiting = shared.waiting.borrow();
            let (live, first) = waiting.waiting(prefix);
            (live, first.and_then(|waiter| waiter.state.try_borrow().ok().and_then(|s| s.action.clone())))
        };
        let Some(action) = first else { return };
        let starting = shared.starting.borrow().get(prefix).copied().unwrap_or(0);
        let wanted = queue::starts_wanted(live, shared.config.waiters_per_cold_start);
        if starting >= wanted {
            return;
        }
        // Another worker's new container that is free serves a waiter here once its while is over,
        // far sooner than a cold start: it counts as a start in flight.
        let free_soon = pool::free_soon(&EnvoySharedData, prefix, &shared.claimant(false));
        if starting + free_soon >= wanted {
            return;
        }
        let request = ColdStartRequest {
            namespace: action.namespace.clone(),
            package: action.package.clone(),
            name: action.name.clone(),
            revision: action.revision.clone(),
            kind: action.kind.clone(),
            memory_mb: action.limits.memory,
            node_id: shared.config.node_id.clone(),
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let timeout = Duration::from_millis(shared.config.cold_start_timeout_ms);
        let call = post_internal(shared, clusters::CONTROL_PLANE, paths::COLD_START, &body, timeout);
        match call {
            Ok(token) => {
                Counters::bump(shared.counters.cold_start_requests);
                self.cold_starts.insert(token, prefix.to_owned());
                *shared.starting.borrow_mut().entry(prefix.to_owned()).or_default() += 1;
            }
            Err(status) => error!("cold start call for {prefix} failed to start: {status:?}"),
        }
    }

    fn on_cold_started(&mut self, shared: &Shared, prefix: &str, status: u16, body: Vec<u8>) {
        if let Some(starting) = shared.starting.borrow_mut().get_mut(prefix) {
            *starting = starting.saturating_sub(1);
        }
        match status {
            200 => match serde_json::from_slice::<ColdStartResponse>(&body) {
                Ok(started) => {
                    self.started.insert(started.container_id.clone(), pool::slot_key(prefix, started.slot));
                    let now = now_ms();
                    let until = now + shared.config.new_container_exclusive_ms;
                    let mut brought = shared.brought_until.borrow_mut();
                    brought.retain(|_, until| now < *until);
                    brought.insert(prefix.to_owned(), until);
                    drop(brought);
                    let joined = pool::Joined { at_ms: now, worker: &shared.worker_id };
                    pool::insert_new(
                        &EnvoySharedData,
                        prefix,
                        started.slot,
                        &started.container_id,
                        &started.address,
                        started.init_ms,
                        joined,
                    );
                    shared.serve_waiters(prefix, self.context_id);
                }
                Err(parse) => error!("cold start answered an unreadable body: {parse}"),
            },
            // At capacity: the waiters keep waiting for a container to free up.
            429 => {
                shared.refused_until.borrow_mut().insert(prefix.to_owned(), now_ms() + REFUSED_BACKOFF_MS);
            }
            // /init refused the code: every waiter of this revision would fail the same way.
            502 => {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|error| error.error)
                    .unwrap_or_else(|_| messages::ABNORMAL_RUN.to_owned());
                shared.fail_waiters(prefix, self.context_id, &|shared, state| {
                    let response = ActivationResponse::new(
                        ActivationStatus::DeveloperError,
                        serde_json::json!({ "error": message }),
                    );
                    answer_without_container(shared, state, response);
                });
            }
            // The control plane is unreachable or failing (a restart, say) while the action has
            // containers here: its waiters keep waiting for one of those to free up, as at
            // capacity, rather than fail now; the wait limit still bounds them.
            _ if pool::holds_live(&EnvoySharedData, prefix) => {
                warn!("cold start for {prefix} failed with status {status}; waiting for a warm container");
                shared.refused_until.borrow_mut().insert(prefix.to_owned(), now_ms() + FAILED_BACKOFF_MS);
            }
            _ => {
                warn!("cold start for {prefix} failed with status {status}");
                let body = if body.is_empty() { error_body(messages::NO_CAPACITY) } else { body };
                let status = if status == 0 { 503 } else { u32::from(status) };
                shared
                    .fail_waiters(prefix, self.context_id, &|_, state| answer(state, status, vec![], &body));
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let _callback = Callback::enter(Entry::RootCallout);
        let status: u16 =
            self.get_http_call_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if self.generation_poll == Some(token) {
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            self.on_generation(status, &body);
            return;
        }
        if self.usage_report == Some(token) {
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            if let Some(shared) = self.shared.clone() {
                self.on_usage_answer(&shared, status, &body);
            }
            return;
        }
        if let Some(prefix) = self.cold_starts.remove(&token) {
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            if let Some(shared) = self.shared.clone() {
                self.on_cold_started(&shared, &prefix, status, body);
            }
            return;
        }
        if let Some((in_flight, _)) = &self.records_in_flight
            && *in_flight == token
        {
            if let Some((_, batch)) = self.records_in_flight.take()
                && !(200..300).contains(&status)
            {
                warn!("storing {} activation records answered {status}; retrying", batch.len());
                self.requeue_records(batch);
            }
            return;
        }
        let is_run = self.shared.as_ref().is_some_and(|shared| shared.runs.borrow().contains_key(&token));
        if let (true, Some(shared)) = (is_run, self.shared.clone()) {
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            shared.on_run_answered(token, status, &body, self.context_id);
            return;
        }
        if !(200..300).contains(&status) {
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
        let worker_id = new_id();
        // A queue only this root listens on: a request that must not wait for the next tick
        // enqueues on it, and Envoy calls the root on its next turn of the event loop.
        let wake = hostcalls::register_shared_queue(&format!("whisk-wake-{worker_id}"))
            .map_err(|status| warn!("no wake-up queue ({status:?}): waiters are tended on ticks only"))
            .ok();
        self.shared = Some(Rc::new(Shared {
            config,
            counters: Counters::define(),
            outbox: RefCell::new(VecDeque::new()),
            waiting: RefCell::new(Queues::default()),
            starting: RefCell::new(HashMap::new()),
            refused_until: RefCell::new(HashMap::new()),
            fast_tick: Cell::new(false),
            detached: RefCell::new(HashMap::new()),
            root_context_id: self.context_id,
            runs: RefCell::new(HashMap::new()),
            worker_id,
            wake,
            wake_pending: Cell::new(false),
            published_heads: RefCell::new(BTreeSet::new()),
            resolved: RefCell::new(cache::Local::default()),
            freed: RefCell::new(HashMap::new()),
            brought_until: RefCell::new(HashMap::new()),
        }));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let _callback = Callback::enter(Entry::WakeUp);
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        let Some(shared) = self.shared.clone() else { return };
        shared.wake_pending.set(false);
        self.tend_waiters(&shared);
        self.flush_outbox(&shared);
    }

    fn on_tick(&mut self) {
        let _callback = Callback::enter(Entry::Tick);
        let Some(shared) = self.shared.clone() else { return };
        shared.counters.flush();
        self.tend_waiters(&shared);
        self.expire_detached(&shared);
        self.report_usage(&shared);
        self.flush_outbox(&shared);
        self.poll_generation(&shared);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Request::new(shared, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request through the filter.
struct Request {
    shared: Rc<Shared>,
    state: SharedState,
}

impl Request {
    fn new(shared: Rc<Shared>, context_id: u32) -> Self {
        let state = State {
            context_id,
            phase: Phase::Receiving,
            invocation: None,
            internal_activation_id: None,
            in_flight: None,
            cause: None,
            sequence_depth: 0,
            sequence: None,
            authorization: String::new(),
            original_path: String::new(),
            bodyless: false,
            web: None,
            web_resolve: false,
            web_secret: None,
            run_as: None,
            rerun: false,
            body: Vec::new(),
            cache_key: cache::Key::default(),
            entity_write: false,
            callout: None,
            action: None,
            prefix: String::new(),
            activation_id: String::new(),
            claim: None,
            handed: None,
            deadline_ms: 0,
            timing: Timing { arrived: 0, forwarded: 0, end: 0, init_ms: None },
            request_headers: HeaderList::default(),
            answered: Answered::default(),
        };
        Self { shared, state: Rc::new(RefCell::new(state)) }
    }

    /// Strips every internal header a client sent; returns what they say when the request carries
    /// the right internal token and an activation id (the run of a non-blocking or detached invoke,
    /// a sequence's component, or a web request's run). `sent` are the request's headers, read once.
    fn take_internal_headers(&self, sent: &HeaderList) -> Option<Internal> {
        // Removing a name removes every value it has: each name once.
        let mut internal: Vec<&str> =
            sent.names().filter(|name| name.starts_with(headers::INTERNAL_PREFIX)).collect();
        internal.sort_unstable();
        internal.dedup();
        for name in internal {
            self.set_http_request_header(name, None);
        }
        let token = sent.get(headers::INTERNAL_TOKEN)?;
        let activation_id = sent.get(headers::INTERNAL_ACTIVATION_ID)?;
        if token != self.shared.config.internal_token || activation_id.is_empty() {
            return None;
        }
        let present = |name: &str| sent.get(name).filter(|value| !value.is_empty()).map(str::to_owned);
        Some(Internal {
            activation_id: activation_id.to_owned(),
            cause: present(headers::INTERNAL_CAUSE),
            sequence_depth: sent
                .get(headers::SEQUENCE_DEPTH)
                .and_then(|depth| depth.parse().ok())
                .unwrap_or(0),
            web: sent.get(headers::INTERNAL_WEB).is_some(),
            arrived: sent.get(headers::INTERNAL_ARRIVED).and_then(|arrived| arrived.parse().ok()),
            claim: sent.get(headers::INTERNAL_CLAIM).and_then(Claim::from_header),
            rerun: sent.get(headers::INTERNAL_RERUN).is_some(),
            run_as: present(headers::INTERNAL_SUBJECT),
        })
    }

    /// Body complete: validate it and ask the management API who may run what.
    fn start_resolve(&self, state: &mut State) -> Action {
        let Some(invocation) = &state.invocation else { return Action::Continue };
        if state.body.len() > self.shared.config.max_payload_bytes {
            answer_error(state, 413, messages::ENTITY_TOO_BIG);
            return Action::Pause;
        }
        if let Err(malformed) = envelope::check_parameters(&state.body) {
            answer_error(state, 400, &malformed.0);
            return Action::Pause;
        }
        let (namespace, action_path) = (invocation.namespace.clone(), invocation.action_path());
        self.resolve(state, &namespace, &action_path)
    }

    /// Resolves the action (from the cache, or by a callout to the management API), then goes on.
    fn resolve(&self, state: &mut State, namespace: &str, action_path: &str) -> Action {
        // A web resolution depends on the key and the secret a request came with, and is never one
        // an invoke with the same key may use.
        let resolver = if state.web_resolve {
            Resolver::Web {
                authorization: &state.authorization,
                secret: state.web_secret.as_deref().unwrap_or_default(),
            }
        } else if let Some(owner) = &state.run_as {
            Resolver::Owner(owner)
        } else {
            Resolver::Key(&state.authorization)
        };
        let max_age = self.shared.config.resolve_cache_max_age_ms;
        let (generation, now) = (cache::current_generation(&EnvoySharedData).unwrap_or_default(), now_ms());
        // Warm and known: no call at all; the request goes on from this very callback.
        let copy = {
            span!("resolve_cached");
            self.shared.resolved.borrow().lookup(resolver, namespace, action_path, &generation, now, max_age)
        };
        if let Some(action) = copy {
            self.shared.counters.resolve_cache_hits.bump();
            return self.resolved(state, action, false);
        }
        state.cache_key = cache::key(resolver, namespace, action_path);
        if let Some(cached) = cache::lookup(&EnvoySharedData, &state.cache_key, &generation, now, max_age) {
            let action = Rc::clone(&cached.action);
            self.shared.resolved.borrow_mut().remember(resolver, namespace, action_path, &generation, cached);
            self.shared.counters.resolve_cache_hits.bump();
            return self.resolved(state, action, false);
        }
        Counters::bump(self.shared.counters.resolve_cache_misses);
        let mut path = format!(
            "{}?namespace={}&action={}",
            paths::RESOLVE,
            percent_encode(namespace),
            percent_encode(action_path),
        );
        if state.web_resolve {
            path.push_str("&web=true");
        } else if let Some(owner) = &state.run_as {
            path.push_str("&subject=");
            path.push_str(&percent_encode(owner));
        }
        let mut request_headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", "whisk-management"),
            ("authorization", state.authorization.as_str()),
            (headers::INTERNAL_TOKEN, self.shared.config.internal_token.as_str()),
        ];
        if let Some(secret) = &state.web_secret {
            request_headers.push((headers::REQUIRE_WHISK_AUTH, secret.as_str()));
        }
        let call = self.dispatch_http_call(
            clusters::MANAGEMENT_API,
            request_headers,
            None,
            vec![],
            Duration::from_millis(self.shared.config.resolve_timeout_ms),
        );
        match call {
            Ok(token) => state.callout = Some((token, Callout::Resolve)),
            Err(status) => {
                error!("resolve call failed to start: {status:?}");
                answer_error(state, 503, messages::INTERNAL_ERROR);
            }
        }
        Action::Pause
    }

    fn on_resolved(&self, state: &mut State, status: u16, body: Vec<u8>, generation: Option<String>) {
        if status != 200 {
            // The management API already speaks OpenWhisk's error shape: relay it.
            let status = if status == 0 { 503 } else { u32::from(status) };
            answer(state, status, vec![], &body);
            return;
        }
        let action: ResolvedAction = match serde_json::from_slice(&body) {
            Ok(action) => action,
            Err(parse) => {
                error!("resolve answered an unreadable body: {parse}");
                answer_error(state, 500, messages::INTERNAL_ERROR);
                return;
            }
        };
        if let Some(generation) = generation {
            cache::remember(&EnvoySharedData, &state.cache_key, &generation, now_ms(), &action);
        }
        self.resolved(state, Rc::new(action), true);
    }

    /// The action is known: a web request runs it through the ingress; an invoke goes on.
    fn resolved(&self, state: &mut State, action: Rc<ResolvedAction>, in_callout: bool) -> Action {
        if state.web.is_some() {
            self.proceed_web(state, action)
        } else {
            self.proceed(state, action, in_callout)
        }
    }

    /// Body complete for a web request: resolve the exported action.
    fn start_web(&self, state: &mut State) -> Action {
        let Some(request) = &state.web else { return Action::Continue };
        if request.http.body.len() > self.shared.config.max_payload_bytes {
            answer_error(state, 413, messages::ENTITY_TOO_BIG);
            return Action::Pause;
        }
        let (namespace, action_path) = (request.target.namespace.clone(), request.target.action_path());
        self.resolve(state, &namespace, &action_path)
    }

    /// A web request's action is known (and exported): count the invoke against the action's
    /// namespace, answer a CORS preflight, or build the parameters and run the action as an
    /// internal blocking invoke whose record becomes the response.
    fn proceed_web(&self, state: &mut State, action: Rc<ResolvedAction>) -> Action {
        let export = web::Export::of(&action.annotations);
        if !export.exported {
            answer_error(state, 404, messages::RESOURCE_DOES_NOT_EXIST);
            return Action::Pause;
        }
        if let Err(refusal) = admit(state, &action, false) {
            answer_error(state, 429, &refusal.message());
            return Action::Pause;
        }
        let Some(request) = state.web.as_mut() else { return Action::Pause };
        request.export = export;
        if request.http.method == "OPTIONS" && !export.custom_options {
            let reply = web::preflight(export);
            answer_web(state, &reply);
            return Action::Pause;
        }
        let parameters = web::parameters(
            &request.target,
            &request.http,
            export,
            &action.parameters,
            action.web_user.as_deref(),
        );
        let parameters = match parameters {
            Ok(parameters) => parameters,
            Err(refused) => {
                answer_error(state, u32::from(refused.status), &refused.message);
                return Action::Pause;
            }
        };
        // The run is detached, as a blocking invoke's past the wait: a run past the wait answers
        // 202 with the activation id, as OpenWhisk does for web actions.
        let run = Run {
            path: request.target.invoke_path(),
            authorization: state.authorization.clone(),
            activation_id: state.activation_id.clone(),
            arrived: state.timing.arrived,
            claim: None,
            web: Some(WebRun { secret: state.web_secret.clone() }),
            bound: run_bound(&self.shared.config, Some(&action)),
            body: serde_json::Value::Object(parameters).to_string().into_bytes(),
            rerun: false,
        };
        if self.shared.launch(run, state.context_id, state.context_id) {
            self.shared.wait_detached(&self.state, state);
        } else {
            answer_error(state, 503, messages::INTERNAL_ERROR);
        }
        Action::Pause
    }

    /// The action is known: answer a non-blocking invoke, or claim a container (or wait for one).
    /// `in_callout` says whether the request is paused (resume it) or still in its own filter
    /// callback (let it continue by returning `Continue`).
    fn proceed(&self, state: &mut State, action: Rc<ResolvedAction>, in_callout: bool) -> Action {
        let blocking = state.invocation.as_ref().is_some_and(|i| i.blocking);
        let from_client = state.internal_activation_id.is_none();
        let runs_in_container = action.components.is_none();
        // An action allowed to run longer than a client may wait runs detached, so that a run past
        // the wait can be answered 202 while it goes on (a stream that ends takes its run with it).
        // A sequence's length is unknown until it runs, so every blocking sequence runs detached.
        // A bodyless invoke cannot be given a body on its own stream (decision 0004).
        let detached = from_client
            && blocking
            && (!runs_in_container
                || action.limits.timeout > self.shared.config.max_blocking_wait_ms
                || state.bodyless);
        if let Err(refused) = envelope::check_final(&action, &state.body) {
            answer_error(state, 400, &refused.0);
            return Action::Pause;
        }
        // A run this stream hands to another (internal) stream counts in flight there, not twice.
        let admitted = {
            span!("admit");
            admit(state, &action, blocking && !detached)
        };
        if let Err(refusal) = admitted {
            answer_error(state, 429, &refusal.message());
            return Action::Pause;
        }
        if from_client && !blocking {
            // Answered 202 now; the run goes through this Envoy's ingress.
            if self.shared.start_run(state, &action, None, state.context_id) {
                answer_accepted(state);
            } else {
                answer_error(state, 503, messages::INTERNAL_ERROR);
            }
            return Action::Pause;
        }
        if detached {
            self.shared.detach(&self.state, state, &action, None, state.context_id);
            return Action::Pause;
        }
        if action.components.is_some() {
            // A sequence has no code and no container: never a cold start, never a wait in a queue.
            return self.start_sequence(state, action);
        }
        state.prefix = pool::action_prefix(&action.namespace, &action.action_path(), &action.revision);
        state.action = Some(action);
        let handed = state.handed.take().and_then(|claim| {
            let claimant = self.shared.claimant(false);
            if claim.belongs_to(&state.prefix)
                && pool::may_take(&EnvoySharedData, &claim.key, &claim.container_id, &claimant)
            {
                return Some(claim);
            }
            // The action changed since the client's stream claimed it (that container runs the old
            // code), or the run landed on a worker that may not route to the new container yet.
            pool::release(&EnvoySharedData, &claim, SlotState::Free);
            None
        });
        let claimed = {
            span!("claim");
            handed.or_else(|| self.shared.claim(&state.prefix))
        };
        match claimed {
            Some(claim) => {
                let on_this_stream =
                    self.shared.run_claimed(&self.state, state, claim, in_callout, state.context_id);
                if on_this_stream && !in_callout { Action::Continue } else { Action::Pause }
            }
            None => {
                Counters::bump(self.shared.counters.waits);
                state.phase = Phase::Waiting;
                if !self.shared.enqueue(self.state.clone(), &state.prefix) {
                    answer_error(
                        state,
                        429,
                        "Too many requests are waiting for this action; try again later.",
                    );
                }
                Action::Pause
            }
        }
    }

    /// Starts running a sequence's components; the request stays paused until it is answered.
    fn start_sequence(&self, state: &mut State, action: Rc<ResolvedAction>) -> Action {
        let parameters = envelope::parse_parameters(&state.body).unwrap_or_default();
        state.sequence = Some(sequence::Run::start(&action, parameters, state.sequence_depth));
        state.action = Some(action);
        state.phase = Phase::Sequencing;
        self.advance_sequence(state);
        Action::Pause
    }

    /// Invokes the sequence's next component, or answers with the sequence's record once it is over.
    fn advance_sequence(&self, state: &mut State) {
        loop {
            let Some(run) = state.sequence.as_mut() else { return };
            let (path, body) = match run.step() {
                Step::Invoke { path, body } => (path, body),
                Step::Done => return self.finish_sequence(state),
            };
            // A fresh id for the component, known before it runs; the sequence's id as its cause.
            let component_id = new_id();
            let depth = state.sequence_depth.saturating_add(1).to_string();
            let mut extra = vec![
                (headers::INTERNAL_CAUSE, state.activation_id.as_str()),
                (headers::SEQUENCE_DEPTH, &depth),
            ];
            // A web request's sequence has no key for its components: they run as its owner, as
            // in OpenWhisk (and so do the components of a sequence nested in it).
            if (state.web_resolve || state.run_as.is_some())
                && let Some(owner) = state.action.as_ref().map(|action| action.subject.as_str())
            {
                extra.push((headers::INTERNAL_SUBJECT, owner));
            }
            let call = invoke_internally(
                &self.shared,
                &path,
                &state.authorization,
                &component_id,
                &extra,
                &body,
                run_bound(&self.shared.config, None),
            );
            match call {
                Ok(token) => {
                    state.callout = Some((token, Callout::Component));
                    return;
                }
                Err(status) => {
                    error!("sequence {}: component call failed to start: {status:?}", state.activation_id);
                    // Accounted as a component that never answered: the sequence ends.
                    run.absorb(0, b"");
                }
            }
        }
    }

    /// A component answered: account for it, then go on or end.
    fn on_component(&self, state: &mut State, status: u16, body: &[u8]) {
        let Some(run) = state.sequence.as_mut() else { return };
        if !run.absorb(status, body) {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            warn!(
                "sequence {}: a component answered {status} without a record: {excerpt}",
                state.activation_id
            );
        }
        self.advance_sequence(state);
    }

    /// The sequence is over: its record to the outbox, the record (or result) to the client.
    fn finish_sequence(&self, state: &mut State) {
        let (Some(run), Some(action)) = (state.sequence.take(), state.action.as_ref()) else { return };
        let record =
            run.record(action, &state.activation_id, state.timing.arrived, now_ms(), state.cause.clone());
        let result_only = state.invocation.as_ref().is_some_and(|i| i.result_only);
        let (status, body) = activation::reply(&record, result_only);
        self.shared.outbox.borrow_mut().push_back(Outgoing::Record(record));
        let activation_id = state.activation_id.clone();
        answer(state, u32::from(status), vec![(headers::ACTIVATION_ID, &activation_id)], &body);
    }

    /// An activation refused with 421 runs again, once, under the same activation id, instead of
    /// failing: the route's retries went to other containers, each of which refused it before
    /// running anything (its container was new and this worker did not route to it yet, or it was
    /// removed behind the filter's back). The claimed container is retired, and the run again
    /// claims anew. A client's blocking invoke waits for it detached (it may answer 202 at the end
    /// of the client's wait); an internal run (non-blocking, detached, web, a sequence's
    /// component) sends it from this stream and relays its answer to whoever waits on this one.
    /// True when it runs again.
    fn rerun_misrouted(&self, state: &mut State) -> bool {
        if state.rerun || state.web.is_some() || state.answered.status != 421 || !answered_by_upstream() {
            return false;
        }
        let Some(action) = state.action.clone() else { return false };
        let Some(claim) = state.claim.take() else { return false };
        warn!("activation {} misrouted with container {claim}: runs again", state.activation_id);
        self.shared.retire(claim, 0);
        Counters::bump(self.shared.counters.misrouted_reruns);
        state.rerun = true;
        if state.internal_activation_id.is_none() {
            self.shared.detach(&self.state, state, &action, None, state.context_id);
            return true;
        }
        // The run again counts in flight on its own stream, not twice.
        if let Some(namespace) = state.in_flight.take() {
            limits::leave(&EnvoySharedData, &namespace);
        }
        let (arrived, depth) = (state.timing.arrived.to_string(), state.sequence_depth.to_string());
        let mut extra = vec![
            (headers::INTERNAL_RERUN, "1"),
            (headers::INTERNAL_ARRIVED, arrived.as_str()),
            (headers::SEQUENCE_DEPTH, depth.as_str()),
        ];
        if let Some(cause) = &state.cause {
            extra.push((headers::INTERNAL_CAUSE, cause));
        }
        if let Some(owner) = &state.run_as {
            extra.push((headers::INTERNAL_SUBJECT, owner));
        }
        if state.web_resolve {
            extra.push((headers::INTERNAL_WEB, "1"));
            if let Some(secret) = &state.web_secret {
                extra.push((headers::REQUIRE_WHISK_AUTH, secret));
            }
        }
        let call = invoke_internally(
            &self.shared,
            &state.original_path,
            &state.authorization,
            &state.activation_id,
            &extra,
            &state.body,
            run_bound(&self.shared.config, Some(&action)),
        );
        match call {
            Ok(token) => {
                state.callout = Some((token, Callout::Rerun));
                state.phase = Phase::Rerunning;
            }
            Err(status) => {
                error!("activation {}: its run again failed to start: {status:?}", state.activation_id);
                answer_error(state, 503, messages::INTERNAL_ERROR);
            }
        }
        true
    }

    /// The container's answer is complete: record, release, reply. Returns the prefix whose waiters
    /// may now be served.
    fn finish(&self, state: &mut State, body: Vec<u8>, has_body: bool) -> Option<String> {
        span!("finish");
        // Shared with the record (no copy of the action per invoke).
        let action = Rc::clone(state.action.as_ref()?);
        state.timing.end = now_ms();
        let container_status = state.answered.status;
        // Only an answer that came from the container proves the container is done with it;
        // anything Envoy produced itself (timeout, reset) leaves the container possibly busy.
        // Envoy's own answers (timeouts, resets, no host) are never 200, and a 200 reaches this
        // callback only whole: a 200 is the container's, without asking Envoy (a call out of the VM).
        let via_upstream = container_status == 200 || answered_by_upstream();
        let mut timed_out = false;
        // Our runtime refuses a /run before running it: 409 while busy, 421 when it is not the
        // container the request was stamped for (the route's retries did not find that one).
        let refused = matches!(container_status, 409 | 421);
        let body_length = body.len();
        let (response, next) = if via_upstream && !refused && activation::is_success(container_status, &body)
        {
            // The common case, told apart without building the body: the record parses it later.
            (Answer::Success(body), SlotState::Free)
        } else if via_upstream && !refused {
            let response = activation::classify(container_status, &body);
            if activation::is_runtime_timeout(&response) {
                // The runtime ended the activation at its deadline and restarted the action process:
                // the container stays usable.
                timed_out = true;
                (Answer::Classified(activation::timed_out(action.limits.timeout)), SlotState::Free)
            } else {
                (Answer::Classified(response), SlotState::Free)
            }
        } else if via_upstream {
            // Refused (busy, or the claimed container is not where its address leads): never use
            // the claimed one again.
            warn!(
                "container {} refused activation {}: {}",
                state.claim.as_ref().map(|claim| claim.container_id.as_str()).unwrap_or_default(),
                state.activation_id,
                String::from_utf8_lossy(&body)
            );
            (
                Answer::Classified(ActivationResponse::new(
                    ActivationStatus::WhiskError,
                    serde_json::json!({ "error": messages::INTERNAL_ERROR }),
                )),
                SlotState::Retired,
            )
        } else if container_status == 504 {
            // Envoy gave up on the container: it may still be running the activation.
            timed_out = true;
            (Answer::Classified(activation::timed_out(action.limits.timeout)), SlotState::Retired)
        } else {
            (
                Answer::Classified(ActivationResponse::new(
                    ActivationStatus::DeveloperError,
                    serde_json::json!({ "error": messages::ABNORMAL_RUN }),
                )),
                SlotState::Retired,
            )
        };
        let freed = {
            span!("release");
            match state.claim.take() {
                Some(claim) if next == SlotState::Retired => {
                    self.shared.retire(claim, 0);
                    false
                }
                Some(claim) => {
                    let freed = pool::release(&EnvoySharedData, &claim, next);
                    if freed {
                        self.shared.remember_freed(&state.prefix, claim.key);
                    }
                    freed
                }
                None => false,
            }
        };
        let logs_sent = state.answered.logs.is_some();
        let finished = activation::Finished {
            action,
            activation_id: state.activation_id.clone(),
            answer: response,
            logs: state.answered.logs.take(),
            timing: state.timing,
            timed_out,
            cause: state.cause.clone(),
        };
        let status = finished.answer.status().http_status();
        // `None`: the container's answer is the reply as it came.
        let reply = if state.invocation.as_ref().is_some_and(|i| i.result_only) {
            let reply = match &finished.answer {
                Answer::Success(_) => None,
                Answer::Classified(response) => {
                    Some(serde_json::to_vec(&response.result).unwrap_or_default())
                }
            };
            self.shared.outbox.borrow_mut().push_back(Outgoing::Finished(Box::new(finished)));
            reply
        } else {
            let record = finished.record();
            let (_, reply) = activation::reply(&record, false);
            self.shared.outbox.borrow_mut().push_back(Outgoing::Record(record));
            Some(reply)
        };
        let activation_id = state.activation_id.clone();
        if has_body {
            span!("finish_response_write");
            // Header by header: each write is a short call into Envoy, where replacing the whole
            // map has Envoy clear it and add every header back.
            let mut numbers = itoa::Buffer::new();
            if status != container_status {
                self.set_http_response_header(":status", Some(numbers.format(status)));
            }
            if !state.answered.json {
                self.set_http_response_header("content-type", Some(JSON));
            }
            if let Some(reply) = &reply {
                self.set_http_response_header("content-length", Some(numbers.format(reply.len())));
            }
            self.set_http_response_header(headers::ACTIVATION_ID, Some(&activation_id));
            if logs_sent {
                self.set_http_response_header(headers::RUNTIME_LOGS, None);
            }
            if let Some(reply) = &reply {
                self.set_http_response_body(0, body_length.max(usize::MAX / 2), reply);
            }
        } else {
            // A bodyless answer has no buffer to rewrite: reply locally (headers not sent yet).
            let reply = reply.unwrap_or_default();
            answer(state, u32::from(status), vec![(headers::ACTIVATION_ID, &activation_id)], &reply);
        }
        freed.then(|| state.prefix.clone())
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let _callback = Callback::enter(Entry::RequestCallout);
        let status: u16 =
            self.get_http_call_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        // A run this request's callback started (its own, as a rule).
        let current = self.state.borrow().context_id;
        if self.shared.on_run_answered(token, status, &body, current) {
            return;
        }
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        let Some((expected, kind)) = state.callout.take() else { return };
        let phase = match kind {
            Callout::Resolve => Phase::Receiving,
            Callout::Component => Phase::Sequencing,
            Callout::Rerun => Phase::Rerunning,
        };
        if expected != token || state.phase != phase {
            warn!("unexpected callout answer {token}");
            return;
        }
        match kind {
            Callout::Component => return self.on_component(&mut state, status, &body),
            // The run again's answer (its record, or an error) is this run's.
            Callout::Rerun => {
                let activation_id = state.activation_id.clone();
                let status = if status == 0 { 503 } else { u32::from(status) };
                return answer(&mut state, status, vec![(headers::ACTIVATION_ID, &activation_id)], &body);
            }
            Callout::Resolve => {}
        }
        let generation = self.get_http_call_response_header(headers::GENERATION);
        self.on_resolved(&mut state, status, body, generation);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let _callback = Callback::enter(Entry::RequestHeaders);
        let sent = {
            span!("request_headers_read");
            HeaderList(self.get_http_request_headers())
        };
        let internal = self.take_internal_headers(&sent);
        let method = sent.get(":method").unwrap_or_default().to_owned();
        let path = sent.get(":path").unwrap_or_default().to_owned();
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        match route::classify(&method, &path) {
            Route::PassThrough => {
                state.entity_write = path.starts_with("/api/v1/")
                    && !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS")
                    && !path.contains("/triggers/");
                Action::Continue
            }
            Route::Internal => {
                answer_error(&mut state, 404, messages::RESOURCE_DOES_NOT_EXIST);
                Action::Pause
            }
            Route::Web(target) => {
                state.timing.arrived = now_ms();
                state.activation_id = new_id();
                state.authorization = sent.get("authorization").unwrap_or_default().to_owned();
                state.web_secret = sent.get(headers::REQUIRE_WHISK_AUTH).map(str::to_owned);
                state.web_resolve = true;
                state.original_path = path;
                // What the action sees: the client's headers, none of ours.
                let visible =
                    sent.0.into_iter().filter(|(name, _)| !name.starts_with(headers::INTERNAL_PREFIX));
                let http = web::HttpRequest { method, headers: visible.collect(), body: Vec::new() };
                state.web = Some(WebRequest { target, http, export: web::Export::default() });
                if !end_of_stream {
                    return Action::Pause;
                }
                self.start_web(&mut state)
            }
            Route::Invoke(invocation) => {
                state.timing.arrived = now_ms();
                if let Some(internal) = internal {
                    if let Some(arrived) = internal.arrived {
                        state.timing.arrived = arrived.min(state.timing.arrived);
                    }
                    // Adopted at once, so that the root never takes back a container this run holds.
                    state.handed = internal.claim.filter(|claim| pool::adopt(&EnvoySharedData, claim));
                    state.activation_id = internal.activation_id.clone();
                    state.internal_activation_id = Some(internal.activation_id);
                    state.cause = internal.cause;
                    state.run_as = internal.run_as;
                    state.sequence_depth = internal.sequence_depth;
                    state.rerun = internal.rerun;
                    state.web_resolve = internal.web;
                    if internal.web {
                        state.web_secret = sent.get(headers::REQUIRE_WHISK_AUTH).map(str::to_owned);
                    }
                } else {
                    state.activation_id = new_id();
                }
                state.authorization = sent.get("authorization").unwrap_or_default().to_owned();
                state.original_path = path;
                state.request_headers = HeaderList(
                    sent.0.into_iter().filter(|(name, _)| envelope::is_passed_to_runs(name)).collect(),
                );
                let blocking = invocation.blocking;
                state.invocation = Some(invocation);
                if !end_of_stream {
                    return Action::Pause;
                }
                // Envoy cannot give a bodyless request a body later, and /run needs one: unless it
                // is answered without a container, it runs detached once resolved and admitted.
                state.bodyless = blocking && state.internal_activation_id.is_none();
                self.start_resolve(&mut state)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let _callback = Callback::enter(Entry::RequestBody);
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        if (state.invocation.is_none() && state.web.is_none()) || state.phase != Phase::Receiving {
            return Action::Continue;
        }
        if body_size > self.shared.config.max_payload_bytes {
            answer_error(&mut state, 413, messages::ENTITY_TOO_BIG);
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if let Some(request) = state.web.as_mut() {
            request.http.body = body;
            return self.start_web(&mut state);
        }
        state.body = body;
        self.start_resolve(&mut state)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let _callback = Callback::enter(Entry::ResponseHeaders);
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        if state.entity_write {
            let status = self.get_http_response_header(":status").unwrap_or_default();
            if status.starts_with('2') {
                // An entity changed: drop this Envoy's cached resolutions before the client even
                // sees the answer, so its next invoke cannot run what was replaced. A generation no
                // resolve answer carries disables the cache until the long-poll fetches the real one.
                let _ = EnvoySharedData.set(
                    cache::GENERATION_KEY,
                    format!("local-{}", new_id()).as_bytes(),
                    None,
                );
            }
            return Action::Continue;
        }
        if state.phase != Phase::Forwarded {
            return Action::Continue;
        }
        // All of them in one call: finish reads and rewrites them.
        state.answered = {
            span!("response_headers_read");
            Answered::from(self.get_http_response_headers())
        };
        if !end_of_stream {
            return Action::Pause;
        }
        if self.rerun_misrouted(&mut state) {
            return Action::Pause;
        }
        let freed = self.finish(&mut state, Vec::new(), false);
        let context_id = state.context_id;
        drop(state);
        if let Some(prefix) = freed {
            self.shared.serve_waiters(&prefix, context_id);
        }
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let _callback = Callback::enter(Entry::ResponseBody);
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        if state.phase != Phase::Forwarded {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if self.rerun_misrouted(&mut state) {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        let freed = self.finish(&mut state, body, true);
        let context_id = state.context_id;
        drop(state);
        // This worker's waiters get the container at once; other workers' on their next tick.
        if let Some(prefix) = freed {
            self.shared.serve_waiters(&prefix, context_id);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let _callback = Callback::enter(Entry::Log);
        let Ok(mut state) = self.state.try_borrow_mut() else { return };
        state.phase = Phase::Ended;
        if let Some(namespace) = state.in_flight.take() {
            span!("leave");
            limits::leave(&EnvoySharedData, &namespace);
        }
        // A handed-over container this run never reached is as its client's stream left it: idle.
        if let Some(claim) = state.handed.take() {
            pool::release(&EnvoySharedData, &claim, SlotState::Free);
        }
        // The stream ended before the container answered (client gone, reset): the container may
        // still be running the activation, so it is retired, never handed out again.
        if let Some(claim) = state.claim.take() {
            warn!("activation {} ended without an answer; retiring container {claim}", state.activation_id);
            // The activation may still be running: let it reach its deadline before the stop.
            self.shared.retire(claim, state.deadline_ms.saturating_sub(now_ms()));
        }
    }
}
