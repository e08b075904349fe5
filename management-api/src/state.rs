//! The state every handler shares, and the [`Subject`] extractor that authenticates a request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::{AuthCache, Key};
use crate::error::ApiError;
use crate::generation::Generation;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use whisk_contract::NamespaceLimits;

/// How long a verified key is trusted without looking at the store again. Short, because a key
/// deleted by another process keeps working this long.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Cheap to clone: one `Arc`.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<Store>,
    auth: AuthCache,
    internal_token: String,
    ingress: Ingress,
    metrics: Metrics,
    generation: Generation,
    namespace_limits: NamespaceLimits,
}

impl AppState {
    /// `ingress` is where trigger fires send their rules' invokes.
    pub fn new(store: Store, internal_token: String, ingress: Ingress) -> Self {
        Self::with_limits(store, internal_token, ingress, NamespaceLimits::default())
    }

    /// As [`AppState::new`], with the invocation limits every namespace gets.
    pub fn with_limits(
        store: Store,
        internal_token: String,
        ingress: Ingress,
        namespace_limits: NamespaceLimits,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                store: Arc::new(store),
                auth: AuthCache::new(AUTH_CACHE_TTL),
                internal_token,
                ingress,
                metrics: Metrics::new(),
                generation: Generation::default(),
                namespace_limits,
            }),
        }
    }

    /// The invocation limits of every namespace (passed to the filter, which enforces them).
    pub fn namespace_limits(&self) -> NamespaceLimits {
        self.inner.namespace_limits
    }

    /// The store, for work that is no request's (activation retention).
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.inner.store)
    }

    /// The entity generation (changes on every write; the data plane's resolve caches follow it).
    pub fn generation(&self) -> &Generation {
        &self.inner.generation
    }

    /// Runs `work` against the store on a blocking thread: store calls block (on SQLite's file, or
    /// waiting for PostgreSQL's answers), and must not stall the async workers that serve other
    /// requests.
    pub async fn db<R, E>(
        &self,
        work: impl FnOnce(&Store) -> Result<R, E> + Send + 'static,
    ) -> Result<R, ApiError>
    where
        R: Send + 'static,
        E: Send + 'static,
        ApiError: From<E>,
    {
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| <ApiError as From<StoreError>>::from(StoreError::Task(error.to_string())))?
            .map_err(ApiError::from)
    }

    /// The namespace of the key in an `authorization` value, or 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<String, ApiError> {
        let authorization = authorization.ok_or(ApiError::Unauthenticated)?;
        let now = Instant::now();
        if let Some(namespace) = self.inner.auth.get(authorization, now) {
            return Ok(namespace);
        }
        let key = Key::from_basic_authorization(authorization).ok_or(ApiError::Unauthenticated)?;
        let namespace =
            self.db(move |store| store.authenticate(&key)).await?.ok_or(ApiError::Unauthenticated)?;
        self.inner.auth.insert(authorization, &namespace, now);
        Ok(namespace)
    }

    /// Deletes a namespace's keys and forgets them at once (rather than after the cache's TTL).
    pub async fn delete_namespace(&self, namespace: String) -> Result<bool, ApiError> {
        let forget = namespace.clone();
        let deleted = self.db(move |store| store.delete_namespace(&namespace)).await?;
        self.inner.auth.forget_namespace(&forget);
        Ok(deleted)
    }

    /// Whether `token` is the internal endpoints' shared secret.
    pub fn is_internal_token(&self, token: &[u8]) -> bool {
        crate::auth::constant_time_eq(token, self.inner.internal_token.as_bytes())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn ingress(&self) -> &Ingress {
        &self.inner.ingress
    }
}

/// The namespace of the request's key: extracting it authenticates the request (401 otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
}

impl FromRequestParts<AppState> for Subject {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let authorization = parts.headers.get(AUTHORIZATION).and_then(|value| value.to_str().ok());
        let namespace = state.authenticate(authorization).await?;
        Ok(Self { namespace })
    }
}

/// Now, in epoch milliseconds (0 if the clock is before 1970).
pub fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
