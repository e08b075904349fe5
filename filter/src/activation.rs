//! From the container's answer to OpenWhisk's activation record, and from the record to the reply a
//! blocking invoke gets (the record, or the bare result with `result=true`).

use std::rc::Rc;

use base64::Engine;
use serde_json::{Value, json};
use whisk_contract::{
    ActivationRecord, ActivationResponse, ActivationStatus, KeyValue, ResolvedAction, messages,
};

/// Classifies a `/run` answer the way OpenWhisk's invoker does: a JSON object from a 200 is the
/// result (an `error` field in it makes an application error); an object with `error` from any
/// other status is a developer error; anything that is not a JSON object is a developer error.
pub fn classify(status: u16, body: &[u8]) -> ActivationResponse {
    let parsed = serde_json::from_slice::<Value>(body);
    match parsed {
        Ok(Value::Object(fields)) if status == 200 => match fields.get("error") {
            Some(error) => {
                ActivationResponse::new(ActivationStatus::ApplicationError, json!({"error": error}))
            }
            None => ActivationResponse::new(ActivationStatus::Success, Value::Object(fields)),
        },
        Ok(Value::Object(fields)) if fields.contains_key("error") => {
            let error = fields.get("error").cloned().unwrap_or(Value::Null);
            ActivationResponse::new(ActivationStatus::DeveloperError, json!({"error": error}))
        }
        Ok(Value::Object(_)) | Ok(_) if status == 200 => ActivationResponse::new(
            ActivationStatus::DeveloperError,
            json!({"error": messages::NOT_A_JSON_OBJECT}),
        ),
        _ => ActivationResponse::new(
            ActivationStatus::DeveloperError,
            json!({"error": messages::ABNORMAL_RUN}),
        ),
    }
}

/// Whether a 200's body is a success (a JSON object without a top-level `error`), found without
/// building it: the record parses it later, off the request's path ([`Answer::Success`]).
pub fn is_success(status: u16, body: &[u8]) -> bool {
    status == 200 && serde_json::from_slice::<TopLevel>(body).is_ok_and(|top| !top.has_error)
}

/// What [`is_success`] reads of a body: that it is an object, and whether it has `error`.
struct TopLevel {
    has_error: bool,
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TopLevelKeys)
    }
}

struct TopLevelKeys;

impl<'de> serde::de::Visitor<'de> for TopLevelKeys {
    type Value = TopLevel;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut has_error = false;
        while let Some(IsError(is_error)) = map.next_key()? {
            has_error |= is_error;
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(TopLevel { has_error })
    }
}

/// A key read only for whether it is `error` (borrowed where it can be: nothing allocated).
struct IsError(bool);

impl<'de> serde::Deserialize<'de> for IsError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(IsErrorVisitor)
    }
}

struct IsErrorVisitor;

impl serde::de::Visitor<'_> for IsErrorVisitor {
    type Value = IsError;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsError, E> {
        Ok(IsError(key == "error"))
    }
}

/// A container's answer, for the record.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Classified already ([`classify`], or an answer the filter made up).
    Classified(ActivationResponse),
    /// A success ([`is_success`]): the body as it came, parsed when the record is built; a
    /// `result=true` reply is this body, untouched.
    Success(Vec<u8>),
}

impl Answer {
    pub fn status(&self) -> ActivationStatus {
        match self {
            Self::Classified(response) => response.status,
            Self::Success(_) => ActivationStatus::Success,
        }
    }

    pub fn response(self) -> ActivationResponse {
        match self {
            Self::Classified(response) => response,
            Self::Success(body) => classify(200, &body),
        }
    }
}

/// Decodes the runtime's logs header; a missing or damaged header means no logs, not a failure.
pub fn decode_logs(header: Option<&str>) -> Vec<String> {
    // No lines, as a runtime says it most of the time: spares the decoders' first use per answer.
    if header.is_none_or(|value| value.trim() == NO_LINES) {
        return Vec::new();
    }
    header
        .and_then(|value| base64::engine::general_purpose::STANDARD.decode(value.trim()).ok())
        .and_then(|bytes| serde_json::from_slice::<Vec<String>>(&bytes).ok())
        .unwrap_or_default()
}

/// `[]` in base64: the logs header of an activation that logged nothing.
const NO_LINES: &str = "W10=";

/// Timing of one activation, epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the request reached the filter.
    pub arrived: u64,
    /// When the request was sent to the container (after a cold start, if any).
    pub forwarded: u64,
    pub end: u64,
    /// `/init` time on a cold start.
    pub init_ms: Option<u64>,
}

