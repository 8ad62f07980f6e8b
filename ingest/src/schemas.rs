//! The schema-registry endpoints under `/v1/schemas`: the read side of Confluent's schema
//! registry REST API, answered from the one registry table of the wire format
//! (`esh_schemas::registry`), so that an integrator's Avro serializer and deserializer can
//! use `http://<host>/v1/schemas` as their registry URL.
//!
//! Like `/v1/openapi.json`, they describe the public contract and hold no data: no token is
//! needed (registry clients would otherwise need credentials configured only for this).
//! An unknown id, subject or version is `404` with the contract's error body (registry
//! clients go by the status code); a malformed id or version is `400`.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use esh_common::ApiError;
use esh_schemas::registry::{self, Registration};
use serde::Serialize;
use utoipa::ToSchema;

use crate::body::PathId;
use crate::views::{self, ErrorBody};
use crate::http_error::HttpError;

/// `GET /v1/schemas/ids/{id}`: a schema by id.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SchemaView {
    /// The Avro schema, as a JSON document in a string.
    schema: &'static str,
}

/// `GET /v1/schemas/subjects/{subject}/versions/{version}`: one version of a subject.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubjectVersionView {
    /// `<topic>-value`.
    subject: &'static str,
    version: u32,
    /// The id records written with this schema carry in bytes 1..5.
    id: u32,
    /// The Avro schema, as a JSON document in a string.
    schema: &'static str,
}

impl From<&Registration> for SubjectVersionView {
    fn from(r: &Registration) -> Self {
        SubjectVersionView {
            subject: r.subject,
            version: r.version,
            id: r.id,
            schema: r.schema,
        }
    }
}

fn unknown_subject() -> ApiError {
    ApiError::not_found("unknown subject")
}

#[utoipa::path(get, path = "/v1/schemas/ids/{id}", tag = "schemas",
    params(("id" = u32, Path, description = "schema id, as in bytes 1..5 of a record")),
    responses((status = 200, description = "the schema", body = SchemaView),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 404, description = "unknown schema id", body = ErrorBody)))]
pub(crate) async fn by_id(PathId(id): PathId) -> Result<Response, HttpError> {
    let id: u32 = id
        .parse()
        .map_err(|_| ApiError::invalid("the schema id must be a number"))?;
    let schema =
        registry::schema_text(id).ok_or_else(|| ApiError::not_found("unknown schema id"))?;
    Ok(views::json(StatusCode::OK, &SchemaView { schema }))
}

#[utoipa::path(get, path = "/v1/schemas/subjects", tag = "schemas",
    responses((status = 200, description = "every subject: `<topic>-value` for each topic", body = [String])))]
pub(crate) async fn subjects() -> Response {
    views::json(StatusCode::OK, &registry::subjects())
}

#[utoipa::path(get, path = "/v1/schemas/subjects/{subject}/versions", tag = "schemas",
    params(("subject" = String, Path, description = "`<topic>-value`")),
    responses((status = 200, description = "the subject's versions, oldest first", body = [u32]),
        (status = 404, description = "unknown subject", body = ErrorBody)))]
pub(crate) async fn versions(PathId(subject): PathId) -> Result<Response, HttpError> {
    let versions: Vec<u32> = registry::versions(&subject)
        .iter()
        .map(|r| r.version)
        .collect();
    if versions.is_empty() {
        return Err(HttpError(unknown_subject()));
    }
    Ok(views::json(StatusCode::OK, &versions))
}

#[utoipa::path(get, path = "/v1/schemas/subjects/{subject}/versions/{version}", tag = "schemas",
    params(("subject" = String, Path, description = "`<topic>-value`"),
        ("version" = String, Path, description = "a version number, or `latest`", pattern = "^([1-9][0-9]{0,8}|latest)$")),
    responses((status = 200, description = "that version of the subject", body = SubjectVersionView),
        (status = 400, description = "the version is neither a number nor `latest`", body = ErrorBody),
        (status = 404, description = "unknown subject or version", body = ErrorBody)))]
pub(crate) async fn version(
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Response, HttpError> {
    let Path((subject, version)) =
        path.map_err(|e| ApiError::invalid(format!("invalid path parameter: {}", e.body_text())))?;
    let found = if version == "latest" {
        registry::latest(&subject).ok_or_else(unknown_subject)?
    } else {
        let number: u32 = version
            .parse()
            .map_err(|_| ApiError::invalid("the version must be a number or `latest`"))?;
        let versions = registry::versions(&subject);
        if versions.is_empty() {
            return Err(HttpError(unknown_subject()));
        }
        versions
            .into_iter()
            .find(|r| r.version == number)
            .ok_or_else(|| ApiError::not_found("unknown version"))?
    };
    Ok(views::json(
        StatusCode::OK,
        &SubjectVersionView::from(found),
    ))
}
