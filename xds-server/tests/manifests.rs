//! The Kubernetes manifests in `deploy/`, read the way the API server would: every document is a
//! known kind that deserialises into its k8s-openapi type with no field dropped, every file a
//! kustomization names exists, the control server's environment parses as its flags, and its RBAC
//! grants exactly what the Kubernetes cluster manager calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML file under `deploy/`, by path relative to it.
fn yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&deploy_dir(), &mut found);
    found.sort();
    found
}

/// The documents of one YAML file, as JSON values (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|document| !document.is_null())
        .collect()
}

fn is_kustomization(document: &Value) -> bool {
    document["apiVersion"].as_str().is_some_and(|version| version.starts_with("kustomize.config.k8s.io/"))
}

/// Every Kubernetes object in `deploy/` (kustomizations excluded), with the file it is in.
fn objects() -> Vec<(PathBuf, Value)> {
    yaml_files()
        .into_iter()
        .flat_map(|path| documents(&path).into_iter().map(move |document| (path.clone(), document)))
        .filter(|(_, document)| !is_kustomization(document))
        .collect()
}

/// Deserialises `document` as `T` and serialises it back: any field `T` does not know is dropped
/// on the way, so the round trip differs from the original exactly where a field is misspelt,
/// misplaced or of another API version.
fn round_trips<T: DeserializeOwned + serde::Serialize>(document: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(document.clone()).map_err(|error| error.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|error| error.to_string())?;
    let mut lost = Vec::new();
    missing_fields(document, &back, String::new(), &mut lost);
    if lost.is_empty() { Ok(()) } else { Err(format!("fields the type does not know: {lost:?}")) }
}

/// Paths present in `original` but not in `back`.
fn missing_fields(original: &Value, back: &Value, at: String, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(original), Value::Object(back)) => {
            for (key, value) in original {
                match back.get(key) {
                    Some(other) => missing_fields(value, other, format!("{at}.{key}"), lost),
                    None => lost.push(format!("{at}.{key}")),
                }
            }
        }
        (Value::Array(original), Value::Array(back)) => {
            for (index, (value, other)) in original.iter().zip(back).enumerate() {
                missing_fields(value, other, format!("{at}[{index}]"), lost);
            }
        }
        _ => {}
    }
}

fn check_object(document: &Value) -> Result<(), String> {
    let kind = (document["apiVersion"].as_str().unwrap_or(""), document["kind"].as_str().unwrap_or(""));
    match kind {
        ("v1", "Namespace") => round_trips::<Namespace>(document),
        ("v1", "ServiceAccount") => round_trips::<ServiceAccount>(document),
        ("v1", "Secret") => round_trips::<Secret>(document),
        ("v1", "ConfigMap") => round_trips::<ConfigMap>(document),
        ("v1", "Service") => round_trips::<Service>(document),
        ("v1", "PersistentVolumeClaim") => round_trips::<PersistentVolumeClaim>(document),
        ("apps/v1", "Deployment") => round_trips::<Deployment>(document),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trips::<NetworkPolicy>(document),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trips::<Role>(document),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trips::<RoleBinding>(document),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trips::<ClusterRole>(document),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => round_trips::<ClusterRoleBinding>(document),
        (version, kind) => {
            Err(format!("{version}/{kind} is not a kind these manifests are expected to hold"))
        }
    }
}

