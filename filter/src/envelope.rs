//! The invoke → `/run` rewrite: parameters parsed and merged with the action's defaults, wrapped in
//! the runtime protocol's envelope with the activation context.

use serde::Serialize;
use serde_json::{Map, Value, json};
use whisk_contract::{KeyValue, ResolvedAction, messages};

/// Why an invoke body was refused (answered 400 with OpenWhisk's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedBody(pub String);

/// Parses the invoke body: empty means no parameters; anything else must be a JSON object.
pub fn parse_parameters(body: &[u8]) -> Result<Map<String, Value>, MalformedBody> {
    if is_blank(body) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(parameters)) => Ok(parameters),
        Ok(_) => Err(not_an_object()),
        Err(error) => Err(malformed(&error)),
    }
}

/// Checks the invoke body as [`parse_parameters`] does, without building it: an invoke whose
/// action has no defaults goes to the container as it came (see [`RunValue::Sent`]). A number
/// beyond what a float holds passes here and is the runtime's to refuse.
pub fn check_parameters(body: &[u8]) -> Result<(), MalformedBody> {
    if is_blank(body) {
        return Ok(());
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) if body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{') => Ok(()),
        Ok(_) => Err(not_an_object()),
        Err(error) => Err(malformed(&error)),
    }
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn not_an_object() -> MalformedBody {
    MalformedBody(format!("{}\nThe parameters must be a JSON object.", messages::MALFORMED_CONTENT))
}

fn malformed(error: &serde_json::Error) -> MalformedBody {
    MalformedBody(format!("{}\n{error}", messages::MALFORMED_CONTENT))
}

/// Defaults first, then the invoke's parameters on top (the invoke wins).
pub fn merge_parameters(defaults: &[KeyValue], invoke: Map<String, Value>) -> Map<String, Value> {
    let mut merged: Map<String, Value> =
        defaults.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
    merged.extend(invoke);
    merged
}

/// An action annotated `final: true` keeps the values of its (and its package's) parameters:
/// an invoke that sets one of them is refused, as OpenWhisk does. `body` is the invoke's, checked
/// already; it is parsed only for a final action that has parameters.
pub fn check_final(action: &ResolvedAction, body: &[u8]) -> Result<(), MalformedBody> {
    let is_final = action.annotations.iter().any(|kv| kv.key == "final" && kv.value == Value::Bool(true));
    if !is_final || action.parameters.is_empty() {
        return Ok(());
    }
    let invoke = parse_parameters(body)?;
    if action.parameters.iter().any(|kv| invoke.contains_key(&kv.key)) {
        return Err(MalformedBody(messages::PARAMETERS_NOT_ALLOWED.to_owned()));
    }
    Ok(())
}

/// An invoke's parameters as the `/run` envelope carries them.
#[derive(Debug, Clone, PartialEq)]
pub enum RunValue<'a> {
    /// The invoke body as it came, checked by [`check_parameters`]: the action has no defaults to
    /// merge, so the parameters need no parsing and no writing again.
    Sent(&'a [u8]),
    /// Parsed and merged with the action's defaults ([`merge_parameters`]).
    Merged(Map<String, Value>),
}

impl<'a> RunValue<'a> {
    /// The parameters of an invoke of `action` whose checked body is `body`.
    pub fn of(action: &ResolvedAction, body: &'a [u8]) -> Self {
        if action.parameters.is_empty() {
            return Self::Sent(body);
        }
        Self::Merged(merge_parameters(&action.parameters, parse_parameters(body).unwrap_or_default()))
    }
}

/// The context of one activation.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    pub activation_id: &'a str,
    pub transaction_id: &'a str,
    pub api_host: &'a str,
    /// Epoch milliseconds by which the action must have answered.
    pub deadline_ms: u64,
    /// The invoking key (`uuid:key`), handed to actions annotated `provide-api-key` only.
    pub api_key: Option<&'a str>,
}

