//! The `/init` and `/run` request bodies and what they turn into: the code to materialise, the
//! activation's parameters, its `__OW_*` environment variables and its deadline, and the JSON line the
//! launchers read on stdin.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Prefix of every activation environment variable.
pub const ENV_PREFIX: &str = "__OW_";

/// A request body that is not what the protocol describes.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("The request body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("The request body has no 'value' object.")]
    MissingValue,
}

/// The `value` of an `/init` body.
#[derive(Debug, Clone, PartialEq)]
pub struct InitRequest {
    pub name: Option<String>,
    /// Name of the entry function.
    pub main: String,
    /// Source text, or base64 when `binary`.
    pub code: String,
    pub binary: bool,
    /// Extra environment variables for every activation.
    pub env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct InitBody {
    value: Option<InitValue>,
}

#[derive(Deserialize)]
struct InitValue {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    main: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    binary: bool,
    #[serde(default)]
    env: Option<Map<String, Value>>,
}

/// Parses an `/init` body. Absent `main` means `"main"`; absent code is empty code, which the
/// caller reports as an initialisation error.
pub fn parse_init(body: &[u8]) -> Result<InitRequest, EnvelopeError> {
    let body: InitBody = serde_json::from_slice(body)?;
    let value = body.value.ok_or(EnvelopeError::MissingValue)?;
    let main = value.main.filter(|m| !m.trim().is_empty()).unwrap_or_else(|| "main".to_string());
    let env = value
        .env
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), env_value(v)?)))
        .filter(|(k, v)| valid_env(k, v))
        .collect();
    Ok(InitRequest {
        name: value.name,
        main,
        code: value.code.unwrap_or_default(),
        binary: value.binary,
        env,
    })
}

/// One activation as the `/run` body describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// The parameters handed to the entry function.
    pub value: Value,
    /// `__OW_<FIELD>` for every other field of the body.
    pub env: BTreeMap<String, String>,
    /// Epoch milliseconds by which the activation must have answered.
    pub deadline_ms: Option<u64>,
}

/// Parses a `/run` body. A missing `value` is an empty parameter object (OpenWhisk always sends one).
pub fn parse_activation(body: &[u8]) -> Result<Activation, EnvelopeError> {
    let Value::Object(mut fields) = serde_json::from_slice::<Value>(body)? else {
        return Err(EnvelopeError::MissingValue);
    };
    let value = fields.remove("value").unwrap_or_else(|| Value::Object(Map::new()));
    let deadline_ms = fields.get("deadline").and_then(deadline_ms);
    Ok(Activation { value, env: activation_env(&fields), deadline_ms })
}

/// Maps every field of the envelope (except `value`, already removed) to `__OW_<UPPERCASED>`.
pub fn activation_env(fields: &Map<String, Value>) -> BTreeMap<String, String> {
    fields
        .iter()
        .filter_map(|(k, v)| Some((format!("{ENV_PREFIX}{}", k.to_uppercase()), env_value(v)?)))
        .filter(|(k, v)| valid_env(k, v))
        .collect()
}

/// An environment variable's value: strings as they are, `null` absent, anything else as JSON.
pub fn env_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Names the interpreters and `execve` accept: no `=` or NUL in names, no NUL in values. Anything
/// else would make the spawn or `os.environ` fail for every activation, so it is dropped instead.
fn valid_env(name: &str, value: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0')
}

/// The deadline as epoch milliseconds: OpenWhisk sends a string, a number is accepted too.
fn deadline_ms(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// Time left until `deadline_ms`, zero when it has passed.
pub fn remaining(deadline_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

/// The line a launcher reads for one activation: `{"value": …, "env": {…}}`. JSON escapes newlines,
/// so the whole activation is exactly one line.
pub fn launcher_input(activation: &Activation) -> String {
    serde_json::json!({ "value": activation.value, "env": activation.env }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn init_defaults_main_and_stringifies_env() {
        let body = json!({"value": {"code": "x", "env": {"A": "1", "B": 2, "C": null, "D": {"e": true}, "X=Y": "no"}}});
        let init = parse_init(body.to_string().as_bytes()).unwrap();
        assert_eq!(init.main, "main");
        assert!(!init.binary);
        assert_eq!(init.code, "x");
        let env: Vec<_> = init.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, vec![("A", "1"), ("B", "2"), ("D", r#"{"e":true}"#)]);
    }

    #[test]
    fn init_keeps_explicit_main_and_binary() {
        let body = json!({"value": {"name": "a", "main": "other", "code": "UEsD", "binary": true}});
        let init = parse_init(body.to_string().as_bytes()).unwrap();
        assert_eq!((init.main.as_str(), init.binary, init.name.as_deref()), ("other", true, Some("a")));
    }

    #[test]
    fn init_without_value_or_json_is_an_error() {
        assert!(matches!(parse_init(b"{}"), Err(EnvelopeError::MissingValue)));
        assert!(matches!(parse_init(b"nope"), Err(EnvelopeError::Json(_))));
    }

    #[test]
    fn run_maps_every_other_field_to_ow_env() {
        let body = json!({
            "value": {"name": "Jöhn"},
            "namespace": "guest",
            "action_name": "/guest/hello",
            "activation_id": "abc",
            "deadline": "1764435600000",
            "api_key": null,
            "transaction_id": "tx",
            "action_version": "0.0.1",
            "extra": 5
        });
        let a = parse_activation(body.to_string().as_bytes()).unwrap();
        assert_eq!(a.value, json!({"name": "Jöhn"}));
        assert_eq!(a.deadline_ms, Some(1_764_435_600_000));
        let env: Vec<_> = a.env.keys().map(String::as_str).collect();
        assert_eq!(
            env,
            vec![
                "__OW_ACTION_NAME",
                "__OW_ACTION_VERSION",
                "__OW_ACTIVATION_ID",
                "__OW_DEADLINE",
                "__OW_EXTRA",
                "__OW_NAMESPACE",
                "__OW_TRANSACTION_ID"
            ]
        );
        assert_eq!(a.env["__OW_DEADLINE"], "1764435600000");
        assert_eq!(a.env["__OW_EXTRA"], "5");
    }

    #[test]
    fn run_accepts_numeric_deadline_and_missing_value() {
        let a = parse_activation(br#"{"deadline": 42}"#).unwrap();
        assert_eq!(a.deadline_ms, Some(42));
        assert_eq!(a.value, json!({}));
        assert_eq!(parse_activation(br#"{"deadline": "soon"}"#).unwrap().deadline_ms, None);
        assert!(parse_activation(b"[1]").is_err());
    }

    #[test]
    fn remaining_saturates() {
        assert_eq!(remaining(1_000, 400), Duration::from_millis(600));
        assert_eq!(remaining(1_000, 4_000), Duration::ZERO);
    }

    #[test]
    fn launcher_input_is_one_line() {
        let a = Activation {
            value: json!({"text": "a\nb ✓"}),
            env: BTreeMap::from([("__OW_ACTIVATION_ID".into(), "1".into())]),
            deadline_ms: None,
        };
        let line = launcher_input(&a);
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, json!({"value": {"text": "a\nb ✓"}, "env": {"__OW_ACTIVATION_ID": "1"}}));
    }
}
