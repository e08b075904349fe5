//! Claims never leak: a runaway activation ends at the action's time limit with OpenWhisk's message
//! and the container stays usable; a client that goes away mid-activation gets its container
//! retired (out of xDS at once, stopped once its deadline passed) instead of handed out again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::client::{Client, annotation, control_metrics, metric};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::json;

const MAYBE_LOOP_JS: &str = "function main(p) { if (p.loop) { while (true) {} } return {ok: true}; }";
const SLEEPY_JS: &str =
    "function main(p) { return new Promise(r => setTimeout(() => r({slept: p.ms}), p.ms)); }";
/// Sleeps `ms` and passes it on: a sequence of these sleeps `ms` per component.
const SLEEP_ON_JS: &str =
    "function main(p) { return new Promise(r => setTimeout(() => r({ms: p.ms}), p.ms)); }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_end_runaways_and_lost_clients_retire_their_container() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        Options::for_test(dir.path(), "envoy-limits").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);

    // A runaway activation ends at its limit with OpenWhisk's message and annotation.
    let action = json!({"exec": {"kind": "nodejs:20", "code": MAYBE_LOOP_JS}, "limits": {"timeout": 1000}});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/loop?overwrite=true", &action).await.unwrap().status,
        200
    );
    assert_eq!(client.invoke("loop", &json!({}), true).await.unwrap().status, 200);
    let started = Instant::now();
    let runaway = client.invoke("loop", &json!({"loop": true}), false).await.unwrap();
    assert_eq!(runaway.status, 502, "{}", runaway.body);
    assert_eq!(runaway.body["response"]["status"], "action developer error");
    assert_eq!(
        runaway.body["response"]["result"]["error"],
        "The action exceeded its time limits of 1000 milliseconds."
    );
    assert_eq!(annotation(&runaway.body, "timeout"), Some(json!(true)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended near its limit, not later: {:?}",
        started.elapsed()
    );
    // The same container serves again (the runtime restarted the action process).
    let after = client.invoke("loop", &json!({}), false).await.unwrap();
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(annotation(&after.body, "initTime"), None, "warm: the container was not lost");

    // A client that disconnects mid-activation: its container is retired, never reused.
    assert_eq!(client.create_action("sleepy", "nodejs:20", SLEEPY_JS).await.unwrap().status, 200);
    assert_eq!(client.invoke("sleepy", &json!({"ms": 1}), true).await.unwrap().status, 200);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let (user, password) = GUEST_KEY.split_once(':').unwrap();
    let gone = impatient
        .post(format!("{}/api/v1/namespaces/_/actions/sleepy?blocking=true", platform.api_host()))
        .basic_auth(user, Some(password))
        .json(&json!({"ms": 1500}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&control_metrics(&platform).await.unwrap(), "xds_whisk_containers_retired_total", "") < 1.0 {
        assert!(Instant::now() < deadline, "the abandoned container was never retired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next invoke does not get the retired container: a new one starts.
    let next = client.invoke("sleepy", &json!({"ms": 1}), false).await.unwrap();
    assert_eq!(next.status, 200, "{}", next.body);
    assert!(annotation(&next.body, "initTime").is_some(), "a fresh container, not the abandoned one");
}

/// A blocking invoke of an action allowed to run longer than a client may wait, or of a sequence:
/// answered with its result when it ends within the wait, 202 with the activation id when it runs
/// past it, and the record appears once it ends (OpenWhisk's blocking invoke, with the wait
/// shortened here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_invoke_past_the_wait_turns_into_202_and_its_record_appears() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-blocking-wait").unwrap();
    options.xds_args = ["--blocking-wait-ms", "1500"].map(String::from).to_vec();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let action = json!({"exec": {"kind": "nodejs:20", "code": SLEEPY_JS}, "limits": {"timeout": 10_000}});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/long?overwrite=true", &action).await.unwrap().status,
        200
    );

    // Within the wait (the first one a cold start): the record, or only the result, as usual.
    let quick = client.invoke("long", &json!({"ms": 50}), false).await.unwrap();
    assert_eq!(quick.status, 200, "{}", quick.body);
    assert_eq!(quick.body["response"]["result"], json!({"slept": 50}));
    assert_eq!(quick.body["activationId"].as_str(), quick.activation_id.as_deref());
    let result_only = client.invoke("long", &json!({"ms": 50}), true).await.unwrap();
    assert_eq!((result_only.status, result_only.body), (200, json!({"slept": 50})));

    // Past the wait: 202 with the id about when the wait ends, long before the action does.
    let started = Instant::now();
    let slow = client.invoke("long", &json!({"ms": 4_000}), true).await.unwrap();
    let answered_after = started.elapsed();
    assert_eq!(slow.status, 202, "{}", slow.body);
    let id = slow.body["activationId"].as_str().unwrap().to_owned();
    assert_eq!(slow.activation_id.as_deref(), Some(id.as_str()));
    assert!(answered_after >= Duration::from_millis(1_400), "answered after {answered_after:?}");
    assert!(answered_after < Duration::from_millis(3_500), "answered after {answered_after:?}");
    let record = client.wait_for_activation(&id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(record.status, 200, "{}", record.body);
    assert_eq!(record.body["response"]["result"], json!({"slept": 4_000}));
    assert!(record.body["duration"].as_u64().unwrap() >= 4_000, "{}", record.body);
    assert!(started.elapsed() >= Duration::from_secs(4));

    // A sequence past the wait: 202 with the sequence's id; its record (and its components') later.
    let sleep_on = json!({"exec": {"kind": "nodejs:20", "code": SLEEP_ON_JS}});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/nap?overwrite=true", &sleep_on).await.unwrap().status,
        200
    );
    let naps = json!({"exec": {"kind": "sequence", "components": ["/guest/nap", "/guest/nap"]}});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/naps?overwrite=true", &naps).await.unwrap().status,
        200
    );
    let quick_sequence = client.invoke("naps", &json!({"ms": 10}), true).await.unwrap();
    assert_eq!((quick_sequence.status, quick_sequence.body), (200, json!({"ms": 10})));
    let started = Instant::now();
    let long_sequence = client.invoke("naps", &json!({"ms": 1_000}), false).await.unwrap();
    let answered_after = started.elapsed();
    assert_eq!(long_sequence.status, 202, "{}", long_sequence.body);
    assert!(answered_after < Duration::from_millis(1_900), "answered after {answered_after:?}");
    let id = long_sequence.body["activationId"].as_str().unwrap().to_owned();
    let record = client.wait_for_activation(&id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(record.status, 200, "{}", record.body);
    assert_eq!(record.body["response"]["result"], json!({"ms": 1_000}));
    assert_eq!(record.body["logs"].as_array().unwrap().len(), 2, "both components ran");

    // An action whose limit fits in the wait is never detached: it answers when it ends.
    let fits = json!({"exec": {"kind": "nodejs:20", "code": SLEEPY_JS}, "limits": {"timeout": 1_000}});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/short?overwrite=true", &fits).await.unwrap().status,
        200
    );
    let short = client.invoke("short", &json!({"ms": 10}), true).await.unwrap();
    assert_eq!((short.status, short.body), (200, json!({"slept": 10})));

    // Web actions, a sequence among them: the response within the wait, 202 with the id past it
    // (as OpenWhisk answers a web action that outlives the blocking wait), the record later.
    let exported = json!([{"key": "web-export", "value": true}]);
    let web_long = json!({"exec": {"kind": "nodejs:20", "code": SLEEPY_JS}, "limits": {"timeout": 10_000},
        "annotations": exported});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/webnap?overwrite=true", &web_long).await.unwrap().status,
        200
    );
    let web_naps = json!({"exec": {"kind": "sequence", "components": ["/guest/nap", "/guest/nap"]},
        "annotations": exported});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/webnaps?overwrite=true", &web_naps).await.unwrap().status,
        200
    );
    let web = |path: &str| format!("{}/api/v1/web/guest/default/{path}", platform.api_host());
    let anonymous = reqwest::Client::new();
    let quick = anonymous.get(web("webnap.json?ms=20")).send().await.unwrap();
    assert_eq!(quick.status(), 200);
    assert_eq!(
        quick.json::<serde_json::Value>().await.unwrap(),
        json!({"slept": "20"}),
        "query parameters are strings"
    );
    let quick = anonymous.get(web("webnaps.json?ms=20")).send().await.unwrap();
    assert_eq!(quick.status(), 200, "{:?}", quick.text().await);
    assert_eq!(quick.json::<serde_json::Value>().await.unwrap(), json!({"ms": "20"}));
    for (path, result) in
        [("webnap.json?ms=3000", json!({"slept": "3000"})), ("webnaps.json?ms=1000", json!({"ms": "1000"}))]
    {
        let started = Instant::now();
        let past = anonymous.get(web(path)).send().await.unwrap();
        let answered_after = started.elapsed();
        assert_eq!(past.status(), 202, "{path}");
        assert_eq!(past.headers()["access-control-allow-origin"], "*", "a web answer, with CORS");
        assert!(answered_after >= Duration::from_millis(1_400), "{path}: answered after {answered_after:?}");
        assert!(answered_after < Duration::from_millis(1_900), "{path}: answered after {answered_after:?}");
        let id = past.json::<serde_json::Value>().await.unwrap()["activationId"].as_str().unwrap().to_owned();
        let record = client.wait_for_activation(&id, Duration::from_secs(15)).await.unwrap();
        assert_eq!(record.status, 200, "{}", record.body);
        assert_eq!(record.body["response"]["result"], result, "{path}");
    }
}