/// Whether the action asked for the invoking key (`provide-api-key: true`), as OpenWhisk's
/// actions do to call the platform back; by default the container never sees a key.
pub fn provides_api_key(action: &ResolvedAction) -> bool {
    action.annotations.iter().any(|annotation| {
        annotation.key == "provide-api-key"
            && (matches!(&annotation.value, Value::Bool(true)) || annotation.value == json!("true"))
    })
}

/// The `uuid:key` of a `Basic` authorization value.
pub fn api_key_of(authorization: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    String::from_utf8(decoded).ok().filter(|key| key.contains(':'))
}

/// The `/run` body: the context's fields, then `value`, last, as the parameters say.
pub fn run_body(action: &ResolvedAction, parameters: RunValue<'_>, context: &RunContext<'_>) -> Vec<u8> {
    let mut deadline = itoa::Buffer::new();
    let envelope = RunEnvelope {
        action_name: action.fully_qualified_name(),
        action_version: &action.version,
        activation_id: context.activation_id,
        api_host: context.api_host,
        api_key: context.api_key,
        deadline: deadline.format(context.deadline_ms),
        namespace: &action.subject,
        transaction_id: context.transaction_id,
    };
    let mut body = serde_json::to_vec(&envelope).unwrap_or_default();
    // `{…}` becomes `{…,"value":…}`: the value is spliced in, not serialized as part of the struct.
    body.pop();
    body.extend_from_slice(b",\"value\":");
    match parameters {
        RunValue::Sent(sent) if is_blank(sent) => body.extend_from_slice(b"{}"),
        RunValue::Sent(sent) => body.extend_from_slice(sent),
        RunValue::Merged(merged) => {
            let _ = serde_json::to_writer(&mut body, &merged);
        }
    }
    body.push(b'}');
    body
}

/// The `/run` body but its `value`, written straight from borrowed fields (no JSON tree built per
/// invoke), in the order a JSON object of these keys always had here.
#[derive(Serialize)]
struct RunEnvelope<'a> {
    action_name: String,
    action_version: &'a str,
    activation_id: &'a str,
    api_host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<&'a str>,
    /// The protocol carries the deadline as a string of epoch milliseconds.
    deadline: &'a str,
    namespace: &'a str,
    transaction_id: &'a str,
}

#[cfg(test)]
pub(crate) fn action() -> ResolvedAction {
    ResolvedAction {
        namespace: "guest".into(),
        package: None,
        name: "hello".into(),
        version: "0.0.2".into(),
        revision: "r2".into(),
        kind: "nodejs:20".into(),
        limits: whisk_contract::ActionLimits::default(),
        parameters: vec![KeyValue { key: "greeting".into(), value: json!("hi") }],
        annotations: vec![],
        subject: "guest".into(),
        subject_limits: whisk_contract::NamespaceLimits::default(),
        components: None,
        web_user: None,
    }
}

/// A header map rewritten as one list, for one host call that replaces the whole map (the `/run`
/// request's, which changes most of them; a reply, which changes two, is cheaper set by name): the
/// headers in `current` whose names neither `set` nor `remove` name, in their order, then `set`.
/// Names are lower case, as Envoy gives them.
pub fn rewrite_headers<'a>(
    current: impl IntoIterator<Item = &'a (String, String)>,
    set: &[(&'a str, &'a str)],
    remove: &[&str],
) -> Vec<(&'a str, &'a str)> {
    let replaced = |name: &str| set.iter().any(|(set_name, _)| *set_name == name) || remove.contains(&name);
    current
        .into_iter()
        .filter(|(name, _)| !replaced(name))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain(set.iter().copied())
        .collect()
}