#[test]
fn every_document_is_a_known_kind_with_only_known_fields() {
    let objects = objects();
    assert!(objects.len() >= 20, "found only {} objects in deploy/", objects.len());
    let failures: Vec<String> = objects
        .iter()
        .filter_map(|(path, document)| {
            check_object(document).err().map(|why| {
                format!("{} {}: {why}", path.display(), document["metadata"]["name"].as_str().unwrap_or("?"))
            })
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_round_trip_catches_a_misplaced_field() {
    let mut deployment = objects()
        .into_iter()
        .map(|(_, document)| document)
        .find(|document| document["kind"] == "Deployment")
        .unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always".into();
    let error = round_trips::<Deployment>(&deployment).unwrap_err();
    assert!(error.contains("imagePullPolicyy"), "{error}");
}

/// Kustomize's fields this test follows.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
}

#[derive(Debug, Deserialize)]
struct KustomizePatch {
    target: PatchTarget,
    patch: String,
}

#[derive(Debug, Deserialize)]
struct PatchTarget {
    kind: String,
    name: String,
}

/// One operation of a JSON patch (RFC 6902), as kustomize applies it.
#[derive(Debug, Deserialize)]
struct PatchOperation {
    op: String,
    path: String,
}

/// The objects a kustomization directory builds from its own `resources` and `components`,
/// followed recursively (other kustomizations included).
fn built_objects(dir: &Path) -> Vec<Value> {
    let kustomization: Kustomization =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    let mut objects = Vec::new();
    for entry in kustomization.resources.iter().chain(&kustomization.components) {
        let path = dir.join(entry);
        assert!(path.exists(), "{} names {entry}, which does not exist", dir.display());
        if path.is_dir() {
            objects.extend(built_objects(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    objects
}

#[test]
fn every_kustomization_names_files_that_exist_and_patches_objects_that_exist() {
    let directories: Vec<PathBuf> = yaml_files()
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name == "kustomization.yaml"))
        .filter_map(|path| path.parent().map(Path::to_path_buf))
        .collect();
    assert!(directories.len() >= 3, "{directories:?}");
    let everything = built_objects(&deploy_dir().join("overlays/packing"));
    for dir in directories {
        let kustomization: Kustomization =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
                .unwrap();
        built_objects(&dir);
        for patch in &kustomization.patches {
            let target = everything
                .iter()
                .find(|object| {
                    object["kind"] == patch.target.kind && object["metadata"]["name"] == patch.target.name
                })
                .unwrap_or_else(|| {
                    panic!("{}: no {} {} to patch", dir.display(), patch.target.kind, patch.target.name)
                });
            let operations: Vec<PatchOperation> = serde_norway::from_str(&patch.patch).unwrap();
            for operation in operations {
                // `add` with a trailing `-` appends to an array that must exist; other paths must resolve.
                let pointer = operation.path.strip_suffix("/-").unwrap_or(&operation.path);
                let found = target.pointer(pointer);
                assert!(
                    found.is_some() || operation.op == "add",
                    "{}: {} {} has no {}",
                    dir.display(),
                    patch.target.kind,
                    patch.target.name,
                    operation.path
                );
                if operation.path.ends_with("/-") {
                    assert!(
                        found.is_some_and(Value::is_array),
                        "{}: {} is not an array",
                        dir.display(),
                        pointer
                    );
                }
            }
        }
    }
}

fn deployment(name: &str) -> Deployment {
    let document = objects()
        .into_iter()
        .map(|(_, document)| document)
        .find(|document| document["kind"] == "Deployment" && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"));
    serde_json::from_value(document).unwrap()
}

fn container<'d>(deployment: &'d Deployment, name: &str) -> &'d Container {
    let spec = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers.iter().find(|container| container.name == name).unwrap()
}

/// The flags `container`'s environment sets on `command` (variables in `not_flags` are read by a
/// start-up script or another program), with `$(POD_IP)` as Kubernetes would expand it and a stand-in
/// for values from secrets and fields.
fn flags_from_environment(container: &Container, command: &clap::Command, not_flags: &[&str]) -> Vec<String> {
    let by_env: BTreeMap<String, &clap::Arg> =
        command.get_arguments().filter_map(|arg| Some((arg.get_env()?.to_str()?.to_owned(), arg))).collect();
    let mut args = vec![command.get_name().to_owned()];
    for variable in container.env.iter().flatten() {
        if not_flags.contains(&variable.name.as_str()) {
            continue;
        }
        let arg = by_env
            .get(&variable.name)
            .unwrap_or_else(|| panic!("{} has no flag reading {}", command.get_name(), variable.name));
        let long = arg.get_long().unwrap();
        let value = match &variable.value {
            Some(value) => value.replace("$(POD_IP)", "10.0.0.7"),
            None => "from-a-secret".to_owned(),
        };
        if !arg.get_action().takes_values() {
            if value == "true" {
                args.push(format!("--{long}"));
            }
        } else {
            args.extend([format!("--{long}"), value]);
        }
    }
    args
}

#[test]
fn the_control_servers_environment_parses_as_its_flags() {
    let deployment = deployment("whisk-control");
    let server = container(&deployment, "xds-server");
    let mut args = flags_from_environment(
        server,
        &xds_server::Config::command(),
        &["POD_IP", "WHISK_MANAGEMENT_API_SERVICE", "RUST_LOG"],
    );
    // The script exports WHISK_MANAGEMENT_API before it starts the server.
    let script = server.args.as_ref().unwrap().join("\n");
    assert!(script.contains("export WHISK_MANAGEMENT_API="), "{script}");
    args.extend(["--management-api".to_owned(), "10.0.0.8:3234".to_owned()]);
    let config = xds_server::Config::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(config.cluster_manager, xds_server::cluster::ClusterManagerKind::Kubernetes);
    let owner = config.owner.as_deref().unwrap();
    assert_eq!(owner, "whisk-control");
    assert!(config.kube.pod_config(owner).is_ok(), "the runtime image table must not be empty");
}

#[test]
fn the_management_apis_environment_parses_as_its_flags() {
    let deployment = deployment("whisk-management-api");
    let server = container(&deployment, "management-api");
    assert_eq!(server.args.as_deref(), Some(&["serve".to_owned()][..]));
    let command = management_api::Config::augment_args(clap::Command::new("management-api"));
    let args = flags_from_environment(server, &command, &["RUST_LOG"]);
    let matches = command.try_get_matches_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let config = management_api::Config::from_arg_matches(&matches).unwrap();
    assert_eq!(config.listen.port(), 3234);
}

#[test]
fn the_packing_scheduler_profile_is_the_one_the_control_server_is_told_to_use() {
    let objects = built_objects(&deploy_dir().join("components/packing-scheduler"));
    let config_map: ConfigMap =
        serde_json::from_value(objects.iter().find(|object| object["kind"] == "ConfigMap").unwrap().clone())
            .unwrap();
    let text = config_map.data.as_ref().unwrap().values().next().unwrap();
    let scheduler: Value = serde_norway::from_str(text).unwrap();
    assert_eq!(scheduler["kind"], "KubeSchedulerConfiguration");
    let profile = &scheduler["profiles"][0];
    let fit = profile["pluginConfig"]
        .as_array()
        .unwrap()
        .iter()
        .find(|plugin| plugin["name"] == "NodeResourcesFit")
        .unwrap();
    assert_eq!(fit["args"]["scoringStrategy"]["type"], "MostAllocated");
    let kustomization =
        std::fs::read_to_string(deploy_dir().join("components/packing-scheduler/kustomization.yaml"))
            .unwrap();
    let name = profile["schedulerName"].as_str().unwrap();
    assert!(kustomization.contains(&format!("value: {name}")), "the patch must name profile {name}");
}

/// `(apiGroup, resource, namespace or "" for cluster scope) -> verbs` a subject is granted.
type Grants = BTreeMap<(String, String, String), BTreeSet<String>>;

fn grants_of(service_account: &str) -> Grants {
    let objects = objects();
    let bound = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|subject| subject["kind"] == "ServiceAccount" && subject["name"] == service_account)
    };
    let mut grants = Grants::new();
    for (_, binding) in objects.iter().filter(|(_, object)| {
        matches!(object["kind"].as_str(), Some("RoleBinding" | "ClusterRoleBinding")) && bound(object)
    }) {
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role_name = &binding["roleRef"]["name"];
        let namespace = if binding["kind"] == "RoleBinding" {
            binding["metadata"]["namespace"].as_str().unwrap().to_owned()
        } else {
            String::new()
        };
        let (_, role) = objects
            .iter()
            .find(|(_, object)| object["kind"] == role_kind && &object["metadata"]["name"] == role_name)
            .unwrap_or_else(|| panic!("binding to a missing {role_kind} {role_name}"));
        if role_kind == "Role" {
            assert_eq!(role["metadata"]["namespace"], binding["metadata"]["namespace"]);
        }
        let rules: Vec<PolicyRule> = serde_json::from_value(role["rules"].clone()).unwrap();
        for rule in rules {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    grants
                        .entry((group.clone(), resource.clone(), namespace.clone()))
                        .or_default()
                        .extend(rule.verbs.iter().cloned());
                }
            }
        }
    }
    grants
}

