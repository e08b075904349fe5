//! Web actions: `/api/v1/web/{namespace}/{package}/{action}.{ext}/{projection}` runs an action
//! exported with the `web-export` annotation without an OpenWhisk key. This module turns the HTTP
//! request into the action's parameters (`__ow_method`, `__ow_headers`, `__ow_path`, query and body,
//! or `__ow_query`/`__ow_body` for `raw-http`) and the activation's answer into the HTTP response the
//! extension asks for (`.http`: `statusCode`, `headers`, `body`; `.json`; `.html`, `.svg`, `.text`).
//! Pure: the shell resolves the action, runs it through the ingress and sends what this builds.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use whisk_contract::{KeyValue, messages};

use crate::route::{blocking_invoke_path, percent_decode};

/// Path prefix of web actions.
pub const PREFIX: &str = "/api/v1/web/";

/// Methods a web action answers (OpenWhisk's list).
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// CORS headers added to every answer unless the action handles `OPTIONS` itself.
const CORS: [(&str, &str); 3] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH"),
    (
        "access-control-allow-headers",
        "Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent",
    ),
];

/// Request headers never shown to the action: its caller's credentials.
const HIDDEN_HEADERS: [&str; 2] = ["authorization", "x-require-whisk-auth"];

/// The response a web request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    Http,
    Json,
    Html,
    Svg,
    Text,
}

impl Extension {
    fn parse(suffix: &str) -> Option<Self> {
        match suffix {
            "http" => Some(Self::Http),
            "json" => Some(Self::Json),
            "html" => Some(Self::Html),
            "svg" => Some(Self::Svg),
            "text" => Some(Self::Text),
            _ => None,
        }
    }

    /// The field projected when the path names none, and the content type it is answered with.
    fn default_field_and_type(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Html => Some(("html", "text/html; charset=UTF-8")),
            Self::Svg => Some(("svg", "image/svg+xml")),
            Self::Text => Some(("text", "text/plain; charset=UTF-8")),
            Self::Http | Self::Json => None,
        }
    }
}

/// A web request's target, parsed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTarget {
    /// Always explicit: a web request carries no key to resolve `_` with.
    pub namespace: String,
    /// `None` for the `default` package (an action outside any package).
    pub package: Option<String>,
    pub name: String,
    pub extension: Extension,
    /// What follows the action and its extension (`/a/b`, or empty): `__ow_path`, and the
    /// projection into the result for every extension but `.http`.
    pub rest: String,
    /// The raw query string.
    pub query: String,
}

