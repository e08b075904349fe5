//! Sequences in the data plane: which component to invoke next with what input, and the sequence's
//! activation record from its components' answers, as OpenWhisk's controller does them.
//!
//! ```text
//!  invoke of a sequence ─► Run::start (defaults < invoke parameters = first input)
//!   ┌─► step ── Invoke{path, body} ─► shell: blocking internal invoke through the ingress
//!   │                                       (same routing, waiting, cold starts as any invoke)
//!   └── absorb(status, body) ◄──────── the component's activation record (or an error answer)
//!       result without `error` → input of the next; otherwise the sequence ends with it
//!  step ── Done ─► record: logs = component ids, duration = their sum, response = the last one
//! ```
//!
//! Each component gets its own record through the normal path (its `cause` is the sequence's id);
//! the sequence gets one more, built by [`Run::record`].

use serde_json::{Map, Value, json};
use whisk_contract::{
    ActionLimits, ActivationRecord, ActivationResponse, ActivationStatus, KeyValue, ResolvedAction,
    SEQUENCE_KIND, SEQUENCE_LIMIT, messages,
};

use crate::route::blocking_invoke_path;
use crate::{activation, envelope};

/// How deep sequences may nest at run time. The management API refuses cycles and more than
/// [`SEQUENCE_LIMIT`] atomic actions when a sequence is written, but two updates racing each other
/// can still close a loop; this bound ends it (with OpenWhisk's "too many actions" error).
pub const MAX_DEPTH: u32 = SEQUENCE_LIMIT as u32;

/// A component as the filter invokes it.
pub use whisk_contract::QualifiedName as Component;

/// What the shell does next for a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Invoke a component, blocking, at `path` (through the ingress) with `body` as parameters.
    Invoke { path: String, body: Vec<u8> },
    /// The sequence is over: build its record.
    Done,
}

/// One run of a sequence, from its first component to its record.
#[derive(Debug, Clone)]
pub struct Run {
    components: Vec<Component>,
    next: usize,
    /// The next component's parameters: the previous result (or the sequence's input).
    input: Map<String, Value>,
    /// The components' activation ids, in order: the sequence record's `logs`.
    ids: Vec<String>,
    /// Sum of the components' durations (OpenWhisk's "user time" of a sequence).
    duration: u64,
    /// The most memory any component was limited to, from their records' `limits` annotations.
    max_memory: Option<u64>,
    /// The last component's response, or why the sequence ended without one.
    response: Option<ActivationResponse>,
    ended: bool,
}

impl Run {
    /// A run of the sequence `action` with the invoke's `parameters`: the sequence's defaults are
    /// merged under them into the first component's input only, as in OpenWhisk. `depth` is how
    /// many sequences enclose this one (0 when invoked directly).
    pub fn start(action: &ResolvedAction, parameters: Map<String, Value>, depth: u32) -> Self {
        let input = envelope::merge_parameters(&action.parameters, parameters);
        let components: Option<Vec<Component>> =
            action.components.iter().flatten().map(|text| Component::parse(text)).collect();
        let mut run = Self {
            components: components.clone().unwrap_or_default(),
            next: 0,
            input,
            ids: Vec::new(),
            duration: 0,
            max_memory: None,
            response: None,
            ended: false,
        };
        match components {
            // The management API stores only names it parsed: this is a damaged entity.
            None => run.fail(ActivationStatus::WhiskError, messages::SEQUENCE_FAILED),
            Some(components) if components.is_empty() => {
                run.fail(ActivationStatus::WhiskError, messages::SEQUENCE_FAILED)
            }
            Some(components) if components.len() > SEQUENCE_LIMIT || depth >= MAX_DEPTH => {
                run.fail(ActivationStatus::ApplicationError, messages::SEQUENCE_TOO_LONG)
            }
            Some(_) => {}
        }
        run
    }

    fn fail(&mut self, status: ActivationStatus, message: &str) {
        self.response = Some(ActivationResponse::new(status, json!({ "error": message })));
        self.ended = true;
    }

    /// The next step: invoke the next component with the current input, or stop.
    pub fn step(&mut self) -> Step {
        if self.ended {
            return Step::Done;
        }
        let Some(component) = self.components.get(self.next) else {
            self.ended = true;
            return Step::Done;
        };
        self.next += 1;
        let body = serde_json::to_vec(&self.input).unwrap_or_else(|_| b"{}".to_vec());
        let path = blocking_invoke_path(&component.namespace, component.package.as_deref(), &component.name);
        Step::Invoke { path, body }
    }