/// The headers of a container's `/run` request: of the client's, only the request line (`:method`,
/// `:scheme`, `:authority`), `x-forwarded-proto` (without it every run failed in Envoy: the filter
/// got an answer Envoy made, not the container's) and Envoy's `x-request-id` (a trace across the
/// hop), then `set`. A
/// container gets what OpenWhisk's invoker sends it, never the client's headers: not its key,
/// cookies or agent, and none of the `x-envoy-*` headers Envoy's router obeys from clients it
/// counts as internal (`x-envoy-retry-on`, `x-envoy-upstream-rq-timeout-ms`…), which would let a
/// client have an activation run twice or outlive its time limit. Fewer headers also cost less, in
/// Envoy and in the runtime, on every invoke. The filter's own ones are in `set`.
pub fn run_request_headers<'a>(
    client: &'a [(String, String)],
    set: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let client = client.iter().filter(|(name, _)| is_passed_to_runs(name));
    rewrite_headers(client, set, &[])
}

/// Whether a client's header goes on to the container (see [`run_request_headers`]).
pub fn is_passed_to_runs(name: &str) -> bool {
    matches!(name, ":method" | ":scheme" | ":authority" | "x-forwarded-proto" | "x-request-id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_action_refuses_invokes_that_override_its_parameters() {
        let mut final_action = action();
        let overriding = br#"{"greeting":"yo"}"#;
        let other = br#"{"name":"you"}"#;
        assert_eq!(check_final(&final_action, overriding), Ok(()), "not final yet");
        final_action.annotations.push(KeyValue { key: "final".into(), value: json!(true) });
        assert_eq!(
            check_final(&final_action, overriding),
            Err(MalformedBody(messages::PARAMETERS_NOT_ALLOWED.into()))
        );
        assert_eq!(check_final(&final_action, other), Ok(()), "new parameters are fine");
        final_action.annotations[0].value = json!(false);
        assert_eq!(check_final(&final_action, overriding), Ok(()));
    }

    #[test]
    fn bodies_must_be_objects_or_empty() {
        assert_eq!(parse_parameters(b"").unwrap().len(), 0);
        assert_eq!(parse_parameters(b" \n").unwrap().len(), 0);
        assert_eq!(parse_parameters(br#"{"a":1}"#).unwrap()["a"], 1);
        assert!(parse_parameters(b"[1]").unwrap_err().0.starts_with(messages::MALFORMED_CONTENT));
        assert!(parse_parameters(b"{nope").is_err());
    }

    #[test]
    fn checking_a_body_refuses_what_parsing_refuses_with_the_same_message() {
        for body in [&b""[..], b" \n", br#"{"a":[1,{"b":null}]}"#, b"[1]", b"{nope", b"1", b" {} x", b"\"s\""]
        {
            assert_eq!(
                check_parameters(body),
                parse_parameters(body).map(|_| ()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn invoke_parameters_override_defaults() {
        let merged = merge_parameters(
            &action().parameters,
            parse_parameters(br#"{"greeting":"yo","name":"x"}"#).unwrap(),
        );
        assert_eq!(merged["greeting"], "yo");
        assert_eq!(merged["name"], "x");
        let defaults_only = merge_parameters(&action().parameters, Map::new());
        assert_eq!(defaults_only["greeting"], "hi");
    }

    #[test]
    fn the_envelope_has_the_protocol_fields() {
        let context = RunContext {
            activation_id: "a1",
            transaction_id: "t1",
            api_host: "http://h",
            deadline_ms: 1234,
            api_key: None,
        };
        let body: Value =
            serde_json::from_slice(&run_body(&action(), RunValue::Sent(b""), &context)).unwrap();
        assert_eq!(body["action_name"], "/guest/hello");
        assert_eq!(body["deadline"], "1234");
        assert_eq!(body["activation_id"], "a1");
        assert_eq!(body["namespace"], "guest");
        assert!(body["value"].is_object());
        assert!(body.get("api_key").is_none(), "no key unless the action asks for it");
        let with_key = RunContext { api_key: Some("uuid:secret"), ..context };
        let body: Value =
            serde_json::from_slice(&run_body(&action(), RunValue::Sent(b""), &with_key)).unwrap();
        assert_eq!(body["api_key"], "uuid:secret");
    }

    #[test]
    fn the_value_is_the_body_as_sent_or_merged_with_the_defaults() {
        let context = RunContext {
            activation_id: "a",
            transaction_id: "a",
            api_host: "h",
            deadline_ms: 1,
            api_key: None,
        };
        let bare = ResolvedAction { parameters: vec![], ..action() };
        let sent = br#" {"n": 1, "s": "x"} "#;
        assert_eq!(RunValue::of(&bare, sent), RunValue::Sent(sent));
        let bytes = run_body(&bare, RunValue::of(&bare, sent), &context);
        assert!(bytes.ends_with(&[&b",\"value\":"[..], sent, b"}"].concat()), "spliced in as sent, last");
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["value"], json!({"n": 1, "s": "x"}));
        let blank: Value = serde_json::from_slice(&run_body(&bare, RunValue::Sent(b" "), &context)).unwrap();
        assert_eq!(blank["value"], json!({}));
        let body: Value =
            serde_json::from_slice(&run_body(&action(), RunValue::of(&action(), sent), &context)).unwrap();
        assert_eq!(body["value"], json!({"n": 1, "s": "x", "greeting": "hi"}));
    }

    #[test]
    fn the_key_is_provided_only_on_request_and_read_from_basic_auth() {
        assert!(!provides_api_key(&action()));
        let asking = ResolvedAction {
            annotations: vec![KeyValue { key: "provide-api-key".into(), value: json!(true) }],
            ..action()
        };
        assert!(provides_api_key(&asking));
        assert_eq!(api_key_of("Basic dXVpZDpzZWNyZXQ=").as_deref(), Some("uuid:secret"));
        assert_eq!(api_key_of("basic dXVpZDpzZWNyZXQ=").as_deref(), Some("uuid:secret"));
        assert_eq!(api_key_of("Bearer dXVpZDpzZWNyZXQ="), None);
        assert_eq!(api_key_of("Basic bm9jb2xvbg=="), None, "not uuid:key");
        assert_eq!(api_key_of(""), None);
    }

    #[test]
    fn rewritten_headers_keep_the_rest_in_order_and_replace_every_value_of_a_set_name() {
        let current: Vec<(String, String)> = [
            (":path", "/api/v1/namespaces/_/actions/hello"),
            ("x-forwarded-proto", "http"),
            ("accept", "a"),
            ("authorization", "Basic eA=="),
            ("accept", "b"),
            ("content-length", "2"),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
        let rewritten = rewrite_headers(
            &current,
            &[(":path", "/run"), ("content-length", "40")],
            &["authorization", "absent"],
        );
        assert_eq!(
            rewritten,
            vec![
                ("x-forwarded-proto", "http"),
                ("accept", "a"),
                ("accept", "b"),
                (":path", "/run"),
                ("content-length", "40"),
            ]
        );
    }

    #[test]
    fn a_run_gets_the_request_line_and_the_request_id_of_the_clients_headers_only() {
        let client: Vec<(String, String)> = [
            (":method", "POST"),
            ("x-forwarded-proto", "http"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-max-retries", "5"),
            ("x-envoy-upstream-rq-timeout-ms", "999999"),
            ("authorization", "Basic eA=="),
            ("cookie", "session=1"),
            ("x-request-id", "r1"),
        ]
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
        let headers =
            run_request_headers(&client, &[(":path", "/run"), ("x-envoy-upstream-rq-timeout-ms", "61000")]);
        assert_eq!(
            headers,
            vec![
                (":method", "POST"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "r1"),
                (":path", "/run"),
                ("x-envoy-upstream-rq-timeout-ms", "61000")
            ]
        );
    }

    #[test]
    fn rewriting_nothing_keeps_the_headers() {
        let current = vec![("a".to_owned(), "1".to_owned())];
        assert_eq!(rewrite_headers(&current, &[], &[]), vec![("a", "1")]);
    }
}
