//! The query strings of the routes: parsed strictly (an unknown parameter is a 400, so a typo
//! is not silently ignored) and checked against what the models compute.

use axum::extract::Query;
use axum::http::Uri;

use super::error::ApiError;

/// The `top_k` a client asked for, checked against what the models compute.
pub(super) fn wanted_top_k(asked: Option<usize>, computed: usize) -> Result<usize, ApiError> {
    match asked {
        None => Ok(computed),
        Some(k) if (1..=computed).contains(&k) => Ok(k),
        Some(k) => Err(ApiError::InvalidQuery(format!("top_k must be between 1 and {computed}, got {k}"))),
    }
}

pub(super) fn parse_query<T: serde::de::DeserializeOwned + Default>(uri: &Uri) -> Result<T, ApiError> {
    if uri.query().is_none_or(str::is_empty) {
        return Ok(T::default());
    }
    Query::<T>::try_from_uri(uri).map(|Query(q)| q).map_err(|e| ApiError::InvalidQuery(e.body_text()))
}