/// Builds the record. On a cold start the activation's `start` includes `/init`, as in OpenWhisk.
pub fn record(
    action: &ResolvedAction,
    activation_id: &str,
    response: ActivationResponse,
    logs: Vec<String>,
    timing: Timing,
) -> ActivationRecord {
    let start = timing.forwarded.saturating_sub(timing.init_ms.unwrap_or(0)).max(timing.arrived);
    let mut annotations = vec![
        KeyValue { key: "path".into(), value: json!(action.path()) },
        KeyValue { key: "kind".into(), value: json!(action.kind) },
        KeyValue { key: "limits".into(), value: serde_json::to_value(action.limits).unwrap_or(Value::Null) },
        KeyValue { key: "timeout".into(), value: json!(false) },
        KeyValue { key: "waitTime".into(), value: json!(start.saturating_sub(timing.arrived)) },
    ];
    if let Some(init_ms) = timing.init_ms {
        annotations.push(KeyValue { key: "initTime".into(), value: json!(init_ms) });
    }
    let outcome = Outcome {
        start,
        end: timing.end,
        duration: timing.end.saturating_sub(start),
        response,
        logs,
        annotations,
    };
    identified(action, activation_id, outcome, None)
}

/// An activation that is over, as its record's ingredients: the record is built when the records
/// go out in a batch, off the request's path, unless the reply is the record itself.
#[derive(Debug, Clone)]
pub struct Finished {
    pub action: Rc<ResolvedAction>,
    pub activation_id: String,
    pub answer: Answer,
    /// The runtime's logs header as it came.
    pub logs: Option<String>,
    pub timing: Timing,
    /// Ended by its time limit (the runtime's, or Envoy's).
    pub timed_out: bool,
    /// The enclosing sequence's activation.
    pub cause: Option<String>,
}

impl Finished {
    pub fn record(self) -> ActivationRecord {
        let logs = decode_logs(self.logs.as_deref());
        let mut record = record(&self.action, &self.activation_id, self.answer.response(), logs, self.timing);
        if self.timed_out {
            mark_timed_out(&mut record);
        }
        record.cause = self.cause;
        record
    }
}

/// What happened in an activation, for its record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub start: u64,
    pub end: u64,
    pub duration: u64,
    pub response: ActivationResponse,
    pub logs: Vec<String>,
    pub annotations: Vec<KeyValue>,
}

/// The record of an activation of `action` by its subject: the fields every record takes from the
/// action (owner, name, version) the same way, whatever ran (a container, or a sequence's
/// components); `cause` names the enclosing sequence's activation.
pub fn identified(
    action: &ResolvedAction,
    activation_id: &str,
    outcome: Outcome,
    cause: Option<String>,
) -> ActivationRecord {
    ActivationRecord {
        activation_id: activation_id.to_owned(),
        namespace: action.subject.clone(),
        name: action.name.clone(),
        version: action.version.clone(),
        subject: action.subject.clone(),
        publish: false,
        start: outcome.start,
        end: outcome.end.max(outcome.start),
        duration: outcome.duration,
        response: outcome.response,
        logs: outcome.logs,
        annotations: outcome.annotations,
        cause,
    }
}

/// Whether a `/run` answer is our runtime saying the activation passed its deadline.
pub fn is_runtime_timeout(response: &ActivationResponse) -> bool {
    response.status == ActivationStatus::DeveloperError
        && response.result.get("error").and_then(Value::as_str) == Some(messages::RUNTIME_TIMED_OUT)
}

/// A developer error carrying OpenWhisk's time-limit message.
pub fn timed_out(limit_ms: u64) -> ActivationResponse {
    ActivationResponse::new(ActivationStatus::DeveloperError, json!({ "error": messages::timeout(limit_ms) }))
}

/// Sets the record's `timeout` annotation (OpenWhisk marks activations ended by their limit).
pub fn mark_timed_out(record: &mut ActivationRecord) {
    for annotation in record.annotations.iter_mut().filter(|a| a.key == "timeout") {
        annotation.value = json!(true);
    }
}

