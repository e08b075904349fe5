//! The OpenWhisk runtime protocol, end to end over HTTP: the real router on a loopback port (and the
//! real binary for startup and shutdown), Node.js, Python and native actions.
//!
//! Every child a test starts dies with the test: the runtime's processes are `kill_on_drop` and its
//! launchers exit when their stdin closes.

// clippy.toml allows these in `#[test]` functions only; the helpers here are test code as well.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use action_runtime::{AppState, Config, router};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONTAINER: &str = "c-test";

/// An HTTP client of one runtime.
struct Client {
    base: String,
    http: reqwest::Client,
}

/// A runtime serving on a loopback port for the length of a test.
struct Runtime {
    client: Client,
    server: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

impl std::ops::Deref for Runtime {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(kind: &str) -> Runtime {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        container_id: CONTAINER.into(),
        kind: kind.parse().unwrap(),
        work_dir: None,
        log_header_limit: 32 * 1024,
        node: "node".into(),
        python: "python3".into(),
    };
    let state = AppState::new(&config).unwrap();
    // As the binary does: the kind's launcher waits for the code before `/init` comes.
    state.start_standby().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Runtime { client: Client { base, http: reqwest::Client::new() }, server, state }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn envelope(value: Value, activation_id: &str, deadline_ms: u64) -> Value {
    json!({
        "value": value,
        "namespace": "guest",
        "action_name": "/guest/test",
        "api_host": "http://127.0.0.1",
        "api_key": "key:secret",
        "activation_id": activation_id,
        "transaction_id": "tx",
        "deadline": deadline_ms.to_string(),
        "action_version": "0.0.1",
    })
}

struct Reply {
    status: StatusCode,
    body: Value,
    logs: Vec<String>,
}

impl Client {
    async fn post(&self, path: &str, body: &Value, container: Option<&str>) -> Reply {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(id) = container {
            request = request.header("x-whisk-container-id", id);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let logs = match response.headers().get("x-whisk-logs") {
            Some(h) => serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD.decode(h.as_bytes()).unwrap(),
            )
            .unwrap(),
            None => Vec::new(),
        };
        let body = response.json().await.unwrap();
        Reply { status, body, logs }
    }

    async fn init_value(&self, value: Value) -> Reply {
        self.post("/init", &json!({ "value": value }), None).await
    }

    async fn init(&self, code: &str, main: &str) -> Reply {
        self.init_value(json!({"name": "test", "main": main, "code": code, "binary": false})).await
    }

    async fn init_ok(&self, code: &str) {
        let reply = self.init(code, "main").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }

    async fn run_with(&self, value: Value, activation_id: &str, deadline_ms: u64) -> Reply {
        self.post("/run", &envelope(value, activation_id, deadline_ms), Some(CONTAINER)).await
    }

    async fn run(&self, value: Value) -> Reply {
        self.run_with(value, "0123456789abcdef", now_ms() + 30_000).await
    }
}

/// Checks the OpenWhisk log line shape and returns `(stream, text)`.
fn parse_log(line: &str) -> (String, String) {
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(time.len(), 24, "{line}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.', "{line}");
    let (stream, text) = rest.split_once(": ").unwrap();
    assert!(stream == "stdout" || stream == "stderr", "{line}");
    (stream.to_string(), text.to_string())
}

fn texts(logs: &[String]) -> Vec<(String, String)> {
    logs.iter().map(|l| parse_log(l)).collect()
}

// ---------------------------------------------------------------------------------------------
// Node.js and Python, the canonical suite's checks.

const NODE_IDENTITY: &str = "function main(args) { return args; }";
const PY_IDENTITY: &str = "def main(args):\n    return args\n";

#[tokio::test]
async fn node_identity() {
    let rt = start("nodejs:20").await;
    rt.init_ok(NODE_IDENTITY).await;
    let reply = rt.run(json!({"a": 1, "b": [true, null]})).await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, json!({"a": 1, "b": [true, null]})));
    assert!(reply.logs.is_empty(), "{:?}", reply.logs);
}

#[tokio::test]
async fn python_identity() {
    let rt = start("python:3").await;
    rt.init_ok(PY_IDENTITY).await;
    let reply = rt.run(json!({"a": 1, "b": [true, null]})).await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, json!({"a": 1, "b": [true, null]})));
}

