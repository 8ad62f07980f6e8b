//! `ApiError` as an HTTP answer: its status, the JSON error body and `Retry-After`. The
//! error itself is the contract's vocabulary (`esh_common::error`), free of HTTP types;
//! handlers and extractors answer `HttpError`, and `?` turns any `ApiError` into one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use esh_common::ApiError;

/// A refused request on its way out as HTTP.
#[derive(Debug)]
pub(crate) struct HttpError(pub(crate) ApiError);

impl<E: Into<ApiError>> From<E> for HttpError {
    fn from(error: E) -> Self {
        HttpError(error.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(error.body())).into_response();
        if let Some(seconds) = error.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
