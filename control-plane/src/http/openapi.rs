//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' `#[utoipa::path]`
//! attributes and the `model` types, and served at `/api/v1/openapi.json`.
//!
//! What is common to every authenticated operation is added here rather than repeated on
//! each handler: the bearer security requirement, and the 401 (and, for operations with a
//! body, 413 and 415) responses.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required};
use utoipa::{Modify, OpenApi as _};

use super::error::ErrorBody;
use super::model::Status;
use super::sse::TopologyMessage;

/// Name of the bearer security scheme.
const BEARER: &str = "bearer";
/// The path of the document itself (public).
pub const PATH: &str = "/api/v1/openapi.json";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Pivot control plane API",
        description = "Services, routing policy, users, topology, events, proxies, audit \
                       log and API tokens of a Pivot fleet. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(openapi_json),
    components(schemas(ErrorBody, TopologyMessage, Status)),
    modifiers(&Common),
    tags(
        (name = "services", description = "Services (Sentinel master groups)"),
        (name = "topology", description = "Accepted topologies and planned failovers"),
        (name = "policy", description = "Routing policy and command rules"),
        (name = "users", description = "Users clients authenticate to the proxies as"),
        (name = "events", description = "Topology and configuration events, live stream"),
        (name = "proxies", description = "The proxy fleet"),
        (name = "audit", description = "Who changed what"),
        (name = "tokens", description = "API tokens"),
        (name = "meta", description = "This document"),
    ),
)]
struct ApiDoc;

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, content_type = "application/json", body = Object,
        description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}

/// The document, serialized once.
static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| match serde_json::to_vec(&document()) {
    Ok(json) => Bytes::from(json),
    // Serializing an in-memory document cannot fail; serve a valid, empty one if it did.
    Err(e) => {
        tracing::error!(error = %e, "cannot serialize the OpenAPI document");
        Bytes::from_static(b"{}")
    }
});

/// The handler of [`PATH`].
pub fn handler() -> axum::routing::MethodRouter<super::AppState> {
    axum::routing::get(openapi_json)
}

/// The whole document: the authenticated API (`api::routes`) and this one.
pub fn document() -> OpenApi {
    let (_, api) = super::api::routes().split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(api);
    Common.modify(&mut doc);
    doc
}

/// Adds the security scheme, and the responses common to authenticated operations.
struct Common;

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .into()
}

/// What a status means where the handler did not say.
fn default_description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "204" => "Done",
        "400" => "Invalid input; `field` names the field or parameter at fault",
        "403" => "The token is a viewer token; this needs an admin token",
        "404" => "Unknown service (or the rule, user or token named)",
        "409" => "Conflicts with the current state",
        _ => "See the error message",
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

impl Modify for Common {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        for (path, item) in doc.paths.paths.iter_mut() {
            if path == PATH {
                continue;
            }
            for op in operations(item) {
                let responses = &mut op.responses.responses;
                for (status, response) in responses.iter_mut() {
                    if let RefOr::T(r) = response
                        && r.description.is_empty()
                    {
                        r.description = default_description(status).into();
                    }
                }
                responses
                    .entry("401".into())
                    .or_insert_with(|| error_response("Missing, unknown or revoked token"));
                if let Some(body) = &mut op.request_body {
                    body.required = Some(Required::True);
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error_response("Body over 64 KiB"));
                    responses
                        .entry("415".into())
                        .or_insert_with(|| error_response("Body is not JSON"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn document_lists_every_route_with_its_responses() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let paths = doc["paths"].as_object().unwrap();
        for (path, methods) in [
            ("/api/v1/whoami", &["get"][..]),
            ("/api/v1/services", &["get", "post"]),
            ("/api/v1/services/{name}", &["get", "patch", "delete"]),
            ("/api/v1/services/{name}/topology", &["get"]),
            ("/api/v1/topology", &["get"]),
            ("/api/v1/services/{name}/policy", &["get", "put", "patch"]),
            ("/api/v1/services/{name}/rules", &["get"]),
            (
                "/api/v1/services/{name}/rules/{command}",
                &["put", "delete"],
            ),
            ("/api/v1/services/{name}/users", &["get"]),
            ("/api/v1/services/{name}/users/{user}", &["put", "delete"]),
            ("/api/v1/services/{name}/failover", &["post"]),
            ("/api/v1/events", &["get"]),
            ("/api/v1/events/stream", &["get"]),
            ("/api/v1/proxies", &["get"]),
            ("/api/v1/audit", &["get"]),
            ("/api/v1/tokens", &["get", "post"]),
            ("/api/v1/tokens/{id}", &["delete"]),
            ("/api/v1/openapi.json", &["get"]),
        ] {
            for m in methods {
                let op = &paths[path][m];
                assert!(op.is_object(), "{m} {path} is not documented");
                let responses = op["responses"].as_object().unwrap();
                if path != PATH {
                    assert!(responses.contains_key("401"), "{m} {path}");
                    if *m != "get" {
                        assert!(responses.contains_key("403"), "{m} {path}");
                    }
                } else {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{op}");
                }
            }
        }
        assert_eq!(paths.len(), 18, "{:?}", paths.keys().collect::<Vec<_>>());
    }
}