#[tokio::test]
async fn node_unicode_in_code_params_results_and_logs() {
    let rt = start("nodejs:20").await;
    rt.init_ok(
        r#"function main(args) {
            const str = args.delimiter + " ☃ " + args.delimiter;
            console.log(str);
            return { winter: str, mark: "✓ 你好" };
        }"#,
    )
    .await;
    let reply = rt.run(json!({"delimiter": "❄"})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"winter": "❄ ☃ ❄", "mark": "✓ 你好"}));
    assert_eq!(texts(&reply.logs), vec![("stdout".into(), "❄ ☃ ❄".into())]);
}

#[tokio::test]
async fn python_unicode_in_code_params_results_and_logs() {
    let rt = start("python:3").await;
    rt.init_ok(
        "def main(args):\n    s = args['delimiter'] + ' ☃ ' + args['delimiter']\n    print(s)\n    \
         return {'winter': s, 'mark': '✓ 你好'}\n",
    )
    .await;
    let reply = rt.run(json!({"delimiter": "❄"})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"winter": "❄ ☃ ❄", "mark": "✓ 你好"}));
    assert_eq!(texts(&reply.logs), vec![("stdout".into(), "❄ ☃ ❄".into())]);
}

async fn check_env_vars(rt: &Client) {
    let deadline = now_ms() + 30_000;
    let first = rt.run_with(json!({}), "first-id", deadline).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(
        first.body,
        json!({
            "activation_id": "first-id",
            "namespace": "guest",
            "action_name": "/guest/test",
            "deadline": deadline.to_string(),
            "api_key": "key:secret",
            "api_host": "http://127.0.0.1",
            "action_version": "0.0.1",
        })
    );
    // A second activation without an api_key: the previous one must not leak into it.
    let mut body = envelope(json!({}), "second-id", deadline);
    body.as_object_mut().unwrap().remove("api_key");
    let second = rt.post("/run", &body, None).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.body["activation_id"], "second-id");
    assert_eq!(second.body["api_key"], Value::Null);
}

#[tokio::test]
async fn node_activation_env_vars_are_set_and_reset() {
    let rt = start("nodejs:20").await;
    rt.init_ok(
        r#"function main() {
            const e = process.env;
            return { activation_id: e.__OW_ACTIVATION_ID, namespace: e.__OW_NAMESPACE,
                     action_name: e.__OW_ACTION_NAME, deadline: e.__OW_DEADLINE,
                     api_key: e.__OW_API_KEY === undefined ? null : e.__OW_API_KEY,
                     api_host: e.__OW_API_HOST, action_version: e.__OW_ACTION_VERSION };
        }"#,
    )
    .await;
    check_env_vars(&rt).await;
}

#[tokio::test]
async fn python_activation_env_vars_are_set_and_reset() {
    let rt = start("python:3.11").await;
    rt.init_ok(
        "import os\ndef main(args):\n    e = os.environ\n    return {'activation_id': e['__OW_ACTIVATION_ID'], \
         'namespace': e['__OW_NAMESPACE'], 'action_name': e['__OW_ACTION_NAME'], 'deadline': e['__OW_DEADLINE'], \
         'api_key': e.get('__OW_API_KEY'), 'api_host': e['__OW_API_HOST'], 'action_version': e['__OW_ACTION_VERSION']}\n",
    )
    .await;
    check_env_vars(&rt).await;
}