impl WebTarget {
    /// `name` or `pkg/name`, as the resolve endpoint takes it.
    pub fn action_path(&self) -> String {
        match &self.package {
            Some(package) => format!("{package}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The invoke path of the action, for the internal run through the ingress.
    pub fn invoke_path(&self) -> String {
        blocking_invoke_path(&self.namespace, self.package.as_deref(), &self.name)
    }
}

/// Parses `/api/v1/web/{namespace}/{package}/{action}[.ext][/rest][?query]`; `None` when the path
/// names no action.
pub fn parse(path_and_query: &str) -> Option<WebTarget> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let rest = path.strip_prefix(PREFIX)?;
    let mut segments = rest.splitn(4, '/');
    let namespace = percent_decode(segments.next()?)?;
    let package = percent_decode(segments.next()?)?;
    let action = percent_decode(segments.next()?)?;
    let tail = segments.next().map(|tail| format!("/{tail}")).unwrap_or_default();
    let (name, extension) = match action.rsplit_once('.') {
        Some((name, suffix)) => match Extension::parse(suffix) {
            Some(extension) => (name.to_owned(), extension),
            None => (action.clone(), Extension::Http),
        },
        None => (action.clone(), Extension::Http),
    };
    if namespace.is_empty() || package.is_empty() || name.is_empty() {
        return None;
    }
    Some(WebTarget {
        namespace,
        package: (package != "default").then_some(package),
        name,
        extension,
        rest: tail.trim_end_matches('/').to_owned(),
        query: query.to_owned(),
    })
}

/// The HTTP side of a web request, as the shell read it from Envoy.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// Every request header (names as Envoy gives them: lower case).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// What the action's annotations say about its web export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Export {
    /// `web-export`: may be invoked as a web action at all.
    pub exported: bool,
    /// `raw-http`: the query and body arrive unparsed (`__ow_query`, `__ow_body`).
    pub raw_http: bool,
    /// `web-custom-options`: `OPTIONS` goes to the action, and no CORS headers are added.
    pub custom_options: bool,
}

impl Export {
    pub fn of(annotations: &[KeyValue]) -> Self {
        let flag = |key: &str| {
            annotations.iter().any(|annotation| {
                annotation.key == key
                    && match &annotation.value {
                        Value::Bool(value) => *value,
                        Value::String(value) => matches!(value.as_str(), "true" | "yes" | "raw"),
                        _ => false,
                    }
            })
        };
        Self {
            exported: flag("web-export"),
            raw_http: flag("raw-http"),
            custom_options: flag("web-custom-options"),
        }
    }
}

/// A web request refused before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// The action's parameters for a web request: query parameters, then body parameters (JSON object
/// or form), then the HTTP context; the action's own parameters are final for web requests, so a
/// request naming one, or any reserved `__ow_` name, is refused with 400.
pub fn parameters(
    target: &WebTarget,
    request: &HttpRequest,
    export: Export,
    defaults: &[KeyValue],
    user: Option<&str>,
) -> Result<Map<String, Value>, Refused> {
    let content_type = request.header("content-type").unwrap_or_default().to_ascii_lowercase();
    let mut parameters = Map::new();
    if export.raw_http {
        parameters.insert("__ow_query".into(), Value::String(target.query.clone()));
        if !request.body.is_empty() {
            parameters.insert("__ow_body".into(), Value::String(opaque_body(&request.body, &content_type)));
        }
    } else {
        let mut given: Map<String, Value> = form_urlencoded::parse(target.query.as_bytes())
            .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned())))
            .collect();
        let mut opaque = None;
        if !request.body.is_empty() {
            if content_type.starts_with("application/json") {
                match serde_json::from_slice::<Value>(&request.body) {
                    Ok(Value::Object(body)) => given.extend(body),
                    Ok(_) => opaque = Some(opaque_body(&request.body, &content_type)),
                    Err(error) => {
                        return Err(Refused {
                            status: 400,
                            message: format!("{}\n{error}", messages::MALFORMED_CONTENT),
                        });
                    }
                }
            } else if content_type.starts_with("application/x-www-form-urlencoded") {
                given.extend(
                    form_urlencoded::parse(&request.body)
                        .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned()))),
                );
            } else {
                opaque = Some(opaque_body(&request.body, &content_type));
            }
        }
        let overriding =
            given.keys().any(|key| key.starts_with("__ow_") || defaults.iter().any(|d| &d.key == key));
        if overriding {
            return Err(Refused { status: 400, message: messages::PARAMETERS_NOT_ALLOWED.into() });
        }
        parameters = given;
        if let Some(body) = opaque {
            parameters.insert("__ow_body".into(), Value::String(body));
        }
    }
    // Envoy holds the host as the `:authority` pseudo-header; the other pseudo-headers are not
    // request headers at all.
    let headers: Map<String, Value> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .filter_map(|(name, value)| match name.as_str() {
            ":authority" => Some(("host".to_owned(), value)),
            name if name.starts_with(':') || HIDDEN_HEADERS.contains(&name) => None,
            _ => Some((name, value)),
        })
        .map(|(name, value)| (name, Value::String(value.clone())))
        .collect();
    parameters.insert("__ow_method".into(), Value::String(request.method.to_ascii_lowercase()));
    parameters.insert("__ow_headers".into(), Value::Object(headers));
    parameters.insert("__ow_path".into(), Value::String(target.rest.clone()));
    if let Some(user) = user {
        parameters.insert("__ow_user".into(), Value::String(user.to_owned()));
    }
    Ok(parameters)
}

/// A body handed over unparsed: as text when its type is textual, else base64.
fn opaque_body(body: &[u8], content_type: &str) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if is_textual(content_type) => text.to_owned(),
        _ => BASE64.encode(body),
    }
}

/// Media types whose bodies are text; everything else (JSON included, as OpenWhisk treats it) is
/// binary and travels base64-encoded.
fn is_textual(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/x-www-form-urlencoded"
                | "application/xml"
                | "application/javascript"
                | "image/svg+xml"
                | "application/xhtml+xml"
        )
}

