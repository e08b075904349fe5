//! A thin HTTP client speaking the OpenWhisk REST API the way `wsk` does (Basic auth with the
//! namespace key, JSON bodies), for the tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::Platform;

/// The answer to one call.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub activation_id: Option<String>,
}

/// A client for one API host and key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api_host: String,
    user: String,
    password: String,
}

impl Client {
    pub fn new(api_host: &str, key: &str) -> Self {
        let (user, password) = key.split_once(':').unwrap_or((key, ""));
        Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap_or_default(),
            api_host: api_host.trim_end_matches('/').to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// Any call; `path` starts with `/api/v1/...`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api_host))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("calling {path}"))?;
        let status = response.status().as_u16();
        let activation_id = response
            .headers()
            .get("x-openwhisk-activation-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply { status, body, activation_id })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Creates or replaces an action from its kind and code.
    pub async fn create_action(&self, name: &str, kind: &str, code: &str) -> anyhow::Result<Reply> {
        let body = serde_json::json!({"exec": {"kind": kind, "code": code}});
        self.put(&format!("/api/v1/namespaces/_/actions/{name}?overwrite=true"), &body).await
    }

    /// A blocking invoke returning the record (or the result with `result_only`).
    pub async fn invoke(&self, name: &str, params: &Value, result_only: bool) -> anyhow::Result<Reply> {
        let query = if result_only { "blocking=true&result=true" } else { "blocking=true" };
        self.post(&format!("/api/v1/namespaces/_/actions/{name}?{query}"), params).await
    }

    /// Polls an activation until it is stored (records are written off the reply path).
    pub async fn wait_for_activation(&self, id: &str, timeout: Duration) -> anyhow::Result<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            let reply = self.get(&format!("/api/v1/namespaces/_/activations/{id}")).await?;
            if reply.status == 200 || Instant::now() > deadline {
                return Ok(reply);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads one counter's value from a Prometheus text page (sum over label sets matching `filter`).
pub fn metric(page: &str, name: &str, filter: &str) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(name) && line.contains(filter))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An annotation of an activation record.
pub fn annotation(record: &Value, key: &str) -> Option<Value> {
    record["annotations"].as_array()?.iter().find(|kv| kv["key"] == key).map(|kv| kv["value"].clone())
}

/// The control server's Prometheus page.
pub async fn control_metrics(platform: &Platform) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{}/metrics", platform.control_url())).await?.text().await?)
}

/// The control plane's container table (`GET /v1/containers`).
pub async fn control_containers(platform: &Platform) -> anyhow::Result<Vec<Value>> {
    Ok(reqwest::get(format!("{}/v1/containers", platform.control_url())).await?.json().await?)
}

/// An operator's removal of container `id` (`DELETE /v1/containers/{id}`); its status.
pub async fn remove_container(platform: &Platform, id: &str) -> anyhow::Result<u16> {
    let response = reqwest::Client::new()
        .delete(format!("{}/v1/containers/{id}", platform.control_url()))
        .header(whisk_contract::headers::INTERNAL_TOKEN, &platform.internal_token)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// The hosts Envoy routes to in cluster `name`, as sorted `ip:port`s.
pub async fn envoy_cluster_hosts(platform: &Platform, name: &str) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/clusters?format=json", platform.admin_url());
    let clusters: Value = reqwest::get(url).await?.json().await?;
    let mut hosts: Vec<String> = clusters["cluster_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|cluster| cluster["name"] == name)
        .flat_map(|cluster| cluster["host_statuses"].as_array().cloned().unwrap_or_default())
        .map(|host| {
            let socket = &host["address"]["socket_address"];
            format!("{}:{}", socket["address"].as_str().unwrap_or_default(), socket["port_value"])
        })
        .collect();
    hosts.sort();
    Ok(hosts)
}

/// The sum of Envoy's stats whose names match `filter` (a regular expression, as the admin's
/// `/stats?filter=` takes it): counters and gauges, the filter's own included.
pub async fn envoy_stat(platform: &Platform, filter: &str) -> anyhow::Result<f64> {
    Ok(envoy_stats(platform, filter).await?.values().sum())
}

/// Every Envoy stat whose name matches the regular expression `filter`, by name.
pub async fn envoy_stats(platform: &Platform, filter: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let page = reqwest::get(format!("{}/stats?filter={filter}", platform.admin_url())).await?.text().await?;
    Ok(page
        .lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.to_owned(), value.trim().parse::<f64>().ok()?))
        })
        .collect())
}

/// What one load client saw.
#[derive(Debug, Default)]
pub struct Echoes {
    pub served: usize,
    pub failures: Vec<String>,
    /// The time each invoke took, answered or not.
    pub latencies: Vec<Duration>,
}

/// The `q`-quantile (0 to 1) of `latencies`, sorted in place; zero when there are none.
pub fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort_unstable();
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((latencies.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    latencies[rank]
}

/// One load client: takes numbers from `next` until `total` and invokes `action` blocking with
/// `{"n": k}`, expecting exactly `{"n": k}` back, the answer of that very activation.
pub async fn echo_until(client: Client, action: &str, next: Arc<AtomicUsize>, total: usize) -> Echoes {
    let mut echoes = Echoes::default();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            return echoes;
        }
        let sent = std::time::Instant::now();
        let reply = client.invoke(action, &json!({"n": n}), true).await;
        echoes.latencies.push(sent.elapsed());
        match reply {
            Ok(reply) if reply.status == 200 && reply.body == json!({"n": n}) => echoes.served += 1,
            Ok(reply) => echoes.failures.push(format!("#{n}: {} {}", reply.status, reply.body)),
            Err(error) => echoes.failures.push(format!("#{n}: {error}")),
        }
    }
}
