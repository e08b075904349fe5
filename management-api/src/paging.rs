//! The listing parameters shared by actions and activations (`limit`, `skip`, `count`), parsed with
//! OpenWhisk's rules and messages.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Store, StoreError};

/// OpenWhisk's default page.
pub const DEFAULT_LIMIT: u64 = 30;
/// OpenWhisk's largest page.
pub const MAX_LIMIT: u64 = 200;

/// The raw query; values are parsed by hand so that errors carry OpenWhisk's messages.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    skip: Option<String>,
    count: Option<String>,
}

/// A parsed page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub skip: u64,
    pub limit: u64,
    /// Answer only the number of entities.
    pub count: bool,
}

impl ListQuery {
    /// `limit` 0 or absent is the default (30), above 200 is refused; `skip` must be ≥ 0.
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = match parse_integer("limit", self.limit.as_deref())? {
            None | Some(0) => DEFAULT_LIMIT,
            Some(limit) => u64::try_from(limit).ok().filter(|&limit| limit <= MAX_LIMIT).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "The value '{limit}' is not in the range of 0 to {MAX_LIMIT} for query parameter 'limit'."
                ))
            })?,
        };
        let skip = match parse_integer("skip", self.skip.as_deref())? {
            None => 0,
            Some(skip) => u64::try_from(skip).map_err(|_| {
                ApiError::BadRequest(format!(
                    "The value '{skip}' is not greater than or equal to 0 for query parameter 'skip'."
                ))
            })?,
        };
        let count = parse_bool("count", self.count.as_deref())?.unwrap_or(false);
        Ok(Page { skip, limit, count })
    }
}

/// An integer query parameter; wide enough that any out-of-range number gets the range message.
pub fn parse_integer(name: &str, value: Option<&str>) -> Result<Option<i128>, ApiError> {
    value
        .map(|value| {
            value.trim().parse::<i128>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "The value '{value}' is not an integer for query parameter '{name}'."
                ))
            })
        })
        .transpose()
}

/// An epoch-milliseconds query parameter (`since`, `upto`); negative is refused.
pub fn parse_millis(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    parse_integer(name, value)?
        .map(|number| {
            u64::try_from(number).ok().filter(|&n| i64::try_from(n).is_ok()).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "The value '{number}' is not a valid time in milliseconds for query parameter '{name}'."
                ))
            })
        })
        .transpose()
}

/// A boolean query parameter: `true` or `false`, any case.
pub fn parse_bool(name: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    value
        .map(|value| match value.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ApiError::BadRequest(format!(
                "The value '{value}' is not a boolean for query parameter '{name}'."
            ))),
        })
        .transpose()
}

/// Counts a namespace's entities of one collection.
pub type CountFn = fn(&Store, &str) -> Result<u64, StoreError>;
/// Lists one page (`skip`, `limit`) of a namespace's entities of one collection.
pub type ListFn<E> = fn(&Store, &str, u64, u64) -> Result<Vec<E>, StoreError>;

/// An entity as a list shows it (OpenWhisk lists summaries, not whole entities).
pub trait Listed {
    fn listed(&self) -> impl Serialize + '_;
}

/// The one shape of every entity list: `count=true` answers `{"<collection>": N}`; otherwise one page
/// of the namespace's entities, each as [`Listed`] shows it.
pub async fn respond<E: Listed + Send + 'static>(
    state: &AppState,
    namespace: String,
    page: Page,
    collection: &'static str,
    count: CountFn,
    list: ListFn<E>,
) -> Result<Response, ApiError> {
    if page.count {
        let total = state.db(move |store| count(store, &namespace)).await?;
        return Ok(Json(serde_json::json!({ collection: total })).into_response());
    }
    let entities = state.db(move |store| list(store, &namespace, page.skip, page.limit)).await?;
    Ok(Json(entities.iter().map(Listed::listed).collect::<Vec<_>>()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(limit: Option<&str>, skip: Option<&str>, count: Option<&str>) -> ListQuery {
        ListQuery { limit: limit.map(Into::into), skip: skip.map(Into::into), count: count.map(Into::into) }
    }

    #[test]
    fn defaults_and_bounds_follow_openwhisk() {
        assert_eq!(query(None, None, None).page().unwrap(), Page { skip: 0, limit: 30, count: false });
        assert_eq!(
            query(Some("0"), Some("5"), Some("true")).page().unwrap(),
            Page { skip: 5, limit: 30, count: true }
        );
        assert_eq!(query(Some("200"), None, None).page().unwrap().limit, 200);
        for bad in
            [query(Some("201"), None, None), query(Some("-1"), None, None), query(Some("x"), None, None)]
        {
            assert!(matches!(bad.page(), Err(ApiError::BadRequest(_))));
        }
        let error = query(None, Some("-3"), None).page().unwrap_err().to_string();
        assert!(error.contains("'-3' is not greater than or equal to 0"), "{error}");
        assert!(query(None, None, Some("maybe")).page().is_err());
    }

    #[test]
    fn times_and_booleans_parse_strictly() {
        assert_eq!(parse_millis("since", Some("1700000000000")).unwrap(), Some(1_700_000_000_000));
        assert!(parse_millis("since", Some("-1")).is_err());
        assert!(parse_millis("since", Some("99999999999999999999999")).is_err());
        assert_eq!(parse_bool("docs", Some("TRUE")).unwrap(), Some(true));
        assert_eq!(parse_bool("docs", None).unwrap(), None);
    }
}
