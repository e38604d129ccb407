//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types in
//! `model`, served at `GET /api/v1/openapi.json`. A modifier adds what annotations cannot
//! say once for all: the bearer scheme, the `x-request-id` header of every response, the
//! `Retry-After` header of every 429 and 503, and the webhook the service calls.

use axum::Json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, PathsBuilder, RefOr, Required, Schema, Type};
use utoipa::{Modify, OpenApi};
use video_import_shared::webhook::Payload;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Video import API",
        description = "Bulk video import compatible with Livingdocs' POST /api/v1/import/videos. \
            Tokens carry scopes public-api:write (imports, status) and public-api:read (media library). \
            Every path is also served under Livingdocs' dated versions, /api/{YYYY-MM}/… \
            (see the README)."
    ),
    paths(
        crate::import::create,
        crate::status::show,
        crate::status::list,
        crate::redeliver::create,
        crate::cancel::create,
        crate::media::show,
        crate::media::find,
        crate::asset::show,
        crate::retry::create,
    ),
    components(schemas(Payload)),
    modifiers(&Conventions)
)]
pub struct ApiDoc;

struct Conventions;

fn string_schema() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn integer_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .into()
}

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // Answered by the accept loop for any operation (see `server` and `protocol`).
                let error = |description: &str| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(RefOr::Ref(
                                        utoipa::openapi::Ref::from_schema_name("ErrorBody"),
                                    )))
                                    .build(),
                            )
                            .build(),
                    )
                };
                let responses = &mut operation.responses.responses;
                responses.entry("400".into()).or_insert_with(|| {
                    error(
                        "The request is not valid HTTP/1.1; error_details names the part at fault",
                    )
                });
                responses.entry("431".into()).or_insert_with(|| {
                    error("More than 100 header fields, or over 64 KiB of request line and headers")
                });
                if let Some(RefOr::T(too_many)) = responses.get_mut("429") {
                    too_many.description.push_str(
                        "; also a connection beyond api.max_connections_per_client from one address",
                    );
                }
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    response.headers.insert(
                        "x-request-id".into(),
                        RefOr::T(
                            HeaderBuilder::new()
                                .schema(Some(string_schema()))
                                .description(Some(
                                    "The request's id (the caller's, when it sent a sane one); quote it when asking for help",
                                ))
                                .build(),
                        ),
                    );
                    if status == "429" || status == "503" {
                        response.headers.insert(
                            "Retry-After".into(),
                            RefOr::T(
                                HeaderBuilder::new()
                                    .schema(Some(integer_schema()))
                                    .description(Some("Seconds to wait before trying again"))
                                    .build(),
                            ),
                        );
                    }
                }
            }
        }
        openapi.webhooks = Some(
            PathsBuilder::new()
                .path("importFinished", webhook_item())
                .build(),
        );
    }
}

/// The POST a job's webhook receives when the job is finished.
fn webhook_item() -> PathItem {
    let header = |name: &str, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .schema(Some(string_schema()))
            .description(Some(description))
            .build()
    };
    let operation = OperationBuilder::new()
        .operation_id(Some("importFinished"))
        .summary(Some(
            "A job finished: every video is imported, skipped or failed",
        ))
        .description(Some(
            "Signed as Standard Webhooks do: verify webhook-signature (HMAC-SHA256 of \
             `{webhook-id}.{webhook-timestamp}.{body}` with the project's whsec_ secret) \
             before trusting the body. Retried for about three days until a 2xx; 410 stops \
             the retries.",
        ))
        .parameter(header(
            "webhook-id",
            "The event's id, the same on every retry: the receiver's idempotency key",
        ))
        .parameter(header("webhook-timestamp", "Unix seconds of this attempt"))
        .parameter(header(
            "webhook-signature",
            "Space-separated `v1,<base64>` signatures, two while a secret rotation overlaps",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "Payload",
                        ))))
                        .build(),
                )
                .required(Some(Required::True))
                .build(),
        ))
        .response(
            "2XX",
            ResponseBuilder::new().description("Received; no more attempts"),
        )
        .response(
            "410",
            ResponseBuilder::new().description("Gone: stop sending this job's webhook"),
        )
        .response(
            "default",
            ResponseBuilder::new()
                .description("Anything else (or no answer within the timeout): retried later"),
        )
        .build();
    PathItem::new(HttpMethod::Post, operation)
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique_and_queries_are_in_the_query() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ids = Vec::new();
        for (_, item) in doc["paths"].as_object().unwrap() {
            for (_, operation) in item.as_object().unwrap() {
                ids.push(operation["operationId"].as_str().unwrap().to_string());
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = parameter["name"].as_str().unwrap();
                    let place = parameter["in"].as_str().unwrap();
                    assert!(
                        place != "path" || name == "id",
                        "{name} is declared in the path"
                    );
                }
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "{ids:?}");
        assert!(doc["webhooks"]["importFinished"]["post"].is_object());
    }
}
