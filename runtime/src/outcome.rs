//! What an activation came to, and the `/run` status and body that say so.
//!
//! The launchers answer on file descriptor 3 with one JSON line: `{"result": <value>}` when the entry
//! function returned, `{"error": "<string>"}` when it threw; after loading they answer `{"ok": true}` or
//! `{"error": "<string>"}`. Native executables answer with the last line of their stdout. The data
//! plane classifies a 502 with an `error` object as an application error, so every failure here is a
//! 502 with a message OpenWhisk users know.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use whisk_contract::messages;

/// Message of an activation whose deadline passed.
pub const TIMED_OUT: &str = messages::RUNTIME_TIMED_OUT;
/// Prefix of the message of an activation whose entry function threw.
pub const THREW_PREFIX: &str = "An error has occurred: ";

/// How one activation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The entry function returned a JSON object (even one with an `error` key).
    Success(Map<String, Value>),
    /// The entry function threw or rejected; the string form of what it threw.
    Threw(String),
    /// The entry function returned something other than an object.
    NotADictionary,
    /// The process died, or answered with something that is not the protocol.
    Abnormal,
    /// The deadline passed first.
    TimedOut,
    /// The action could not even be started (respawn failed, executable missing).
    Unavailable(String),
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Success(_) => StatusCode::OK,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `/run` response body.
    pub fn body(&self) -> Value {
        match self {
            Outcome::Success(result) => Value::Object(result.clone()),
            Outcome::Threw(error) => json!({ "error": format!("{THREW_PREFIX}{error}") }),
            Outcome::NotADictionary => json!({ "error": messages::NOT_A_JSON_OBJECT }),
            Outcome::Abnormal => json!({ "error": messages::ABNORMAL_RUN }),
            Outcome::TimedOut => json!({ "error": TIMED_OUT }),
            Outcome::Unavailable(reason) => json!({ "error": reason }),
        }
    }

    /// Whether the process that produced this outcome can still be trusted with the next activation.
    pub fn keeps_process(&self) -> bool {
        matches!(self, Outcome::Success(_) | Outcome::Threw(_) | Outcome::NotADictionary)
    }
}

/// Classifies a launcher's answer line for one activation.
pub fn classify_answer(line: &str) -> Outcome {
    let Ok(Value::Object(mut answer)) = serde_json::from_str::<Value>(line) else {
        return Outcome::Abnormal;
    };
    if let Some(error) = answer.remove("error") {
        return Outcome::Threw(match error {
            Value::String(s) => s,
            other => other.to_string(),
        });
    }
    match answer.remove("result") {
        Some(Value::Object(result)) => Outcome::Success(result),
        Some(_) => Outcome::NotADictionary,
        None if answer.is_empty() => Outcome::NotADictionary,
        None => Outcome::Abnormal,
    }
}

/// A launcher's answer after loading the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Ready,
    Failed(String),
    Garbage,
}

/// Classifies a launcher's answer line after loading.
pub fn classify_load(line: &str) -> Loaded {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(answer)) => match (answer.get("ok"), answer.get("error")) {
            (_, Some(Value::String(e))) => Loaded::Failed(e.clone()),
            (_, Some(e)) => Loaded::Failed(e.to_string()),
            (Some(Value::Bool(true)), None) => Loaded::Ready,
            _ => Loaded::Garbage,
        },
        _ => Loaded::Garbage,
    }
}

/// Classifies a native executable's run from its exit and the last non-empty line of its stdout.
pub fn classify_native(exited_ok: bool, last_line: Option<&str>) -> Outcome {
    if !exited_ok {
        return Outcome::Abnormal;
    }
    match last_line.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(result))) => Outcome::Success(result),
        Some(Ok(_)) => Outcome::NotADictionary,
        Some(Err(_)) | None => Outcome::Abnormal,
    }
}

/// Takes the result line out of a native executable's stdout: the last non-empty line. The other
/// lines (and the result line's position) are left as logs.
pub fn take_last_nonempty<T>(lines: &mut Vec<T>, text: impl Fn(&T) -> &str) -> Option<T> {
    let index = lines.iter().rposition(|l| !text(l).trim().is_empty())?;
    Some(lines.remove(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_results_succeed_even_with_error_key() {
        let o = classify_answer(r#"{"result": {"error": "mine", "ü": 1}}"#);
        assert_eq!(o.status(), StatusCode::OK);
        assert_eq!(o.body(), json!({"error": "mine", "ü": 1}));
    }

    #[test]
    fn non_objects_are_not_dictionaries() {
        for line in
            [r#"{"result": "s"}"#, r#"{"result": 1}"#, r#"{"result": [1]}"#, r#"{"result": null}"#, "{}"]
        {
            let o = classify_answer(line);
            assert_eq!(o, Outcome::NotADictionary, "{line}");
            assert_eq!(o.body(), json!({"error": "The action did not return a dictionary."}));
            assert_eq!(o.status(), StatusCode::BAD_GATEWAY);
        }
    }

    #[test]
    fn thrown_errors_are_prefixed() {
        let o = classify_answer(r#"{"error": "Error: boom"}"#);
        assert_eq!(o.body(), json!({"error": "An error has occurred: Error: boom"}));
        assert!(o.keeps_process());
    }

    #[test]
    fn garbage_is_abnormal() {
        for line in ["", "not json", "[1]", r#"{"something": 1}"#] {
            let o = classify_answer(line);
            assert_eq!(o, Outcome::Abnormal, "{line}");
            assert!(!o.keeps_process());
        }
        assert_eq!(
            Outcome::Abnormal.body(),
            json!({"error": "The action did not produce a valid response and exited unexpectedly."})
        );
        assert_eq!(Outcome::TimedOut.body(), json!({"error": "The action exceeded its time limit."}));
    }

    #[test]
    fn load_answers() {
        assert_eq!(classify_load(r#"{"ok": true}"#), Loaded::Ready);
        assert_eq!(classify_load(r#"{"error": "SyntaxError: x"}"#), Loaded::Failed("SyntaxError: x".into()));
        assert_eq!(classify_load("junk"), Loaded::Garbage);
        assert_eq!(classify_load(r#"{"ok": false}"#), Loaded::Garbage);
    }

    #[test]
    fn native_classification() {
        assert_eq!(classify_native(true, Some(r#"{"a":1}"#)).status(), StatusCode::OK);
        assert_eq!(classify_native(true, Some("[1]")), Outcome::NotADictionary);
        assert_eq!(classify_native(true, Some("hello")), Outcome::Abnormal);
        assert_eq!(classify_native(true, None), Outcome::Abnormal);
        assert_eq!(classify_native(false, Some(r#"{"a":1}"#)), Outcome::Abnormal);
    }

    #[test]
    fn last_nonempty_line_is_taken() {
        let mut lines = vec!["log", "{\"r\":1}", "", "  "];
        assert_eq!(take_last_nonempty(&mut lines, |l| l), Some("{\"r\":1}"));
        assert_eq!(lines, vec!["log", "", "  "]);
        let mut empty: Vec<&str> = vec!["", " "];
        assert_eq!(take_last_nonempty(&mut empty, |l| l), None);
    }
}
