//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types in
//! `model`, served at `GET /api/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Video import API",
        description = "Bulk video import compatible with Livingdocs' POST /api/v1/import/videos. \
            Tokens carry scopes public-api:write (imports, status) and public-api:read (media library)."
    ),
    paths(
        crate::import::create,
        crate::status::show,
        crate::status::list,
        crate::redeliver::create,
        crate::media::show,
        crate::media::find,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
