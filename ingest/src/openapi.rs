//! `GET /v1/openapi.json`: the OpenAPI 3 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the request and answer types.

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, Response as Answer, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{admin, broadcasts, conversations, devices, health, media, messages, metrics, schemas, send, users, views};

/// Declares the bearer scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or the admin token")
                    .description(Some(
                        "a user token: an HS256 JWT issued by POST /v1/users/{id}/tokens, or an RS256/ES256 JWT \
                         of an integrator's identity provider whose public key is configured \
                         (ESH_JWT_PUBLIC_KEYS, ESH_JWT_JWKS) and named by the header's kid; \
                         or the value of ESH_ADMIN_TOKEN",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds the answers many operations share, so that each handler's attribute lists only
/// what is its own:
/// - an operation behind the bearer scheme: `401` (the `Caller` extractor,
///   `ingest/src/auth.rs`), and `500`/`503` when the store or the log fails
///   (`backends/src/error.rs`: a transient failure is `503 unavailable` with `Retry-After`);
/// - an operation with a JSON body: `400`, `413` and `415` (`ingest/src/body.rs`);
/// - an operation with a path parameter: `400` for one that is not valid UTF-8 once decoded;
/// - every `429` and `503` error answer: the `Retry-After` header.
struct CommonAnswers;

impl CommonAnswers {
    fn error(description: &str, retry_after: bool) -> Answer {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        let mut response = ResponseBuilder::new().description(description).content("application/json", content);
        if retry_after {
            let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
            response = response.header(
                "Retry-After",
                HeaderBuilder::new().schema(seconds).description(Some("whole seconds to wait")).build(),
            );
        }
        response.build()
    }

    fn add(operation: &mut Operation, status: u16, description: &str) {
        let retry_after = matches!(status, 429 | 503);
        let entry = operation.responses.responses.entry(status.to_string());
        let response = entry.or_insert_with(|| RefOr::T(Self::error(description, retry_after)));
        // A listed 429/503 error answer gets the header too (the readiness 503 has its own body).
        if let RefOr::T(response) = response {
            let is_error_body = response.content.get("application/json").is_some_and(|content| {
                matches!(&content.schema, Some(RefOr::Ref(reference)) if reference.ref_location.ends_with("/ErrorBody"))
            });
            if retry_after && is_error_body && !response.headers.contains_key("Retry-After") {
                if let Some(header) = Self::error(description, true).headers.remove("Retry-After") {
                    response.headers.insert("Retry-After".to_owned(), header);
                }
            }
        }
    }
}

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_parameter = path.contains('{');
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                if operation.security.as_ref().is_some_and(|requirements| !requirements.is_empty()) {
                    Self::add(operation, 401, "missing, malformed, expired or unknown token");
                    Self::add(operation, 500, "unexpected failure of a backend");
                    Self::add(operation, 503, "a backend is unavailable (`unavailable`)");
                }
                if operation.request_body.is_some() {
                    Self::add(operation, 400, "malformed body or invalid field (`details.field`)");
                    Self::add(operation, 413, "body over the endpoint's limit");
                    Self::add(operation, 415, "content type is not application/json");
                }
                if has_path_parameter {
                    Self::add(operation, 400, "invalid path parameter");
                }
                let existing: Vec<u16> =
                    operation.responses.responses.keys().filter_map(|status| status.parse().ok()).collect();
                for status in existing.into_iter().filter(|status| matches!(status, 429 | 503)) {
                    Self::add(operation, status, "");
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Esh3ar", description = "Messaging between businesses and mobile users (API.md)."),
    paths(
        users::create, users::update, users::get, users::issue_token,
        send::handlers::post_one_way, send::batch::post_batch, send::handlers::post_broadcast,
        send::handlers::post_chat,
        broadcasts::get, broadcasts::messages,
        messages::get, messages::delivered, messages::read, messages::attempts, messages::one_way_history,
        conversations::list, conversations::messages,
        media::upload::upload, media::get, media::download::content,
        admin::dead_letters, admin::retry,
        devices::register, devices::list, devices::remove, devices::preferences, devices::set_preferences,
        health::live, health::ready, metrics::render, document,
        schemas::by_id, schemas::subjects, schemas::versions, schemas::version,
    ),
    components(schemas(views::ErrorBody, views::ErrorDetail)),
    modifiers(&BearerAuth, &CommonAnswers),
)]
struct ApiDoc;

#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")))]
pub(crate) async fn document() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_owned()));
    views::json_bytes(StatusCode::OK, text.clone())
}