/// An HTTP answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message, "code": "" }).to_string();
        Self::new(status, "application/json", body.into_bytes())
    }

    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self { status, headers: vec![("content-type".into(), content_type.into())], body }
    }

    /// Adds the CORS headers the action did not set itself.
    fn with_cors(mut self, export: Export) -> Self {
        if !export.custom_options {
            for (name, value) in CORS {
                if !self.headers.iter().any(|(key, _)| key.eq_ignore_ascii_case(name)) {
                    self.headers.push((name.into(), value.into()));
                }
            }
        }
        self
    }
}

/// The answer to `OPTIONS` when the action does not handle it: CORS preflight allowed.
pub fn preflight(export: Export) -> Reply {
    Reply { status: 200, headers: Vec::new(), body: Vec::new() }.with_cors(export)
}

/// The answer to a web request whose run outlived the blocking wait: 202 with the activation id,
/// as OpenWhisk answers; the record appears when the run ends.
pub fn accepted(export: Export, activation_id: &str) -> Reply {
    let body = serde_json::json!({ "activationId": activation_id }).to_string();
    Reply::new(202, "application/json", body.into_bytes()).with_cors(export)
}

/// The answer to a web request from what the internal run answered: `status` and `body` are the
/// run's (an activation record, or an OpenWhisk error from the platform).
pub fn respond(target: &WebTarget, export: Export, status: u16, body: &[u8]) -> Reply {
    let answer: Option<Value> = serde_json::from_slice(body).ok();
    let Some(response) = answer.as_ref().and_then(|record| record.get("response")) else {
        // Not a record: the platform refused or failed (throttled, no capacity, not found); its
        // error already has OpenWhisk's shape.
        let status = if status == 0 { 503 } else { status };
        return match answer {
            Some(error) => Reply::new(status, "application/json", error.to_string().into_bytes()),
            None => Reply::error(status, messages::INTERNAL_ERROR),
        }
        .with_cors(export);
    };
    let result = response.get("result").cloned().unwrap_or(Value::Null);
    let reply = match response.get("status").and_then(Value::as_str) {
        Some("success") => project(&result, &target.rest, target.extension)
            .map_or_else(|| Reply::error(404, PROPERTY_NOT_FOUND), |value| render(target.extension, value)),
        // An application error: its `error` is answered instead, the projection ignored.
        Some("application error") => match result.get("error") {
            Some(error) => render_error(target.extension, error),
            None => Reply::error(400, INVALID_RESPONSE),
        },
        _ => {
            let message = result.get("error").and_then(Value::as_str).unwrap_or(INVALID_RESPONSE);
            Reply::error(502, message)
        }
    };
    reply.with_cors(export)
}

/// Answer when the projected property is missing.
pub const PROPERTY_NOT_FOUND: &str = "Response does not include requested property.";
/// Answer when the action's result cannot be turned into the response the extension asks for.
pub const INVALID_RESPONSE: &str = "The action did not produce a valid response.";

/// The value at `rest` (`/a/b`) in the result, or the extension's default field.
fn project<'a>(result: &'a Value, rest: &str, extension: Extension) -> Option<&'a Value> {
    let fields: Vec<String> = rest.split('/').filter(|s| !s.is_empty()).filter_map(percent_decode).collect();
    if extension == Extension::Http {
        // `.http` answers the whole result; what follows the action is only `__ow_path`.
        return Some(result);
    }
    if fields.is_empty() {
        return match extension.default_field_and_type() {
            Some((field, _)) => result.get(field),
            None => Some(result),
        };
    }
    fields.iter().try_fold(result, |value, field| value.get(field.as_str()))
}

fn render_error(extension: Extension, error: &Value) -> Reply {
    match (extension, extension.default_field_and_type()) {
        (_, Some((field, _))) if error.is_object() => match error.get(field) {
            Some(value) => render(extension, value),
            None => Reply::error(400, INVALID_RESPONSE),
        },
        _ => render(extension, error),
    }
}

fn render(extension: Extension, value: &Value) -> Reply {
    match extension {
        Extension::Json => Reply::new(200, "application/json", value.to_string().into_bytes()),
        Extension::Http => http_response(value),
        Extension::Html | Extension::Svg | Extension::Text => {
            let content_type = extension.default_field_and_type().map_or("text/plain", |(_, t)| t);
            match value {
                Value::String(text) => Reply::new(200, content_type, text.clone().into_bytes()),
                _ => Reply::error(400, INVALID_RESPONSE),
            }
        }
    }
}

