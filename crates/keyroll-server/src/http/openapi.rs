//! The OpenAPI document, generated from the handlers' annotations and the proto types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{admin, forward_auth};

/// The API description served at `/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "keyroll", description = "Credential rotation: per-consumer API keys, graceful rotation, explained rejections."),
    paths(
        forward_auth::forward_auth,
        forward_auth::verify_json,
        admin::healthz,
        admin::readyz,
        admin::create_environment,
        admin::list_environments,
        admin::create_consumer,
        admin::list_consumers,
        admin::get_consumer,
        admin::update_consumer,
        admin::rotate,
        admin::revoke,
        admin::retire,
        admin::disable,
        admin::enable,
        crate::http::status::status,
        crate::http::status::events,
        crate::http::keys::get_key,
        crate::http::observe::metrics,
        crate::http::observe::decisions,
        crate::http::tokens::create_token,
        crate::http::tokens::list_tokens,
        crate::http::tokens::revoke_token,
        crate::http::tokens::rotate_token,
    ),
    modifiers(&AdminToken),
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kra_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
