//! Which requests the filter handles: invokes of actions (turned into `/run` on a container),
//! internal paths (refused at the ingress), and everything else (passed to the management API).

/// An action invoke, parsed from `POST /api/v1/namespaces/{ns}/actions/{pkg/}{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// As given: `_` means the key's own namespace (the management API resolves it).
    pub namespace: String,
    pub package: Option<String>,
    pub name: String,
    /// Wait for the result (`blocking=true`, implied by `result=true`).
    pub blocking: bool,
    /// Answer with the bare result instead of the activation record.
    pub result_only: bool,
}

impl Invocation {
    /// `name` or `pkg/name`, as the resolve endpoint takes it.
    pub fn action_path(&self) -> String {
        match &self.package {
            Some(package) => [package, "/", &self.name].concat(),
            None => self.name.clone(),
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Invoke(Invocation),
    /// A web action request (`/api/v1/web/...`), any of the methods web actions answer.
    Web(crate::web::WebTarget),
    /// A platform-internal path: never reachable from the ingress.
    Internal,
    /// Anything else goes to the management API untouched.
    PassThrough,
}

/// Classifies a request by method and `:path` (with query).
pub fn classify(method: &str, path_and_query: &str) -> Route {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    if path.starts_with(whisk_contract::paths::INTERNAL_PREFIX) {
        return Route::Internal;
    }
    if path.starts_with(crate::web::PREFIX)
        && crate::web::METHODS.contains(&method)
        && let Some(target) = crate::web::parse(path_and_query)
    {
        return Route::Web(target);
    }
    if method != "POST" {
        return Route::PassThrough;
    }
    let Some(rest) = path.strip_prefix("/api/v1/namespaces/") else { return Route::PassThrough };
    if rest.contains('%') {
        let Some(decoded) = decoded_segments(rest) else { return Route::PassThrough };
        return invoke(decoded.iter().map(String::as_str), query);
    }
    // Most paths hold no escapes: their segments are read in place, nothing is collected.
    invoke(rest.split('/').filter(|s| !s.is_empty()), query)
}

/// The invoke of the action that `segments` (the path's after `/namespaces/`) name, or else a
/// pass-through.
fn invoke<'a>(mut segments: impl Iterator<Item = &'a str>, query: &str) -> Route {
    let parts: [Option<&str>; 5] = std::array::from_fn(|_| segments.next());
    let (namespace, package, name) = match parts {
        [Some(namespace), Some("actions"), Some(name), None, None] => (namespace, None, name),
        [Some(namespace), Some("actions"), Some(package), Some(name), None] => {
            (namespace, Some(package), name)
        }
        _ => return Route::PassThrough,
    };
    let flag = |wanted: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(key, value)| key == wanted && value.eq_ignore_ascii_case("true"))
    };
    let result_only = flag("result");
    Route::Invoke(Invocation {
        namespace: namespace.to_owned(),
        package: package.map(str::to_owned),
        name: name.to_owned(),
        blocking: result_only || flag("blocking"),
        result_only,
    })
}

