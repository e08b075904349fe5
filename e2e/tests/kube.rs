//! `make test-kube`: the platform against the real Kubernetes cluster `KUBECONFIG` names. The
//! control server and the management API run here, with Envoy, as in every other e2e test; only the
//! action containers are pods, started through the cluster's API. Nothing is deployed: the pods'
//! IPs must be reachable from this machine (true on kind or k3d with host networking, and on any
//! node of the cluster).
//!
//! Without `KUBECONFIG` it prints that it was skipped and passes, so `make test` stays runnable
//! anywhere. Settings: `WHISK_TEST_ACTIONS_NAMESPACE` (default `whisk-e2e-actions`, created when
//! missing and deleted again), `WHISK_TEST_NODEJS_IMAGE` (default `openwhisk/action-nodejs-v20`).
//!
//! What it checks, in order: a cold invoke creates one pod of ours, which the control plane
//! records on the node the scheduler chose; warm invokes reuse it; a control-server restart adopts
//! it without a new pod; the collector sweeps it once idle (the pod is deleted); the next invoke
//! cold-starts a new pod. Every pod it leaves is deleted at the end, on failure too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::client::{Client, annotation, control_containers};
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const ECHO_JS: &str = "function main(p) { return p; }";
/// Pulling a runtime image on a fresh node can take minutes.
const POD_START_TIMEOUT: Duration = Duration::from_secs(300);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|value| !value.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// Names of the running pods matching `selector`, sorted with their uid and node.
async fn pods(api: &Api<Pod>, selector: &str) -> Vec<(String, String, String)> {
    let mut found: Vec<(String, String, String)> = api
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let node = pod.spec.and_then(|spec| spec.node_name).unwrap_or_default();
            (pod.metadata.name.unwrap_or_default(), pod.metadata.uid.unwrap_or_default(), node)
        })
        .collect();
    found.sort();
    found
}

async fn containers(platform: &Platform) -> Vec<Value> {
    control_containers(platform).await.unwrap()
}

async fn invoke(client: &Client, n: u64) -> Value {
    let reply = client.invoke("echo", &json!({"n": n}), false).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["response"]["result"], json!({"n": n}), "{}", reply.body);
    reply.body
}

fn was_cold(record: &Value) -> bool {
    annotation(record, "initTime").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_pods_start_serve_survive_a_restart_and_are_swept_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!(
            "test-kube: SKIPPED: KUBECONFIG is not set. Point it at a cluster (kind, k3d, any) whose \
             pod IPs this machine can reach, then run `make test-kube`."
        );
        return;
    }
    let client = kube::Client::try_default().await.expect("a client for the cluster KUBECONFIG names");
    let namespace = setting("WHISK_TEST_ACTIONS_NAMESPACE", "whisk-e2e-actions");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let created_namespace = namespaces.get_opt(&namespace).await.unwrap().is_none();
    if created_namespace {
        let object: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces.create(&PostParams::default(), &object).await.unwrap();
    }
    let pods_api: Api<Pod> = Api::namespaced(client, &namespace);

    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_test(dir.path(), "envoy-kube").unwrap();
    let image = setting("WHISK_TEST_NODEJS_IMAGE", "openwhisk/action-nodejs-v20");
    options.xds_args = [
        "--cluster-manager",
        "kubernetes",
        "--actions-namespace",
        &namespace,
        "--runtime-image",
        &format!("nodejs={image}"),
        "--pod-start-timeout-ms",
        &POD_START_TIMEOUT.as_millis().to_string(),
        "--idle-timeout-ms",
        "8000",
        "--gc-grace-ms",
        "2000",
        "--gc-interval-ms",
        "500",
        // The restart below must find the pod still there.
        "--keep-containers-on-exit",
    ]
    .map(String::from)
    .to_vec();
    let owner_selector = format!("whisk/owner=whisk-e2e-{}", options.ports.control);

    let scenario = tokio::spawn({
        let (pods_api, owner_selector) = (pods_api.clone(), owner_selector.clone());
        async move { scenario(options, &pods_api, &owner_selector).await }
    });
    let outcome = scenario.await;

    // Whatever happened, leave no pod of ours behind (the server keeps them on exit).
    for (name, _, _) in pods(&pods_api, &owner_selector).await {
        let _ = pods_api.delete(&name, &DeleteParams::default()).await;
    }
    if created_namespace {
        let _ = namespaces.delete(&namespace, &DeleteParams::default()).await;
    }
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn scenario(options: Options, pods_api: &Api<Pod>, owner_selector: &str) {
    let mut platform = Platform::start(options, Artifacts::from_workspace().unwrap()).unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    assert_eq!(client.create_action("echo", "nodejs:20", ECHO_JS).await.unwrap().status, 200);

    // Cold: one pod of ours, recorded on the node the scheduler chose.
    let first = invoke(&client, 1).await;
    assert!(was_cold(&first), "the first invoke starts a pod: {first}");
    let started = pods(pods_api, owner_selector).await;
    assert_eq!(started.len(), 1, "{started:?}");
    let table = containers(&platform).await;
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0]["host"], started[0].2, "the table holds the pod's node: {table:?}");

    // Warm: the same pod serves.
    for n in 2..7 {
        assert!(!was_cold(&invoke(&client, n).await), "invoke {n} found the warm pod");
    }
    assert_eq!(pods(pods_api, owner_selector).await, started);

    // Restart recovery: the new server adopts the pod; nothing is started again.
    platform.restart_xds().unwrap();
    let after = invoke(&client, 7).await;
    assert!(!was_cold(&after), "the adopted pod serves warm: {after}");
    assert_eq!(pods(pods_api, owner_selector).await, started, "same pod, same uid");

    // Sweep: idle past the timeout and the grace, the pod is deleted.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pods(pods_api, owner_selector).await.is_empty() {
        assert!(Instant::now() < deadline, "the idle pod was not swept: {:?}", containers(&platform).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(containers(&platform).await.is_empty());

    // And the next invoke cold-starts a new pod.
    let again = invoke(&client, 8).await;
    assert!(was_cold(&again), "{again}");
    let restarted = pods(pods_api, owner_selector).await;
    assert_eq!(restarted.len(), 1);
    assert_ne!(restarted[0].1, started[0].1, "a new pod");
    platform.stop();
}
