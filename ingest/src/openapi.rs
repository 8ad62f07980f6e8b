//! `GET /v1/openapi.json`: the OpenAPI 3 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the request and answer types.

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{admin, broadcasts, conversations, health, messages, metrics, send, users, views};

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
                    .description(Some("a user token (HS256 JWT) or the value of ESH_ADMIN_TOKEN"))
                    .build(),
            ),
        );
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
        admin::dead_letters, admin::retry,
        health::live, health::ready, metrics::render, document,
    ),
    components(schemas(views::ErrorBody, views::ErrorDetail)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")))]
pub(crate) async fn document() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_owned()));
    views::json_bytes(StatusCode::OK, text.clone())
}