    /// Takes in the answer of the component last invoked. An activation record (whatever its
    /// status) is accounted; a result without an `error` field becomes the next input, anything
    /// else ends the sequence with it. An answer without a record ends the sequence: 404 as
    /// OpenWhisk's "component does not exist" (deleted since), anything else as a platform failure.
    /// Returns whether the answer was an activation record.
    pub fn absorb(&mut self, status: u16, body: &[u8]) -> bool {
        let Ok(record) = serde_json::from_slice::<ActivationRecord>(body) else {
            if status == 404 {
                self.fail(ActivationStatus::ApplicationError, messages::SEQUENCE_COMPONENT_NOT_FOUND);
            } else {
                self.fail(ActivationStatus::WhiskError, messages::SEQUENCE_FAILED);
            }
            return false;
        };
        self.ids.push(record.activation_id);
        self.duration = self.duration.saturating_add(record.duration);
        let memory = record
            .annotations
            .iter()
            .find(|annotation| annotation.key == "limits")
            .and_then(|limits| limits.value.get("memory"))
            .and_then(Value::as_u64);
        self.max_memory = self.max_memory.max(memory);
        // OpenWhisk goes on exactly when the result is an object without an `error` field.
        match &record.response.result {
            Value::Object(result) if !result.contains_key("error") => self.input = result.clone(),
            _ => self.ended = true,
        }
        self.response = Some(record.response);
        true
    }