#[tokio::test]
async fn init_env_is_visible_to_the_action() {
    let rt = start("nodejs:20").await;
    let reply = rt
        .init_value(json!({"main": "main", "code": "exports.main = () => ({ v: process.env.GREETING })",
                           "env": {"GREETING": "hé"}}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(rt.run(json!({})).await.body, json!({"v": "hé"}));
}

/// The launcher that waited before `/init` is the one that runs the code: its start is not on the
/// path of `/init` (what a prewarmed container is for).
#[tokio::test]
async fn the_standby_launcher_runs_the_code() {
    for (kind, code) in [
        (
            "nodejs:20",
            "function main() { return { pid: process.pid, cwd: process.cwd(), v: process.env.V }; }",
        ),
        (
            "python:3",
            "import os\ndef main(args):\n    return {'pid': os.getpid(), 'cwd': os.getcwd(), 'v': os.environ.get('V')}\n",
        ),
    ] {
        let rt = start(kind).await;
        let standby = rt.state.standby_pid().await.expect("a standby launcher");
        let reply = rt
            .init_value(
                json!({"name": "test", "main": "main", "code": code, "binary": false, "env": {"V": "1"}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{kind}: {}", reply.body);
        assert_eq!(rt.state.standby_pid().await, None, "{kind}: /init took the standby");
        let ran = rt.run(json!({})).await.body;
        assert_eq!(ran["pid"], json!(standby), "{kind}: {ran}");
        assert_eq!(ran["v"], "1", "{kind}: /init's env reaches the code: {ran}");
        let action_dir = rt.state.work_dir().join("action");
        assert_eq!(std::path::Path::new(ran["cwd"].as_str().unwrap()), action_dir, "{kind}: {ran}");
    }
}

/// An `env` the interpreter reads when it starts cannot reach a launcher already running: that
/// action gets a launcher of its own, and the standby one is stopped.
#[tokio::test]
async fn init_env_read_at_start_gets_a_fresh_launcher() {
    let rt = start("nodejs:20").await;
    let standby = rt.state.standby_pid().await.expect("a standby launcher");
    let reply = rt
        .init_value(json!({"main": "main", "code": "exports.main = () => ({ pid: process.pid, title: process.title })",
                           "env": {"NODE_OPTIONS": "--title=whisk-fresh"}}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let ran = rt.run(json!({})).await.body;
    assert_eq!(ran["title"], "whisk-fresh", "NODE_OPTIONS applied at the start: {ran}");
    assert_ne!(ran["pid"], json!(standby));
    assert!(!std::path::Path::new(&format!("/proc/{standby}")).exists(), "the standby launcher was stopped");
}

async fn check_large_payload(rt: &Client) {
    let big = "é".repeat(700_000); // 1.4 MB of UTF-8
    let reply = rt.run(json!({"big": big})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["big"].as_str().map(str::len), Some(big.len()));
    assert_eq!(reply.body["big"], big);
}

#[tokio::test]
async fn node_large_payload_round_trips() {
    let rt = start("nodejs:20").await;
    rt.init_ok(NODE_IDENTITY).await;
    check_large_payload(&rt).await;
}

#[tokio::test]
async fn python_large_payload_round_trips() {
    let rt = start("python:3").await;
    rt.init_ok(PY_IDENTITY).await;
    check_large_payload(&rt).await;
}

#[tokio::test]
async fn node_entry_point_other_than_main() {
    let rt = start("nodejs:20").await;
    let reply = rt.init("function niam(args) { return { result: 'it works' }; }", "niam").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(rt.run(json!({})).await.body, json!({"result": "it works"}));
}

#[tokio::test]
async fn python_entry_point_other_than_main() {
    let rt = start("python:3").await;
    let reply = rt.init("def niam(args):\n    return {'result': 'it works'}\n", "niam").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(rt.run(json!({})).await.body, json!({"result": "it works"}));
}

#[tokio::test]
async fn node_async_and_module_exports_styles() {
    let rt = start("nodejs:20").await;
    rt.init_ok("module.exports.main = async (p) => { await new Promise(r => setTimeout(r, 10)); return { n: p.n + 1 }; };")
        .await;
    assert_eq!(rt.run(json!({"n": 1})).await.body, json!({"n": 2}));
    let rt = start("nodejs:20").await;
    rt.init_ok("module.exports = function (p) { return { whole: true }; };").await;
    assert_eq!(rt.run(json!({})).await.body, json!({"whole": true}));
    let rt = start("nodejs:20").await;
    rt.init_ok("export async function main(p) { return { esm: p.x }; }").await;
    assert_eq!(rt.run(json!({"x": "✓"})).await.body, json!({"esm": "✓"}));
}

#[tokio::test]
async fn second_init_is_refused() {
    for (kind, code) in [("nodejs:20", NODE_IDENTITY), ("python:3", PY_IDENTITY)] {
        let rt = start(kind).await;
        rt.init_ok(code).await;
        let again = rt.init(code, "main").await;
        assert_eq!(again.status, StatusCode::FORBIDDEN, "{kind}");
        assert!(again.body["error"].as_str().unwrap().contains("more than once"), "{}", again.body);
        // Still serving the first code.
        assert_eq!(rt.run(json!({"x": 1})).await.body, json!({"x": 1}));
    }
}

#[tokio::test]
async fn non_object_results_are_errors() {
    for (kind, code) in [
        ("nodejs:20", "function main() { return 'a string'; }"),
        ("nodejs:20", "function main() { }"),
        ("python:3", "def main(args):\n    return [1, 2]\n"),
        ("python:3", "def main(args):\n    pass\n"),
    ] {
        let rt = start(kind).await;
        rt.init_ok(code).await;
        let reply = rt.run(json!({})).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{kind}: {code}");
        assert_eq!(reply.body, json!({"error": "The action did not return a dictionary."}), "{kind}: {code}");
    }
}

#[tokio::test]
async fn empty_code_is_an_init_error() {
    for kind in ["nodejs:20", "python:3", "native"] {
        let rt = start(kind).await;
        let reply = rt.init("", "main").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{kind}");
        assert!(reply.body["error"].is_string(), "{}", reply.body);
        // Not initialised: /run is refused.
        let run = rt.run(json!({})).await;
        assert_eq!(run.status, StatusCode::FORBIDDEN);
        assert!(run.body["error"].is_string());
    }
}

#[tokio::test]
async fn code_that_does_not_load_is_an_init_error() {
    for (kind, code, expected) in [
        ("nodejs:20", "function main( {", "SyntaxError"),
        ("nodejs:20", "function other() { return {}; }", "Action entrypoint 'main' is not a function."),
        ("python:3", "def main(args)\n    return {}\n", "SyntaxError"),
        ("python:3", "def other(args):\n    return {}\n", "Action entrypoint 'main' is not a function."),
    ] {
        let rt = start(kind).await;
        let reply = rt.init(code, "main").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{kind}: {code}");
        let error = reply.body["error"].as_str().unwrap();
        assert!(error.starts_with("Initialization has failed due to: "), "{error}");
        assert!(error.contains(expected), "{kind}: {error}");
    }
}

#[tokio::test]
async fn node_thrown_error_is_reported_and_logged() {
    let rt = start("nodejs:20").await;
    rt.init_ok("function main(p) { if (p.reject) return Promise.reject(new Error('rejected')); throw new Error('boom'); }")
        .await;
    let reply = rt.run(json!({})).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, json!({"error": "An error has occurred: Error: boom"}));
    assert!(
        texts(&reply.logs).iter().any(|(s, t)| s == "stderr" && t.contains("Error: boom")),
        "{:?}",
        reply.logs
    );
    let reply = rt.run(json!({"reject": true})).await;
    assert_eq!(reply.body, json!({"error": "An error has occurred: Error: rejected"}));
    // The process survives a thrown error.
    assert_eq!(rt.run(json!({"reject": true})).await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn python_thrown_error_is_reported_and_logged() {
    let rt = start("python:3").await;
    rt.init_ok("def main(args):\n    raise ValueError('boom')\n").await;
    let reply = rt.run(json!({})).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, json!({"error": "An error has occurred: ValueError: boom"}));
    let logs = texts(&reply.logs);
    assert!(logs.iter().any(|(s, t)| s == "stderr" && t.contains("ValueError: boom")), "{logs:?}");
}

#[tokio::test]
async fn node_logs_are_returned_in_order() {
    let rt = start("nodejs:20").await;
    rt.init_ok(
        r#"function main(p) {
            console.log("first " + p.n);
            console.error("second");
            console.log("third\nfourth");
            return {};
        }"#,
    )
    .await;
    for n in 0..2 {
        let reply = rt.run(json!({"n": n})).await;
        assert_eq!(reply.status, StatusCode::OK);
        let logs = texts(&reply.logs);
        let stdout: Vec<_> = logs.iter().filter(|(s, _)| s == "stdout").map(|(_, t)| t.as_str()).collect();
        assert_eq!(stdout, vec![format!("first {n}").as_str(), "third", "fourth"]);
        assert!(logs.contains(&("stderr".into(), "second".into())), "{logs:?}");
        assert_eq!(logs.len(), 4);
    }
}

#[tokio::test]
async fn python_logs_are_returned_in_order() {
    let rt = start("python:3").await;
    rt.init_ok(
        "import sys\ndef main(args):\n    print('first')\n    print('second', file=sys.stderr)\n    \
         print('third')\n    return {}\n",
    )
    .await;
    let reply = rt.run(json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Each stream keeps its order; across streams the order is the proxy's read order, which two pipes
    // cannot make exact under load, so only membership is checked there.
    let logs = texts(&reply.logs);
    let stdout: Vec<_> = logs.iter().filter(|(s, _)| s == "stdout").map(|(_, t)| t.as_str()).collect();
    assert_eq!(stdout, vec!["first", "third"]);
    assert!(logs.contains(&("stderr".into(), "second".into())), "{logs:?}");
    assert_eq!(logs.len(), 3);
}

#[tokio::test]
async fn logs_over_the_limit_are_truncated() {
    let rt = start("nodejs:20").await;
    rt.init_ok("function main() { for (let i = 0; i < 2000; i++) console.log('line ' + i + ' ' + 'x'.repeat(40)); return {}; }")
        .await;
    let reply = rt.run(json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(serde_json::to_vec(&reply.logs).unwrap().len() <= 32 * 1024);
    let (stream, last) = parse_log(reply.logs.last().unwrap());
    assert_eq!(stream, "stderr");
    assert_eq!(last, "Logs were truncated because the total bytes size exceeds the limit of 32768 bytes.");
    assert!(reply.logs[0].ends_with("stdout: line 0 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
}

async fn check_time_limit(rt: &Client) {
    let reply = rt.run_with(json!({"forever": true}), "slow", now_ms() + 500).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.body, json!({"error": "The action exceeded its time limit."}));
    assert!(texts(&reply.logs).contains(&("stdout".into(), "looping".into())), "{:?}", reply.logs);
    // The process was killed; the next activation gets a fresh one.
    let reply = rt.run(json!({"forever": false})).await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, json!({"done": true})));
    // A deadline that already passed is refused without running.
    let reply = rt.run_with(json!({"forever": false}), "late", now_ms() - 1).await;
    assert_eq!(reply.body, json!({"error": "The action exceeded its time limit."}));
    assert_eq!(rt.run(json!({"forever": false})).await.status, StatusCode::OK);
}

#[tokio::test]
async fn node_time_limit_kills_and_recovers() {
    let rt = start("nodejs:20").await;
    rt.init_ok("function main(p) { if (p.forever) { console.log('looping'); while (true) {} } return { done: true }; }")
        .await;
    check_time_limit(&rt).await;
}

#[tokio::test]
async fn python_time_limit_kills_and_recovers() {
    let rt = start("python:3").await;
    rt.init_ok("def main(args):\n    if args['forever']:\n        print('looping')\n        while True:\n            pass\n    return {'done': True}\n")
        .await;
    check_time_limit(&rt).await;
}

#[tokio::test]
async fn node_crash_is_reported_and_the_process_respawned() {
    let rt = start("nodejs:20").await;
    rt.init_ok("let runs = 0; function main(p) { runs++; if (p.crash) { console.error('bye'); process.exit(3); } return { runs }; }")
        .await;
    assert_eq!(rt.run(json!({})).await.body, json!({"runs": 1}));
    let reply = rt.run(json!({"crash": true})).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        json!({"error": "The action did not produce a valid response and exited unexpectedly."})
    );
    assert!(texts(&reply.logs).contains(&("stderr".into(), "bye".into())), "{:?}", reply.logs);
    // Reloaded from the stored code: the module state starts over.
    assert_eq!(rt.run(json!({})).await.body, json!({"runs": 1}));
}

#[tokio::test]
async fn misrouted_requests_are_refused() {
    let rt = start("nodejs:20").await;
    let wrong = rt.post("/init", &json!({"value": {"code": NODE_IDENTITY}}), Some("other")).await;
    assert_eq!(wrong.status, StatusCode::MISDIRECTED_REQUEST);
    rt.init_ok("let runs = 0; function main() { return { runs: ++runs }; }").await;
    let wrong = rt.post("/run", &envelope(json!({}), "x", now_ms() + 30_000), Some("c-other")).await;
    assert_eq!(wrong.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(wrong.body, json!({"error": "misrouted: this is container c-test"}));
    // Nothing ran.
    assert_eq!(rt.run(json!({})).await.body, json!({"runs": 1}));
}

#[tokio::test]
async fn overlapping_run_is_refused_not_queued() {
    let rt = Arc::new(start("nodejs:20").await);
    let dir = tempfile::tempdir().unwrap();
    let (started, release) = (dir.path().join("started"), dir.path().join("release"));
    rt.init_ok(
        r#"const fs = require('fs');
        function main(p) {
            fs.writeFileSync(p.started, '');
            return new Promise((resolve) => {
                const t = setInterval(() => {
                    if (fs.existsSync(p.release)) { clearInterval(t); resolve({ waited: true }); }
                }, 10);
            });
        }"#,
    )
    .await;
    let first = {
        let rt = rt.clone();
        let params =
            json!({"started": started.display().to_string(), "release": release.display().to_string()});
        tokio::spawn(async move { rt.run(params).await })
    };
    eventually("the first activation runs", || started.exists()).await;
    let refused = rt.run(json!({})).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.body, json!({"error": "The container is busy with another activation."}));
    std::fs::write(&release, "").unwrap();
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body), (StatusCode::OK, json!({"waited": true})));
}

/// Polls `condition` until it holds (instead of sleeping and hoping).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn run_before_init_is_refused() {
    let rt = start("python:3").await;
    let reply = rt.run(json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body["error"].is_string());
}

// ---------------------------------------------------------------------------------------------
// Archives and executables.

fn zip_of(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text, mode) in files {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        writer.start_file(*name, options).unwrap();
        writer.write_all(text.as_bytes()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test]
async fn node_zip_with_package_json_main() {
    let rt = start("nodejs:20").await;
    let zip = zip_of(&[
        ("package.json", r#"{"name": "zipped", "main": "lib/entry.js"}"#, 0o644),
        (
            "lib/entry.js",
            "const helper = require('./helper');\nexports.main = (p) => ({ greeting: helper(p.name) });\n",
            0o644,
        ),
        ("lib/helper.js", "module.exports = (name) => `hello ${name} ✓`;\n", 0o644),
    ]);
    let reply =
        rt.init_value(json!({"name": "zipped", "main": "main", "code": b64(&zip), "binary": true})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(rt.run(json!({"name": "Jöhn"})).await.body, json!({"greeting": "hello Jöhn ✓"}));
}

#[tokio::test]
async fn python_zip_with_main_module() {
    let rt = start("python:3").await;
    let zip = zip_of(&[
        (
            "__main__.py",
            "from helper import greet\ndef main(args):\n    return {'greeting': greet(args['name'])}\n",
            0o644,
        ),
        ("helper.py", "def greet(name):\n    return 'hello ' + name\n", 0o644),
    ]);
    let reply = rt.init_value(json!({"main": "main", "code": b64(&zip), "binary": true})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(rt.run(json!({"name": "Jöhn"})).await.body, json!({"greeting": "hello Jöhn"}));
}

const NATIVE: &str = r#"#!/bin/sh
case "$1" in *fail*) echo "failing ✗" >&2; exit 3;; esac
echo "native log ✓"
echo "native err" >&2
printf '{"args": %s, "id": "%s"}\n' "$1" "$__OW_ACTIVATION_ID"
"#;

#[tokio::test]
async fn native_executable_runs_per_activation() {
    let rt = start("native").await;
    let reply = rt.init_value(json!({"main": "main", "code": b64(NATIVE.as_bytes()), "binary": true})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = rt.run_with(json!({"name": "Jöhn"}), "native-id", now_ms() + 30_000).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, json!({"args": {"name": "Jöhn"}, "id": "native-id"}));
    let logs = texts(&reply.logs);
    assert!(logs.contains(&("stdout".into(), "native log ✓".into())), "{logs:?}");
    assert!(logs.contains(&("stderr".into(), "native err".into())), "{logs:?}");
    assert_eq!(logs.len(), 2);

    let reply = rt.run(json!({"fail": true})).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        json!({"error": "The action did not produce a valid response and exited unexpectedly."})
    );
    assert_eq!(texts(&reply.logs), vec![("stderr".into(), "failing ✗".into())]);
}

#[tokio::test]
async fn native_zip_with_exec_and_text_script() {
    let rt = start("blackbox").await;
    let zip = zip_of(&[("exec", "#!/bin/sh\necho '[1]'\n", 0o755)]);
    let reply = rt.init_value(json!({"code": b64(&zip), "binary": true})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = rt.run(json!({})).await;
    assert_eq!(reply.body, json!({"error": "The action did not return a dictionary."}));

    let rt = start("native").await;
    rt.init_ok("#!/bin/sh\necho '{\"text\": true}'\n").await;
    assert_eq!(rt.run(json!({})).await.body, json!({"text": true}));
}

#[tokio::test]
async fn health_answers() {
    let rt = start("nodejs:20").await;
    let response = rt.http.get(format!("{}/health", rt.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// The real binary: startup errors, signals, the child's fate.

mod binary {
    use super::*;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    use tokio::process::{Child, Command};

    fn gone(pid: i32) -> bool {
        // A zombie that nobody reaped yet is as dead as a missing process.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// Starts the binary on a free port and returns it once it listens.
    async fn spawn(work_dir: &std::path::Path) -> (Child, Client) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_action-runtime"))
            .args(["--listen", "127.0.0.1:0", "--container-id", CONTAINER, "--kind", "nodejs:20"])
            .arg("--work-dir")
            .arg(work_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listen = loop {
            let line = lines.next_line().await.unwrap().expect("the runtime exited before listening");
            if let Some(rest) = line.split_once("listen=").map(|(_, r)| r) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining the log so the runtime never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, Client { base: format!("http://{listen}"), http: reqwest::Client::new() })
    }

    async fn launcher_pid(rt: &Client) -> i32 {
        rt.init_ok("function main() { return { pid: process.pid }; }").await;
        let reply = rt.run(json!({})).await;
        reply.body["pid"].as_i64().unwrap() as i32
    }

    #[tokio::test]
    async fn unknown_kind_refuses_to_start() {
        let output = Command::new(env!("CARGO_BIN_EXE_action-runtime"))
            .args(["--listen", "127.0.0.1:0", "--container-id", "c", "--kind", "cobol:85"])
            .output()
            .await
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("unknown kind 'cobol:85'"), "{stderr}");
    }

    #[tokio::test]
    async fn sigterm_kills_the_child_removes_the_work_dir_and_exits_zero() {
        let dir = tempfile::tempdir().unwrap();
        let work_dir = dir.path().join("work");
        let (mut child, rt) = spawn(&work_dir).await;
        let pid = launcher_pid(&rt).await;
        assert!(work_dir.join("action").exists());
        let proxy = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
        nix::sys::signal::kill(proxy, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status}");
        assert!(!work_dir.exists());
        eventually("the launcher is gone", || gone(pid)).await;
    }

    #[tokio::test]
    async fn sigkill_of_the_proxy_ends_the_launcher() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, rt) = spawn(&dir.path().join("work")).await;
        let pid = launcher_pid(&rt).await;
        child.kill().await.unwrap();
        eventually("the launcher exits on end of stdin", || gone(pid)).await;
    }
}
