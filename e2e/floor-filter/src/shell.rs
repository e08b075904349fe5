//! The proxy-wasm side of the floor: Envoy's callbacks around the pure helpers in the crate root.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use whisk_contract::headers;

use crate::{FloorConfig, flipped, run_envelope};

const GENERATION_KEY: &str = "floor/generation";
const NAMESPACE_KEY: &str = "floor/namespace/guest";
const SLOT_KEY: &str = "floor/pool/guest/bench/0";
/// Bound on compare-and-swap attempts of one transition.
const CAS_ATTEMPTS: usize = 8;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    config: FloorConfig,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let Ok(config) = serde_json::from_slice::<FloorConfig>(&bytes) else { return false };
        self.config = config;
        // Free slot, idle namespace, a generation: what a warm platform holds.
        let slot = format!("F {} {} 0", self.config.container_id, self.config.address);
        let _ = self.set_shared_data(SLOT_KEY, Some(slot.as_bytes()), None);
        let _ = self.set_shared_data(NAMESPACE_KEY, Some(b"0 0"), None);
        let _ = self.set_shared_data(GENERATION_KEY, Some(b"1"), None);
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { config: self.config.clone(), context_id, headers: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: FloorConfig,
    context_id: u32,
    headers: Vec<(String, String)>,
}

impl Stream {
    /// A read and a compare-and-swap of `key`'s first byte from `from` to `to`.
    fn transition(&self, key: &str, from: u8, to: u8) {
        for _ in 0..CAS_ATTEMPTS {
            let (Some(value), cas) = self.get_shared_data(key) else { return };
            let Some(next) = flipped(&value, from, to) else { return };
            if self.set_shared_data(key, Some(&next), cas).is_ok() {
                return;
            }
        }
    }

    fn activation_id(&self) -> String {
        format!("{:032x}", self.context_id)
    }

    fn now_ms(&self) -> u64 {
        let since_epoch = self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _count: usize, end_of_stream: bool) -> Action {
        self.headers = self.get_http_request_headers();
        if end_of_stream { Action::Continue } else { Action::Pause }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let _ = self.get_shared_data(GENERATION_KEY);
        self.transition(NAMESPACE_KEY, b'0', b'1');
        self.transition(SLOT_KEY, b'F', b'B');
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let run = run_envelope(value, &self.activation_id(), &self.config, self.now_ms());
        let length = run.len().to_string();
        let mut rewritten: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), ":path" | "content-length" | "authorization"))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        rewritten.extend([
            (headers::ROUTE, headers::ROUTE_CONTAINER),
            (headers::CONTAINER_ADDRESS, self.config.address.as_str()),
            (headers::CONTAINER_ID, self.config.container_id.as_str()),
            (":path", "/run"),
            ("content-length", length.as_str()),
        ]);
        self.set_http_request_headers(rewritten);
        self.set_http_request_body(0, usize::MAX / 2, run.as_bytes());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _count: usize, end_of_stream: bool) -> Action {
        self.headers = self.get_http_response_headers();
        if end_of_stream { Action::Continue } else { Action::Pause }
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        self.transition(SLOT_KEY, b'B', b'F');
        self.transition(NAMESPACE_KEY, b'1', b'0');
        let status =
            self.headers.iter().find(|(name, _)| name == ":status").map_or("502", |(_, value)| value);
        let result: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let reply = result.to_string();
        let length = reply.len().to_string();
        let activation_id = self.activation_id();
        let status = status.to_owned();
        self.set_http_response_headers(vec![
            (":status", status.as_str()),
            ("content-type", "application/json"),
            ("content-length", length.as_str()),
            (headers::ACTIVATION_ID, activation_id.as_str()),
        ]);
        self.set_http_response_body(0, usize::MAX / 2, reply.as_bytes());
        Action::Continue
    }
}