    /// The sequence's activation record. `cause` is the enclosing sequence's activation for a
    /// nested sequence (then it is not `topmost`), `None` for one invoked directly. `start` and `end`
    /// are the sequence's own times (epoch ms); its duration is the sum of its components'.
    pub fn record(
        &self,
        action: &ResolvedAction,
        activation_id: &str,
        start: u64,
        end: u64,
        cause: Option<String>,
    ) -> ActivationRecord {
        let topmost = cause.is_none();
        let mut annotations = vec![
            KeyValue { key: "topmost".into(), value: json!(topmost) },
            KeyValue { key: "path".into(), value: json!(action.path()) },
            KeyValue { key: "kind".into(), value: json!(SEQUENCE_KIND) },
        ];
        if !topmost {
            annotations.push(KeyValue { key: "causedBy".into(), value: json!(SEQUENCE_KIND) });
        }
        if let Some(memory) = self.max_memory {
            // The sequence's own limits, with the largest memory of its components (what it held).
            let limits = ActionLimits { memory, ..action.limits };
            annotations.push(KeyValue {
                key: "limits".into(),
                value: serde_json::to_value(limits).unwrap_or(Value::Null),
            });
        }
        let response = self.response.clone().unwrap_or_else(|| {
            ActivationResponse::new(
                ActivationStatus::WhiskError,
                json!({ "error": messages::SEQUENCE_FAILED }),
            )
        });
        let outcome = activation::Outcome {
            start,
            end,
            duration: self.duration,
            response,
            logs: self.ids.clone(),
            annotations,
        };
        activation::identified(action, activation_id, outcome, cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Timing;

    fn sequence(components: &[&str]) -> ResolvedAction {
        ResolvedAction {
            name: "chain".into(),
            kind: SEQUENCE_KIND.into(),
            limits: ActionLimits { timeout: 30_000, ..ActionLimits::default() },
            components: Some(components.iter().map(|c| (*c).to_owned()).collect()),
            web_user: None,
            ..envelope::action()
        }
    }

    /// The record a component's invoke answers with, as the filter builds it.
    fn answer(id: &str, memory: u64, duration: u64, response: ActivationResponse) -> Vec<u8> {
        let action = ResolvedAction {
            limits: ActionLimits { memory, ..ActionLimits::default() },
            ..envelope::action()
        };
        let timing = Timing { arrived: 100, forwarded: 100, end: 100 + duration, init_ms: None };
        let record = activation::record(&action, id, response, vec![], timing);
        serde_json::to_vec(&record).unwrap()
    }

    fn success(result: Value) -> ActivationResponse {
        ActivationResponse::new(ActivationStatus::Success, result)
    }

    fn invoked(step: Step) -> (String, Value) {
        match step {
            Step::Invoke { path, body } => (path, serde_json::from_slice(&body).unwrap()),
            Step::Done => panic!("the sequence ended early"),
        }
    }

    fn annotation(record: &ActivationRecord, key: &str) -> Option<Value> {
        record.annotations.iter().find(|a| a.key == key).map(|a| a.value.clone())
    }

    #[test]
    fn components_are_fully_qualified_and_invoked_blocking_through_the_api() {
        let path = |c: &Component| blocking_invoke_path(&c.namespace, c.package.as_deref(), &c.name);
        let packaged = Component::parse("/guest/my pkg/b@x").unwrap();
        assert_eq!(path(&packaged), "/api/v1/namespaces/guest/actions/my%20pkg/b%40x?blocking=true");
        assert_eq!(
            path(&Component::parse("/guest/a").unwrap()),
            "/api/v1/namespaces/guest/actions/a?blocking=true"
        );
        // The path the filter builds is one it routes as an invoke of that very component.
        let route = crate::route::classify("POST", &path(&packaged));
        let crate::route::Route::Invoke(invocation) = route else { panic!("{route:?}") };
        assert_eq!((invocation.package.as_deref(), invocation.name.as_str()), (Some("my pkg"), "b@x"));
        assert!(invocation.blocking && !invocation.result_only);
    }

    #[test]
    fn each_result_is_the_next_input_and_defaults_reach_the_first_only() {
        let action = sequence(&["/guest/a", "/guest/utils/b", "/guest/c"]);
        let invoke = serde_json::from_value(json!({"n": 1})).unwrap();
        let mut run = Run::start(&action, invoke, 0);
        let (path, input) = invoked(run.step());
        assert_eq!(path, "/api/v1/namespaces/guest/actions/a?blocking=true");
        assert_eq!(input, json!({"n": 1, "greeting": "hi"}), "the sequence's defaults under the invoke's");
        assert!(run.absorb(200, &answer("id-a", 256, 5, success(json!({"n": 2})))));
        let (path, input) = invoked(run.step());
        assert_eq!(path, "/api/v1/namespaces/guest/actions/utils/b?blocking=true");
        assert_eq!(input, json!({"n": 2}), "no defaults past the first component");
        assert!(run.absorb(200, &answer("id-b", 512, 7, success(json!({"n": 4})))));
        let (_, input) = invoked(run.step());
        assert_eq!(input, json!({"n": 4}));
        assert!(run.absorb(200, &answer("id-c", 128, 11, success(json!({"text": "4"})))));
        assert_eq!(run.step(), Step::Done);
        assert_eq!(run.step(), Step::Done, "done stays done");

        let record = run.record(&action, "seq-id", 1_000, 1_050, None);
        assert_eq!(record.logs, ["id-a", "id-b", "id-c"]);
        assert_eq!(record.duration, 23, "the sum of the components' durations");
        assert_eq!((record.start, record.end), (1_000, 1_050));
        assert_eq!(record.response, success(json!({"text": "4"})));
        assert_eq!(record.name, "chain");
        assert_eq!(record.cause, None);
        assert_eq!(annotation(&record, "topmost"), Some(json!(true)));
        assert_eq!(annotation(&record, "kind"), Some(json!("sequence")));
        assert_eq!(annotation(&record, "path"), Some(json!("guest/chain")));
        assert_eq!(annotation(&record, "causedBy"), None);
        assert_eq!(
            annotation(&record, "limits"),
            Some(json!({"timeout": 30_000, "memory": 512, "logs": 10, "concurrency": 1})),
            "the sequence's limits with its components' largest memory"
        );
        let (status, body) = activation::reply(&record, true);
        assert_eq!((status, body), (200, br#"{"text":"4"}"#.to_vec()));
    }

    #[test]
    fn the_first_error_ends_the_sequence_with_it() {
        let action = sequence(&["/guest/a", "/guest/b", "/guest/c"]);
        let mut run = Run::start(&action, Map::new(), 0);
        invoked(run.step());
        run.absorb(200, &answer("id-a", 256, 5, success(json!({"n": 2}))));
        invoked(run.step());
        let thrown = ActivationResponse::new(ActivationStatus::DeveloperError, json!({"error": "boom"}));
        assert!(run.absorb(502, &answer("id-b", 256, 3, thrown.clone())));
        assert_eq!(run.step(), Step::Done, "c never runs");
        let record = run.record(&action, "seq-id", 1, 2, None);
        assert_eq!(record.response, thrown);
        assert_eq!(record.logs, ["id-a", "id-b"]);
        assert_eq!(activation::reply(&record, false).0, 502);

        // An application error (a result with `error`) ends it too, as does any result with an
        // `error` field in a success (OpenWhisk looks at the field, not the status).
        for response in [
            ActivationResponse::new(ActivationStatus::ApplicationError, json!({"error": "no"})),
            success(json!({"error": "in a success"})),
        ] {
            let mut run = Run::start(&action, Map::new(), 0);
            invoked(run.step());
            run.absorb(200, &answer("id-a", 256, 5, response.clone()));
            assert_eq!(run.step(), Step::Done);
            assert_eq!(run.record(&action, "s", 1, 2, None).response, response);
        }
    }

    #[test]
    fn a_component_without_a_record_ends_the_sequence_in_openwhisks_terms() {
        let action = sequence(&["/guest/a", "/guest/b"]);
        let mut run = Run::start(&action, Map::new(), 0);
        invoked(run.step());
        run.absorb(200, &answer("id-a", 256, 5, success(json!({}))));
        invoked(run.step());
        let missing = br#"{"error":"The requested resource does not exist.","code":"c"}"#;
        assert!(!run.absorb(404, missing));
        assert_eq!(run.step(), Step::Done);
        let record = run.record(&action, "s", 1, 2, None);
        assert_eq!(record.response.status, ActivationStatus::ApplicationError);
        assert_eq!(record.response.result, json!({"error": "Sequence component does not exist."}));
        assert_eq!(record.logs, ["id-a"], "no id for an activation that never was");

        for (status, body) in [(503, &br#"{"error":"x","code":"c"}"#[..]), (0, &b""[..]), (429, &b"{}"[..])] {
            let mut run = Run::start(&action, Map::new(), 0);
            invoked(run.step());
            assert!(!run.absorb(status, body));
            assert_eq!(run.step(), Step::Done);
            let record = run.record(&action, "s", 1, 2, None);
            assert_eq!(record.response.status, ActivationStatus::WhiskError);
            assert_eq!(record.response.result["error"], "Sequence failed.");
            assert_eq!(activation::reply(&record, false).0, 500);
            assert!(record.logs.is_empty());
            assert_eq!(annotation(&record, "limits"), None, "no component ran: no memory to show");
        }
    }

    #[test]
    fn nested_sequences_are_not_topmost_and_name_their_cause() {
        let action = sequence(&["/guest/a"]);
        let mut run = Run::start(&action, Map::new(), 1);
        invoked(run.step());
        run.absorb(200, &answer("id-a", 256, 5, success(json!({}))));
        let record = run.record(&action, "inner", 1, 2, Some("outer".into()));
        assert_eq!(record.cause.as_deref(), Some("outer"));
        assert_eq!(annotation(&record, "topmost"), Some(json!(false)));
        assert_eq!(annotation(&record, "causedBy"), Some(json!("sequence")));
    }

    #[test]
    fn runaway_nesting_and_damaged_components_end_at_once() {
        let action = sequence(&["/guest/a"]);
        let mut run = Run::start(&action, Map::new(), MAX_DEPTH);
        assert_eq!(run.step(), Step::Done);
        let record = run.record(&action, "s", 1, 2, Some("outer".into()));
        assert_eq!(record.response.result["error"], "Too many actions in the sequence.");
        assert_eq!(record.response.status, ActivationStatus::ApplicationError);

        let mut damaged = Run::start(&sequence(&["/guest/a", "nonsense"]), Map::new(), 0);
        assert_eq!(damaged.step(), Step::Done);
        let record = damaged.record(&action, "s", 1, 2, None);
        assert_eq!(record.response.status, ActivationStatus::WhiskError);
        let mut empty = Run::start(&sequence(&[]), Map::new(), 0);
        assert_eq!(empty.step(), Step::Done);
    }

    proptest::proptest! {
        /// Whatever the components answer, a run invokes each component at most once, in order,
        /// ends, and its record lists exactly the ids of the records it was given.
        #[test]
        fn a_run_always_ends_with_the_ids_it_saw(
            answers in proptest::collection::vec((0u8..4, 0u64..1_000), 1..8),
        ) {
            let names: Vec<String> = (0..answers.len()).map(|i| format!("/guest/c{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let action = sequence(&names);
            let mut run = Run::start(&action, Map::new(), 0);
            let mut seen = Vec::new();
            let mut invoked = 0;
            for (index, (kind, duration)) in answers.iter().enumerate() {
                let Step::Invoke { path, .. } = run.step() else { break };
                invoked += 1;
                proptest::prop_assert_eq!(path, format!("/api/v1/namespaces/guest/actions/c{index}?blocking=true"));
                let id = format!("id{index}");
                let body = match kind {
                    0 => answer(&id, 256, *duration, success(json!({"i": index}))),
                    1 => answer(&id, 256, *duration, ActivationResponse::new(ActivationStatus::ApplicationError, json!({"error": "x"}))),
                    2 => br#"{"error":"gone","code":"c"}"#.to_vec(),
                    _ => b"not json".to_vec(),
                };
                if run.absorb(if *kind == 2 { 404 } else { 200 }, &body) {
                    seen.push(id);
                }
            }
            proptest::prop_assert_eq!(run.step(), Step::Done);
            proptest::prop_assert!(invoked <= answers.len());
            let record = run.record(&action, "s", 0, 1, None);
            proptest::prop_assert_eq!(record.logs, seen);
        }
    }
}