/// The status and body of a blocking invoke's reply.
pub fn reply(record: &ActivationRecord, result_only: bool) -> (u16, Vec<u8>) {
    let status = record.response.status.http_status();
    let body =
        if result_only { serde_json::to_vec(&record.response.result) } else { serde_json::to_vec(record) };
    (status, body.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::action;

    #[test]
    fn run_answers_are_classified_like_openwhisk() {
        assert_eq!(classify(200, br#"{"a":1}"#).status, ActivationStatus::Success);
        let app = classify(200, br#"{"error":"no"}"#);
        assert_eq!(
            (app.status, app.result.clone()),
            (ActivationStatus::ApplicationError, json!({"error":"no"}))
        );
        let thrown = classify(502, br#"{"error":"An error has occurred: Error: boom"}"#);
        assert_eq!(thrown.status, ActivationStatus::DeveloperError);
        assert_eq!(thrown.result["error"], "An error has occurred: Error: boom");
        assert_eq!(classify(200, b"[1,2]").result["error"], messages::NOT_A_JSON_OBJECT);
        assert_eq!(classify(500, b"garbage").result["error"], messages::ABNORMAL_RUN);
        assert_eq!(classify(502, br#"{"nope":1}"#).status, ActivationStatus::DeveloperError);
    }

    #[test]
    fn logs_come_from_base64_json_and_damage_means_none() {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(br#"["2026-11-29T00:00:00.000Z stdout: hi"]"#);
        assert_eq!(decode_logs(Some(&encoded)), vec!["2026-11-29T00:00:00.000Z stdout: hi".to_owned()]);
        assert!(decode_logs(Some("%%%")).is_empty());
        assert!(decode_logs(None).is_empty());
        assert_eq!(base64::engine::general_purpose::STANDARD.encode(b"[]"), NO_LINES);
        assert!(decode_logs(Some(NO_LINES)).is_empty());
    }

    #[test]
    fn cold_records_carry_init_time_and_start_before_the_init() {
        let timing = Timing { arrived: 1000, forwarded: 1300, end: 1350, init_ms: Some(200) };
        let cold = record(&action(), "id", classify(200, b"{}"), vec![], timing);
        assert_eq!((cold.start, cold.end, cold.duration), (1100, 1350, 250));
        let annotation = |record: &ActivationRecord, key: &str| {
            record.annotations.iter().find(|kv| kv.key == key).map(|kv| kv.value.clone())
        };
        assert_eq!(annotation(&cold, "initTime"), Some(json!(200)));
        assert_eq!(annotation(&cold, "waitTime"), Some(json!(100)));
        assert_eq!(annotation(&cold, "path"), Some(json!("guest/hello")));
        let warm = record(&action(), "id", classify(200, b"{}"), vec![], Timing { init_ms: None, ..timing });
        assert_eq!(annotation(&warm, "initTime"), None);
    }

    #[test]
    fn a_runtime_timeout_becomes_openwhisks_time_limit_message() {
        let answer = classify(502, br#"{"error":"The action exceeded its time limit."}"#);
        assert!(is_runtime_timeout(&answer));
        assert!(!is_runtime_timeout(&classify(502, br#"{"error":"boom"}"#)));
        let response = timed_out(1000);
        assert_eq!(response.result["error"], "The action exceeded its time limits of 1000 milliseconds.");
        let timing = Timing { arrived: 1, forwarded: 2, end: 3, init_ms: None };
        let mut record = record(&action(), "id", response, vec![], timing);
        mark_timed_out(&mut record);
        assert!(record.annotations.iter().any(|a| a.key == "timeout" && a.value == json!(true)));
    }

    #[test]
    fn a_finished_activation_makes_the_record_it_would_have_made_at_once() {
        let timing = Timing { arrived: 1, forwarded: 2, end: 3, init_ms: Some(1) };
        let finished = Finished {
            action: Rc::new(action()),
            activation_id: "id".into(),
            answer: Answer::Classified(timed_out(1000)),
            logs: Some(base64::engine::general_purpose::STANDARD.encode(br#"["a line"]"#)),
            timing,
            timed_out: true,
            cause: Some("seq".into()),
        };
        let mut expected = record(&action(), "id", timed_out(1000), vec!["a line".into()], timing);
        mark_timed_out(&mut expected);
        expected.cause = Some("seq".into());
        assert!(!matches!(finished.answer, Answer::Success(_)));
        assert_eq!(serde_json::to_value(finished.record()).unwrap(), serde_json::to_value(expected).unwrap());
        let body = br#"{"a":{"error":1},"b":[1]}"#;
        let success = Finished { answer: Answer::Success(body.to_vec()), ..finished_ok() };
        assert!(matches!(success.answer, Answer::Success(_)));
        let record = success.record();
        assert_eq!(record.response.status, ActivationStatus::Success);
        assert_eq!(record.response.result, json!({"a":{"error":1},"b":[1]}));
    }

    #[test]
    fn a_success_is_known_without_building_the_body_as_classify_would_call_it() {
        for (status, body) in [
            (200, &br#"{"a":1}"#[..]),
            (200, br#" {"a":{"error":1}} "#),
            (200, br#"{"error":"no"}"#),
            (200, br#"{"x":1,"error":null}"#),
            (200, b"{}"),
            (200, b"[1]"),
            (200, b"{nope"),
            (200, b""),
            (200, br#"{"a":1} x"#),
            (200, br#"{"\u0065rror":1}"#),
            (502, br#"{"a":1}"#),
        ] {
            let classified = classify(status, body).status == ActivationStatus::Success;
            assert_eq!(is_success(status, body), classified, "{status} {}", String::from_utf8_lossy(body));
        }
    }

    fn finished_ok() -> Finished {
        Finished {
            action: Rc::new(action()),
            activation_id: "id".into(),
            answer: Answer::Classified(classify(200, b"{}")),
            logs: None,
            timing: Timing { arrived: 1, forwarded: 2, end: 3, init_ms: None },
            timed_out: false,
            cause: None,
        }
    }

    #[test]
    fn replies_are_the_record_or_the_bare_result() {
        let timing = Timing { arrived: 1, forwarded: 2, end: 3, init_ms: None };
        let failed = record(&action(), "id", classify(502, br#"{"error":"x"}"#), vec![], timing);
        let (status, body) = reply(&failed, false);
        assert_eq!(status, 502);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["response"]["status"], "action developer error");
        assert_eq!(parsed["activationId"], "id");
        let ok = record(&action(), "id", classify(200, br#"{"a":1}"#), vec![], timing);
        assert_eq!(reply(&ok, true), (200, br#"{"a":1}"#.to_vec()));
    }
}