#[test]
fn the_control_server_is_granted_exactly_what_the_kubernetes_cluster_manager_calls() {
    let deployment = deployment("whisk-control");
    let pod_spec = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let account = pod_spec.service_account_name.as_deref().unwrap();
    let actions_namespace = container(&deployment, "xds-server")
        .env
        .iter()
        .flatten()
        .find(|variable| variable.name == "WHISK_ACTIONS_NAMESPACE")
        .and_then(|variable| variable.value.clone())
        .unwrap();
    let expected: Grants = xds_server::cluster::kube::API_CALLS
        .iter()
        .map(|call| {
            let namespace = if call.namespaced { actions_namespace.clone() } else { String::new() };
            (
                (String::new(), call.resource.to_owned(), namespace),
                call.verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(grants_of(account), expected);
}

/// `kubectl kustomize` (kustomize itself) builds each entry point, with the objects this file's own
/// walk finds; where kubectl is not installed it says so and checks nothing more.
#[test]
fn kustomize_builds_every_entry_point() {
    for entry in ["", "overlays/packing"] {
        let dir = deploy_dir().join(entry);
        let output = match std::process::Command::new("kubectl").arg("kustomize").arg(&dir).output() {
            Ok(output) => output,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("kubectl is not installed: kustomize builds not checked");
                return;
            }
            Err(error) => panic!("kubectl: {error}"),
        };
        assert!(output.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
        let built: Vec<Value> = serde_norway::Deserializer::from_slice(&output.stdout)
            .map(|document| Value::deserialize(document).unwrap())
            .filter(|document| !document.is_null())
            .collect();
        assert_eq!(built.len(), built_objects(&dir).len(), "{}", dir.display());
        assert!(built.iter().all(|object| check_object(object).is_ok()));
    }
}

/// Envoy itself (`--mode validate`) accepts the bootstrap of `deploy/` with the command line the
/// Deployment gives it; where Envoy is not installed it says so and checks nothing more.
#[test]
fn envoy_accepts_its_bootstrap_with_the_deployments_command_line() {
    let config_map: ConfigMap = serde_json::from_value(
        objects()
            .into_iter()
            .map(|(_, document)| document)
            .find(|document| {
                document["kind"] == "ConfigMap" && document["metadata"]["name"] == "whisk-envoy-bootstrap"
            })
            .unwrap(),
    )
    .unwrap();
    let bootstrap = &config_map.data.as_ref().unwrap()["bootstrap.yaml"];
    let deployment = deployment("whisk-envoy");
    let envoy = container(&deployment, "envoy");
    let path = std::env::temp_dir().join(format!("whisk-bootstrap-{}.yaml", std::process::id()));
    std::fs::write(&path, bootstrap).unwrap();
    // The Deployment reads the bootstrap from the ConfigMap's mount; here from the file above.
    let args: Vec<String> = envoy
        .args
        .iter()
        .flatten()
        .map(|arg| arg.replace("$(POD_NAME)", "whisk-envoy-7d9f").replace("$(POD_IP)", "10.0.0.9"))
        .map(|arg| if arg == "/etc/envoy/bootstrap.yaml" { path.display().to_string() } else { arg })
        .collect();
    assert!(args.iter().any(|arg| *arg == path.display().to_string()), "{args:?}");
    let output = std::process::Command::new("envoy").arg("--mode").arg("validate").args(&args).output();
    let _ = std::fs::remove_file(&path);
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("envoy is not installed: the bootstrap was not validated");
            return;
        }
        Err(error) => panic!("envoy: {error}"),
    };
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("OK"), "{args:?}: {text}");
}