/// A blocking invoke whose limit fits the wait, but that queued behind another run: once its time in
/// the queue plus its limit could overrun the client's wait (past the tolerance), it runs detached
/// with the container it claimed. Its client gets 202 when the wait ends and the record appears
/// later; it keeps its turn (a later invoke does not overtake it) and no container is started for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_invoke_that_queued_past_its_wait_turns_into_202_and_keeps_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-queued-wait").unwrap();
    // Turns are FIFO per worker (across workers, whoever looks first after a release wins): one
    // worker makes the order of the three invokes something to assert.
    options.envoy_concurrency = 1;
    options.xds_args =
        ["--blocking-wait-ms", "1500", "--max-containers-per-action", "1"].map(String::from).to_vec();
    let platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let fits = json!({"exec": {"kind": "nodejs:20", "code": SLEEPY_JS}, "limits": {"timeout": 1_500}});
    assert_eq!(
        client.put("/api/v1/namespaces/_/actions/queued?overwrite=true", &fits).await.unwrap().status,
        200
    );
    assert_eq!(client.invoke("queued", &json!({"ms": 1}), true).await.unwrap().status, 200);
    let starts = || async {
        metric(&control_metrics(&platform).await.unwrap(), "xds_whisk_cold_starts_total", "started")
    };
    let started_before = starts().await;

    // The one container runs `first`; `second` queues behind it, then `third` behind `second`.
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.invoke("queued", &json!({"ms": 1_300}), false).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second_sent = Instant::now();
    let second = tokio::spawn({
        let client = client.clone();
        async move {
            (client.invoke("queued", &json!({"ms": 1_300}), false).await.unwrap(), second_sent.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let third = client.invoke("queued", &json!({"ms": 10}), false).await.unwrap();

    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["response"]["result"], json!({"slept": 1_300}));
    let (second, answered_after) = second.await.unwrap();
    assert_eq!(second.status, 202, "{}", second.body);
    assert!(answered_after >= Duration::from_millis(1_400), "answered after {answered_after:?}");
    assert!(answered_after < Duration::from_millis(2_300), "answered after {answered_after:?}");
    let second_id = second.body["activationId"].as_str().unwrap().to_owned();
    assert_eq!(second.activation_id.as_deref(), Some(second_id.as_str()));
    // `third` waited for both runs: detached too, so 202 as well.
    assert_eq!(third.status, 202, "{}", third.body);
    let third_id = third.body["activationId"].as_str().unwrap().to_owned();

    let second = client.wait_for_activation(&second_id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body["response"]["result"], json!({"slept": 1_300}));
    let wait_time = annotation(&second.body, "waitTime").and_then(|wait| wait.as_u64()).unwrap();
    assert!(wait_time >= 1_000, "its time in the client's queue counts: {}", second.body);
    assert_eq!(annotation(&second.body, "initTime"), None, "the warm container, handed over");
    let third = client.wait_for_activation(&third_id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(third.status, 200, "{}", third.body);
    let end_of = |record: &serde_json::Value, field: &str| record[field].as_u64().unwrap();
    assert!(
        end_of(&third.body, "start") >= end_of(&second.body, "end"),
        "the queued invoke kept its turn: second {} third {}",
        second.body,
        third.body
    );
    assert_eq!(starts().await, started_before, "no container was started for the queued invokes");
}
