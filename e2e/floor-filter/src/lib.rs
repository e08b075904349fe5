//! The floor of the warm-latency bench: the least any proxy-wasm filter must do to serve a warm
//! blocking invoke the way this design does, and nothing more. It holds the request until its body
//! is in, performs the invariants' shared-data operations (the resolve cache's generation read; the
//! namespace's admission and, at the end, its leave; the container's claim and release: each a read
//! and a compare-and-swap), turns the request into the runtime's `/run` (headers and envelope)
//! stamped for one container, which Envoy routes as it routes the platform's (header route,
//! override_host), and turns the answer back into the client's reply.
//!
//! What it leaves out is what the platform's filter adds on top: authentication, resolution,
//! limits arithmetic, classification of the answer, records, waiting and cold starts. The bench
//! runs it in an Envoy configured like the platform's data plane, against the platform's own
//! container, in the same run as the platform and plain Envoy: the gap between it and plain Envoy
//! is what proxy-wasm costs for this work on the machine; the gap between the platform and it is
//! what our filter's own logic costs.

/// What the bench tells the floor: the one container it stamps every `/run` for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FloorConfig {
    pub container_id: String,
    /// `ip:port`, as override_host reads it.
    pub address: String,
    /// The `api_host` of the envelope, as the platform sends it.
    pub api_host: String,
    /// The action's time limit, for the envelope's deadline, in milliseconds.
    pub timeout_ms: u64,
}

/// The `/run` envelope of one activation (the fields and order the platform's filter sends).
pub fn run_envelope(
    value: serde_json::Value,
    activation_id: &str,
    config: &FloorConfig,
    now_ms: u64,
) -> String {
    serde_json::json!({
        "action_name": "/guest/bench",
        "action_version": "0.0.1",
        "activation_id": activation_id,
        "api_host": config.api_host,
        "deadline": (now_ms + config.timeout_ms).to_string(),
        "namespace": "guest",
        "transaction_id": activation_id,
        "value": value,
    })
    .to_string()
}

/// A slot or counter value flipped from `from` to `to` in its first byte; anything else is left
/// as it is (the bench runs one client, so a floor never meets contention it must resolve).
pub fn flipped(value: &[u8], from: u8, to: u8) -> Option<Vec<u8>> {
    (value.first() == Some(&from)).then(|| {
        let mut next = value.to_vec();
        next[0] = to;
        next
    })
}

#[cfg(target_arch = "wasm32")]
mod shell;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_carries_the_value_and_a_real_deadline() {
        let config =
            FloorConfig { timeout_ms: 60_000, api_host: "http://x".into(), ..FloorConfig::default() };
        let run = run_envelope(serde_json::json!({"n": 1}), "abc", &config, 1_000);
        let parsed: serde_json::Value = serde_json::from_str(&run).unwrap_or_default();
        assert_eq!(parsed["value"]["n"], 1);
        assert_eq!(parsed["deadline"], "61000");
        assert_eq!(parsed["activation_id"], "abc");
        assert_eq!(parsed["api_host"], "http://x");
    }

    #[test]
    fn only_the_expected_state_flips() {
        assert_eq!(flipped(b"F c1", b'F', b'B'), Some(b"B c1".to_vec()));
        assert_eq!(flipped(b"B c1", b'F', b'B'), None);
        assert_eq!(flipped(b"", b'F', b'B'), None);
    }
}