/// The segments after `/namespaces/`, each percent-decoded (`None` when an escape is not valid
/// UTF-8); a name may arrive encoded as one segment (`pkg%2Fname`), so they split after decoding.
fn decoded_segments(rest: &str) -> Option<Vec<String>> {
    let decoded: Vec<String> =
        rest.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect::<Option<_>>()?;
    Some(decoded.iter().flat_map(|s| s.split('/')).map(str::to_owned).collect())
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a path segment or a query value.
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The blocking invoke of an action through the ingress (sequence components, web runs), each
/// segment percent-encoded: names may hold spaces and `@`.
pub fn blocking_invoke_path(namespace: &str, package: Option<&str>, name: &str) -> String {
    let mut path = format!("/api/v1/namespaces/{}/actions/", percent_encode(namespace));
    if let Some(package) = package {
        path.push_str(&percent_encode(package));
        path.push('/');
    }
    path.push_str(&percent_encode(name));
    path.push_str("?blocking=true");
    path
}

/// How late past its wait a client's blocking invoke may be answered before it runs detached
/// instead: a run on the client's own stream costs one hop less, and an answer this much late is
/// no worse than the overheads of the path itself (a local cold start is well below it).
pub const LATE_ANSWER_TOLERANCE_MS: u64 = 1_000;

/// Whether a client's blocking invoke that is about to run on its own stream, `waited_ms` after it
/// arrived, could answer later than `wait_ms` (plus the tolerance) with an action allowed to run
/// `timeout_ms`: then it must run detached, so that its wait can end in 202 while the run goes on.
pub fn could_answer_late(waited_ms: u64, timeout_ms: u64, wait_ms: u64) -> bool {
    waited_ms.saturating_add(timeout_ms) > wait_ms.saturating_add(LATE_ANSWER_TOLERANCE_MS)
}

/// Percent-decodes one path segment; `None` when the escapes are not valid UTF-8.
pub(crate) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = segment.get(index + 1..index + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_invoke_runs_detached_once_its_wait_and_limit_overrun_the_client_s_wait() {
        let wait = 60_000;
        // OpenWhisk's defaults: a 60 s limit fits a 60 s wait unless it queued past the tolerance.
        assert!(!could_answer_late(0, 60_000, wait));
        assert!(!could_answer_late(LATE_ANSWER_TOLERANCE_MS, 60_000, wait));
        assert!(could_answer_late(LATE_ANSWER_TOLERANCE_MS + 1, 60_000, wait));
        // A short action can queue most of the wait and still answer in time.
        assert!(!could_answer_late(59_000, 2_000, wait));
        assert!(could_answer_late(59_500, 2_000, wait));
        assert!(could_answer_late(u64::MAX, 1, wait), "no overflow");
    }

    fn invoke(path: &str) -> Invocation {
        match classify("POST", path) {
            Route::Invoke(invocation) => invocation,
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn invokes_are_recognised_with_and_without_package() {
        let plain = invoke("/api/v1/namespaces/_/actions/hello?blocking=true");
        assert_eq!((plain.namespace.as_str(), plain.package, plain.name.as_str()), ("_", None, "hello"));
        assert!(plain.blocking && !plain.result_only);
        let packaged = invoke("/api/v1/namespaces/guest/actions/utils/echo");
        assert_eq!(packaged.package.as_deref(), Some("utils"));
        assert_eq!(packaged.action_path(), "utils/echo");
        assert!(!packaged.blocking);
        let encoded = invoke("/api/v1/namespaces/guest/actions/utils%2Fecho?result=true");
        assert_eq!((encoded.package.as_deref(), encoded.name.as_str()), (Some("utils"), "echo"));
        assert!(encoded.blocking && encoded.result_only, "result=true implies blocking");
        assert_eq!(invoke("/api/v1/namespaces/_/actions/h%C3%A9llo%20x").name, "héllo x");
    }

    #[test]
    fn everything_else_passes_through_or_is_refused() {
        assert_eq!(classify("GET", "/api/v1/namespaces/_/actions/hello"), Route::PassThrough);
        assert_eq!(classify("PUT", "/api/v1/namespaces/_/actions/hello"), Route::PassThrough);
        assert_eq!(classify("POST", "/api/v1/namespaces/_/triggers/t"), Route::PassThrough);
        assert_eq!(classify("POST", "/api/v1/namespaces/_/actions"), Route::PassThrough);
        assert_eq!(classify("POST", "/api/v1/namespaces/_/actions/a/b/c"), Route::PassThrough);
        assert_eq!(classify("POST", "/api/v1/namespaces/_/actions/%zz"), Route::PassThrough);
        assert_eq!(classify("GET", "/internal/v1/resolve"), Route::Internal);
        assert_eq!(classify("POST", "/internal/v1/activations"), Route::Internal);
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(method in "[A-Z]{0,7}", path in "\\PC{0,80}") {
            let _ = classify(&method, &path);
        }

        #[test]
        fn paths_without_escapes_read_in_place_as_the_decoding_reads_them(
            rest in "[a-z_/]{0,6}(actions)?[a-z_/]{0,12}",
            query in "(blocking|result)?=?(true|TRUE)?",
        ) {
            let decoded = decoded_segments(&rest).map(|segments| super::invoke(segments.iter().map(String::as_str), &query));
            proptest::prop_assert_eq!(Some(super::invoke(rest.split('/').filter(|s| !s.is_empty()), &query)), decoded);
        }
    }
}