/// `.http`: the result is the response (`statusCode`, `headers`, `body`).
fn http_response(value: &Value) -> Reply {
    let Some(fields) = value.as_object() else { return Reply::error(400, INVALID_RESPONSE) };
    let status = match fields.get("statusCode").or_else(|| fields.get("code")) {
        None => None,
        Some(code) => match code.as_u64().and_then(|code| u16::try_from(code).ok()) {
            Some(code) if (100..=599).contains(&code) => Some(code),
            _ => return Reply::error(400, INVALID_RESPONSE),
        },
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(given) = fields.get("headers") {
        let Some(given) = given.as_object() else { return Reply::error(400, INVALID_RESPONSE) };
        for (name, value) in given {
            let values = match value {
                Value::Array(values) => values.iter().collect(),
                other => vec![other],
            };
            for value in values {
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    _ => return Reply::error(400, INVALID_RESPONSE),
                };
                headers.push((name.to_ascii_lowercase(), text));
            }
        }
    }
    let content_type =
        headers.iter().find(|(name, _)| name == "content-type").map(|(_, value)| value.to_ascii_lowercase());
    let body = match (fields.get("body"), content_type.as_deref()) {
        (None | Some(Value::Null), _) => None,
        (Some(Value::String(text)), None) => {
            headers.push(("content-type".into(), "text/html; charset=UTF-8".into()));
            Some(text.clone().into_bytes())
        }
        (Some(Value::String(text)), Some(content_type)) if is_textual(content_type) => {
            Some(text.clone().into_bytes())
        }
        // A binary type (JSON included): the string is base64, as OpenWhisk's web actions define.
        (Some(Value::String(text)), Some(_)) => match BASE64.decode(text.trim()) {
            Ok(bytes) => Some(bytes),
            Err(_) => return Reply::error(400, INVALID_RESPONSE),
        },
        (Some(other), content_type) => {
            if content_type.is_none() {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Some(other.to_string().into_bytes())
        }
    };
    let status = match (status, &body) {
        (Some(status), _) => status,
        (None, Some(_)) => 200,
        (None, None) => 204,
    };
    Reply { status, headers, body: body.unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(path: &str) -> WebTarget {
        parse(path).unwrap_or_else(|| panic!("{path} names no action"))
    }

    fn request(method: &str, content_type: Option<&str>, body: &str) -> HttpRequest {
        let mut headers = vec![(":authority".to_owned(), "example".to_owned()), (":path".into(), "/".into())];
        if let Some(content_type) = content_type {
            headers.push(("content-type".into(), content_type.into()));
        }
        headers.push(("authorization".into(), "Basic c2VjcmV0".into()));
        HttpRequest { method: method.into(), headers, body: body.as_bytes().to_vec() }
    }

    fn record(status: &str, result: Value) -> Vec<u8> {
        json!({"activationId": "a", "response": {"status": status, "success": status == "success", "result": result}})
            .to_string()
            .into_bytes()
    }

    const EXPORTED: Export = Export { exported: true, raw_http: false, custom_options: false };

    #[test]
    fn paths_name_the_action_its_extension_and_the_rest() {
        let plain = target("/api/v1/web/guest/default/hello");
        assert_eq!(
            (plain.package.clone(), plain.name.as_str(), plain.extension),
            (None, "hello", Extension::Http)
        );
        assert_eq!(plain.invoke_path(), "/api/v1/namespaces/guest/actions/hello?blocking=true");
        let projected = target("/api/v1/web/guest/demo/hello.text/response/name?name=Jane");
        assert_eq!(projected.package.as_deref(), Some("demo"));
        assert_eq!((projected.extension, projected.rest.as_str()), (Extension::Text, "/response/name"));
        assert_eq!(projected.query, "name=Jane");
        assert_eq!(projected.invoke_path(), "/api/v1/namespaces/guest/actions/demo/hello?blocking=true");
        // A dot that is no known extension belongs to the name.
        assert_eq!(target("/api/v1/web/guest/default/v1.2").name, "v1.2");
        assert_eq!(target("/api/v1/web/guest/default/a%20b.json").name, "a b");
        assert_eq!(parse("/api/v1/web/guest/default"), None);
        assert_eq!(parse("/api/v1/web/guest/default/.json"), None);
        assert_eq!(parse("/api/v1/namespaces/guest/actions/x"), None);
    }

    #[test]
    fn query_then_body_then_context_become_the_parameters() {
        let t = target("/api/v1/web/guest/default/echo.json/x?name=Jane&n=1");
        let json_body =
            parameters(&t, &request("POST", Some("application/json"), r#"{"n": 2}"#), EXPORTED, &[], None)
                .unwrap();
        assert_eq!(json_body["name"], "Jane");
        assert_eq!(json_body["n"], 2, "the body wins over the query");
        assert_eq!(json_body["__ow_method"], "post");
        assert_eq!(json_body["__ow_path"], "/x");
        assert_eq!(json_body["__ow_headers"]["host"], "example");
        assert!(json_body["__ow_headers"].get(":path").is_none());
        assert!(json_body["__ow_headers"].get("authorization").is_none(), "credentials stay hidden");
        assert!(json_body.get("__ow_body").is_none() && json_body.get("__ow_user").is_none());

        let form = parameters(
            &t,
            &request("POST", Some("application/x-www-form-urlencoded"), "a=1+2&b=%C3%A9"),
            EXPORTED,
            &[],
            Some("alice"),
        )
        .unwrap();
        assert_eq!((form["a"].as_str(), form["b"].as_str()), (Some("1 2"), Some("é")));
        assert_eq!(form["__ow_user"], "alice");

        let text = parameters(&t, &request("PUT", Some("text/plain"), "Jane"), EXPORTED, &[], None).unwrap();
        assert_eq!(text["__ow_body"], "Jane");
        let binary =
            parameters(&t, &request("PUT", Some("image/png"), "\u{1}\u{2}"), EXPORTED, &[], None).unwrap();
        assert_eq!(binary["__ow_body"], BASE64.encode([1u8, 2]));
    }

    #[test]
    fn raw_http_hands_over_the_query_and_body_unparsed() {
        let t = target("/api/v1/web/guest/default/raw.json?name=Jane");
        let raw = Export { raw_http: true, ..EXPORTED };
        let parameters =
            parameters(&t, &request("POST", Some("application/json"), r#"{"name":"Jane"}"#), raw, &[], None)
                .unwrap();
        assert_eq!(parameters["__ow_query"], "name=Jane");
        assert_eq!(parameters["__ow_body"], BASE64.encode(r#"{"name":"Jane"}"#), "JSON is binary");
        assert!(parameters.get("name").is_none());
    }

    #[test]
    fn final_and_reserved_parameters_cannot_be_given() {
        let defaults = [KeyValue { key: "name".into(), value: json!("Jane") }];
        let t = target("/api/v1/web/guest/default/echo.json?name=Eve");
        let refused = parameters(&t, &request("GET", None, ""), EXPORTED, &defaults, None).unwrap_err();
        assert_eq!(refused, Refused { status: 400, message: messages::PARAMETERS_NOT_ALLOWED.into() });
        let t = target("/api/v1/web/guest/default/echo.json?__ow_user=root");
        assert_eq!(parameters(&t, &request("GET", None, ""), EXPORTED, &[], None).unwrap_err().status, 400);
        let t = target("/api/v1/web/guest/default/echo.json");
        let malformed = parameters(&t, &request("POST", Some("application/json"), "{"), EXPORTED, &[], None);
        assert_eq!(malformed.unwrap_err().status, 400);
    }

    #[test]
    fn http_results_are_the_response() {
        let t = target("/api/v1/web/guest/default/page");
        let page = respond(&t, EXPORTED, 200, &record("success", json!({"body": "<h1>hi</h1>"})));
        assert_eq!((page.status, page.body.as_slice()), (200, b"<h1>hi</h1>".as_slice()));
        assert!(page.headers.contains(&("content-type".into(), "text/html; charset=UTF-8".into())));
        assert!(page.headers.contains(&("access-control-allow-origin".into(), "*".into())));

        let redirect = respond(
            &t,
            EXPORTED,
            200,
            &record("success", json!({"statusCode": 302, "headers": {"Location": "http://openwhisk.org"}})),
        );
        assert_eq!(redirect.status, 302);
        assert!(redirect.headers.contains(&("location".into(), "http://openwhisk.org".into())));
        assert!(redirect.body.is_empty());

        let png = respond(
            &t,
            EXPORTED,
            200,
            &record(
                "success",
                json!({"headers": {"content-type": "image/png"}, "body": BASE64.encode([137u8, 80])}),
            ),
        );
        assert_eq!(png.body, vec![137u8, 80]);
        let object = respond(&t, EXPORTED, 200, &record("success", json!({"body": {"a": 1}})));
        assert_eq!(serde_json::from_slice::<Value>(&object.body).unwrap(), json!({"a": 1}));
        assert_eq!(respond(&t, EXPORTED, 200, &record("success", json!({}))).status, 204);
        assert_eq!(respond(&t, EXPORTED, 200, &record("success", json!({"statusCode": 999}))).status, 400);
        let not_base64 = json!({"headers": {"content-type": "image/png"}, "body": "%%%"});
        assert_eq!(respond(&t, EXPORTED, 200, &record("success", not_base64)).status, 400);
        let custom = Export { custom_options: true, ..EXPORTED };
        let bare = respond(&t, custom, 200, &record("success", json!({"body": "x"})));
        assert!(!bare.headers.iter().any(|(name, _)| name.starts_with("access-control-")));
        let accepted = accepted(Export::default(), "a1");
        assert_eq!(
            (accepted.status, accepted.body.as_slice()),
            (202, br#"{"activationId":"a1"}"#.as_slice())
        );
        assert!(accepted.headers.contains(&("access-control-allow-origin".into(), "*".into())));
    }

    #[test]
    fn other_extensions_project_the_result() {
        let result = json!({"response": {"name": "Jane"}, "html": "<p>x</p>", "text": 5});
        let answer = |path: &str| respond(&target(path), EXPORTED, 200, &record("success", result.clone()));
        let json_reply = answer("/api/v1/web/guest/default/a.json");
        assert_eq!(serde_json::from_slice::<Value>(&json_reply.body).unwrap(), result);
        assert_eq!(answer("/api/v1/web/guest/default/a.json/response").body, br#"{"name":"Jane"}"#.to_vec());
        assert_eq!(answer("/api/v1/web/guest/default/a.text/response/name").body, b"Jane".to_vec());
        let html = answer("/api/v1/web/guest/default/a.html");
        assert_eq!((html.status, html.body.as_slice()), (200, b"<p>x</p>".as_slice()));
        assert_eq!(answer("/api/v1/web/guest/default/a.text").status, 400, "not a string");
        assert_eq!(answer("/api/v1/web/guest/default/a.svg").status, 404, "no svg field");
        assert_eq!(answer("/api/v1/web/guest/default/a.json/missing").status, 404);
    }

    #[test]
    fn errors_answer_the_error_property_or_the_platforms_error() {
        let t = target("/api/v1/web/guest/default/a.http/ignored");
        let application = respond(
            &t,
            EXPORTED,
            200,
            &record("application error", json!({"error": {"statusCode": 418, "body": "teapot"}})),
        );
        assert_eq!((application.status, application.body.as_slice()), (418, b"teapot".as_slice()));
        let crashed = respond(&t, EXPORTED, 502, &record("action developer error", json!({"error": "boom"})));
        assert_eq!(crashed.status, 502);
        assert_eq!(serde_json::from_slice::<Value>(&crashed.body).unwrap()["error"], "boom");
        let throttled = respond(&t, EXPORTED, 429, br#"{"error":"Too many requests","code":"x"}"#);
        assert_eq!(throttled.status, 429);
        assert_eq!(respond(&t, EXPORTED, 0, b"").status, 503);
        let preflight = preflight(EXPORTED);
        assert_eq!(preflight.status, 200);
        assert_eq!(preflight.headers.len(), 3);
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_answering_never_panic(path in "\\PC{0,60}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Some(target) = parse(&format!("{PREFIX}{path}")) {
                let _ = respond(&target, EXPORTED, 200, &body);
                let _ = parameters(&target, &HttpRequest { method: "POST".into(), headers: vec![], body }, EXPORTED, &[], None);
            }
        }
    }
}
