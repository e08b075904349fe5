//! The data plane's ingress, as a client: firing a trigger invokes each active rule's action through
//! it, non-blocking and with the firing request's own key, exactly as `wsk action invoke` would, so
//! the data plane applies the same resolve, namespace and payload rules.
//!
//! ```text
//!  POST /api/v1/namespaces/{ns}/triggers/{t} ─► management API ─► POST {ingress}/api/v1/namespaces/
//!                                                                  {ns}/actions/[{pkg}/]{name}?blocking=false
//! ```

use std::time::Duration;

use reqwest::Url;

/// A non-blocking invoke is answered once the data plane resolved the action; this only bounds a
/// stuck ingress, so that a fire is answered even then (the rule's log records the failure).
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the ingress listens unless told otherwise (OpenWhisk standalone's port).
pub const DEFAULT_INGRESS_URL: &str = "http://127.0.0.1:3233";

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("invalid ingress URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot build the ingress HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The ingress base URL and a pooled HTTP client; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingress {
    base: Url,
    client: reqwest::Client,
}

/// What the ingress answered: its status and body, or why it could not be reached.
pub type InvokeReply = Result<(u16, Vec<u8>), String>;

/// Parses an `http(s)://host[:port][/prefix]` base URL (the `--ingress-url` value parser).
pub fn parse_url(url: &str) -> Result<Url, IngressError> {
    let invalid = |reason: String| IngressError::InvalidUrl { url: url.to_owned(), reason };
    let parsed = Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(invalid("expected http://host[:port]".into()));
    }
    Ok(parsed)
}

impl Ingress {
    pub fn new(url: &str) -> Result<Self, IngressError> {
        let base = parse_url(url)?;
        // The ingress is this platform's own front door: never reach it through an HTTP proxy taken
        // from the environment.
        let client = reqwest::Client::builder().no_proxy().timeout(INVOKE_TIMEOUT).build()?;
        Ok(Self { base, client })
    }

    /// The URL of a non-blocking invoke of `namespace`'s action at `path` (`name` or `pkg/name`),
    /// each segment percent-encoded.
    pub fn invoke_url(&self, namespace: &str, path: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["api", "v1", "namespaces", namespace, "actions"]).extend(path);
        }
        url.set_query(Some("blocking=false"));
        url
    }

    /// Posts `arguments` as a non-blocking invoke with the caller's `authorization`.
    pub async fn invoke(
        &self,
        namespace: &str,
        path: &[&str],
        authorization: &str,
        arguments: &serde_json::Value,
    ) -> InvokeReply {
        let url = self.invoke_url(namespace, path);
        let response = self
            .client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .json(arguments)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        Ok((status, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_urls_encode_each_segment() {
        let ingress = Ingress::new("http://127.0.0.1:3233").unwrap();
        assert_eq!(
            ingress.invoke_url("guest", &["utils", "my action"]).as_str(),
            "http://127.0.0.1:3233/api/v1/namespaces/guest/actions/utils/my%20action?blocking=false"
        );
        let prefixed = Ingress::new("http://gateway:8080/whisk/").unwrap();
        assert_eq!(
            prefixed.invoke_url("guest", &["hello"]).as_str(),
            "http://gateway:8080/whisk/api/v1/namespaces/guest/actions/hello?blocking=false"
        );
    }

    #[test]
    fn only_http_base_urls_are_accepted() {
        assert!(parse_url("https://whisk.example").is_ok());
        for bad in ["", "127.0.0.1:3233", "ftp://host", "mailto:a@b"] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }
}
