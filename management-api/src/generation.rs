//! The entity generation: a value that changes on every successful write through the API, so that
//! the data plane's resolve caches drop what they hold as soon as anything in it may have changed.
//! Each Envoy worker long-polls it (`GET /internal/v1/generation?after=`); resolve answers carry the
//! generation they were read at.
//!
//! The value is `<start ms>-<writes>`: a restarted API never repeats an earlier value, so a cache
//! filled before the restart is dropped too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::watch;

use crate::state::AppState;

/// Longest a poll is held open when nothing changes.
pub const POLL_HOLD: Duration = Duration::from_secs(30);

/// The generation of this process.
#[derive(Debug)]
pub struct Generation {
    epoch: u128,
    writes: watch::Sender<u64>,
}

impl Default for Generation {
    fn default() -> Self {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Self { epoch, writes: watch::channel(0).0 }
    }
}

impl Generation {
    pub fn current(&self) -> String {
        format!("{}-{}", self.epoch, *self.writes.borrow())
    }

    pub fn bump(&self) {
        self.writes.send_modify(|writes| *writes += 1);
    }

    /// The generation once it differs from `after`, or the same one after `hold`.
    pub async fn changed_from(&self, after: &str, hold: Duration) -> String {
        let mut writes = self.writes.subscribe();
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let current = self.current();
            if current != after {
                return current;
            }
            match tokio::time::timeout_at(deadline, writes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return current,
            }
        }
    }
}

/// Bumps the generation after every successful write through the public API. Firing a trigger
/// writes no entity, and the internal routes (activation records) touch no entity a resolve reads,
/// so neither disturbs the caches.
pub async fn bump_on_write(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path();
    let fires_trigger = method == Method::POST && path.contains("/triggers/");
    let writes = path.starts_with("/api/v1/")
        && !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !fires_trigger;
    let response = next.run(request).await;
    if writes && response.status().is_success() {
        state.generation().bump();
    }
    response
}

/// Query of a poll.
#[derive(Debug, Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    after: String,
}

/// `GET /internal/v1/generation?after=`: answers as soon as the generation differs from `after`.
pub async fn poll(State(state): State<AppState>, Query(query): Query<PollQuery>) -> Json<serde_json::Value> {
    let generation = state.generation().changed_from(&query.after, POLL_HOLD).await;
    Json(serde_json::json!({ "generation": generation }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polls_answer_at_once_on_a_difference_and_wake_on_a_write() {
        let generation = std::sync::Arc::new(Generation::default());
        let first = generation.current();
        assert_eq!(generation.changed_from("something else", POLL_HOLD).await, first);
        assert_eq!(
            generation.changed_from(&first, Duration::from_millis(10)).await,
            first,
            "held, then same"
        );
        let waiter = {
            let (generation, first) = (generation.clone(), first.clone());
            tokio::spawn(async move { generation.changed_from(&first, POLL_HOLD).await })
        };
        tokio::task::yield_now().await;
        generation.bump();
        let second = waiter.await.unwrap();
        assert_ne!(second, first);
        assert_eq!(second, generation.current());
    }
}
