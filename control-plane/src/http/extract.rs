//! Request extractors whose rejections are [`ApiError`]s, and authentication.
//!
//! - [`ApiJson`]: a JSON body, at most [`BODY_LIMIT`] bytes (413 beyond), parsed with
//!   `serde_path_to_error` so that a 400 names the field at fault (`rules[2].target`),
//!   also for missing and unknown fields.
//! - [`ApiQuery`], [`ApiPath`]: axum's, with a 400 in our error shape.
//! - [`authenticate`]: the middleware in front of every `/api/v1` route but the OpenAPI
//!   document. It resolves the bearer token to a [`Caller`] (401 otherwise), refuses
//!   changes (any method but GET/HEAD) from viewers (403), and leaves the `Caller` in the
//!   request's extensions. Handlers then name what they need with [`ReadAccess`] or
//!   [`WriteAccess`], which fail closed when the middleware did not run.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, Unauthorized};
use crate::auth::{Caller, Role};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON request body.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Where a request body type has JSON objects.
///
/// serde's derived `Deserialize` also reads a struct from an array (its fields by
/// position), so `[]` would pass for a body whose fields are all optional and
/// `"backend_auth": ["user", "pw"]` for credentials. The API takes objects only; each body
/// type lists its object positions and [`check_objects`] refuses anything else there
/// before the typed parse.
pub trait JsonShape {
    /// Paths of the objects: `""` the body itself, `"policy"` a field, `"rules[]"` every
    /// element of an array field; nested with `.` (`"policy.rules[]"`).
    const OBJECTS: &'static [&'static str];
}

/// Refuses a non-object at any of `T`'s object positions (absent and `null` are left to
/// the typed parse).
fn check_objects<T: JsonShape>(value: &serde_json::Value) -> Result<(), ApiError> {
    fn walk(v: &serde_json::Value, segments: &[&str], path: &str) -> Result<(), ApiError> {
        let Some((first, rest)) = segments.split_first() else {
            return match v {
                serde_json::Value::Object(_) | serde_json::Value::Null => Ok(()),
                _ if path.is_empty() => Err(ApiError::bad_request(
                    "invalid type: the body must be a JSON object",
                )),
                _ => Err(ApiError::invalid_field(
                    path,
                    "invalid type: expected an object",
                )),
            };
        };
        let (field, each) = match first.strip_suffix("[]") {
            Some(f) => (f, true),
            None => (*first, false),
        };
        let Some(inner) = v.get(field) else {
            return Ok(());
        };
        let here = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        match (each, inner) {
            (true, serde_json::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, rest, &format!("{here}[{i}]"))?;
                }
                Ok(())
            }
            (true, _) => Ok(()),
            (false, _) => walk(inner, rest, &here),
        }
    }
    for pattern in T::OBJECTS {
        let segments: Vec<&str> = pattern.split('.').filter(|s| !s.is_empty()).collect();
        if segments.is_empty() && !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid type: the body must be a JSON object",
            ));
        }
        walk(value, &segments, "")?;
    }
    Ok(())
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + JsonShape,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(BODY_LIMIT)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as a `T`; errors name the field at fault.
pub fn parse_json<T: DeserializeOwned + JsonShape>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        check_objects::<T>(&value)?;
    }
    // Only a body that is not JSON at all is a syntax error: serde_json also reports some
    // wrong types (a number where an enum's string goes) as syntax errors, and those name
    // a field. Checked on the error path only.
    let not_json = |e: &serde_json::Error| {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .err()
            .map(|_| ApiError::bad_request(format!("invalid JSON: {}", message(e))))
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| not_json(e.inner()).unwrap_or_else(|| json_error(e)))?;
    de.end().map_err(|e| {
        not_json(&e)
            .unwrap_or_else(|| ApiError::bad_request(format!("invalid JSON: {}", message(&e))))
    })?;
    Ok(value)
}

/// serde_json's message without its " at line L column C" suffix (the field path says
/// where, and positions are meaningless to most API clients).
fn message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

/// A data error in a valid JSON document: names the field.
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    let msg = match inner.classify() {
        serde_json::error::Category::Data => message(inner),
        // serde_json's "expected value" for a wrong type of enum value.
        _ => "invalid type: expected one of the documented values".to_string(),
    };
    let path = e.path().to_string();
    let parent = (path != ".").then_some(path.as_str());
    // A missing field is reported at the struct that expected it: name the field itself.
    let named = msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (parent, named) {
        (Some(p), Some(f)) => Some(format!("{p}.{f}")),
        (None, Some(f)) => Some(f.to_string()),
        (Some(p), None) => Some(p.to_string()),
        (None, None) => None,
    };
    match field {
        Some(f) => ApiError::invalid_field(f, msg),
        None => ApiError::bad_request(msg),
    }
}

/// A query string.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                ApiError::bad_request(format!("invalid query string: {detail}"))
            })
    }
}

/// Path parameters.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// The bearer token of `headers`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::unauthorized(Unauthorized::Missing))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized(Unauthorized::Invalid))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(ApiError::unauthorized(Unauthorized::Missing))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(Unauthorized::Missing));
    }
    Ok(token.trim())
}

/// Authenticates the request (see the module docs).
pub async fn authenticate(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let caller = match bearer(req.headers()) {
        Ok(token) => match app.tokens.verify(token).await {
            Ok(Some(caller)) => caller,
            Ok(None) => return ApiError::unauthorized(Unauthorized::Invalid).into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        },
        Err(e) => return e.into_response(),
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && caller.role != Role::Admin {
        return forbidden(&caller).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn forbidden(caller: &Caller) -> ApiError {
    ApiError::forbidden(format!(
        "token `{}` has role {}; this needs an admin token",
        caller.name, caller.role
    ))
}

fn caller(parts: &Parts) -> Result<Caller, ApiError> {
    parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
        // A route registered without the middleware: refuse rather than serve it open.
        ApiError::internal(&format_args!(
            "route {} {} has no authentication",
            parts.method, parts.uri
        ))
    })
}

/// A request from any valid token.
#[derive(Debug, Clone)]
pub struct ReadAccess(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        caller(parts).map(ReadAccess)
    }
}

/// A request from an admin token.
#[derive(Debug, Clone)]
pub struct WriteAccess(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let caller = caller(parts)?;
        if caller.role != Role::Admin {
            return Err(forbidden(&caller));
        }
        Ok(WriteAccess(caller))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::model::{PolicyBody, PolicyPatch};

    fn field_of<T: DeserializeOwned + JsonShape + std::fmt::Debug>(
        json: &str,
    ) -> (Option<String>, String) {
        let e = parse_json::<T>(json.as_bytes()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        (e.body().field.clone(), e.body().error.clone())
    }

    #[test]
    fn json_errors_name_the_field() {
        let ok = r#"{"read_policy":"all","consistency":"strong","write_ack":"master"}"#;
        assert!(parse_json::<PolicyBody>(ok.as_bytes()).is_ok());
        let cases = [
            (
                r#"{"read_policy":"x","consistency":"strong","write_ack":"master"}"#,
                "read_policy",
            ),
            (
                r#"{"read_policy":"all","write_ack":"master"}"#,
                "consistency",
            ),
            (
                r#"{"read_policy":"all","consistency":"strong","write_ack":"master","nope":1}"#,
                "nope",
            ),
            (
                r#"{"read_policy":"all","consistency":"strong","write_ack":"replicas(0)"}"#,
                "write_ack",
            ),
            (
                r#"{"read_policy":"all","consistency":"strong","write_ack":"master","rules":[{"command":"get","target":"master"},{"command":"set","target":"up"}]}"#,
                "rules[1].target",
            ),
            (
                r#"{"read_policy":"all","consistency":"strong","write_ack":"master","rules":[{"command":"get"}]}"#,
                "rules[0].target",
            ),
            (
                r#"{"read_policy":"all","consistency":"strong","write_ack":"master","rules":[{"command":"get","target":"any","x":1}]}"#,
                "rules[0].x",
            ),
            (
                r#"{"read_policy":"all","consistency":"strong","write_ack":"master","rules":[{"command":"a b","target":"any"}]}"#,
                "rules[0].command",
            ),
            (r#"{"failover_hold":"forever"}"#, "failover_hold"),
            (r#"{"max_replica_lag":-1}"#, "max_replica_lag"),
            (
                r#"{"max_replica_lag":9223372036854775808}"#,
                "max_replica_lag",
            ),
            (r#"{"max_replica_lag":1.5}"#, "max_replica_lag"),
            (
                r#"{"rules":[{"command":"get","target":7}]}"#,
                "rules[0].target",
            ),
            (r#"{"rules":{}}"#, "rules"),
        ];
        for (json, field) in cases {
            let (got, msg) = if json.contains("read_policy") || json.contains("consistency") {
                field_of::<PolicyBody>(json)
            } else {
                field_of::<PolicyPatch>(json)
            };
            assert_eq!(got.as_deref(), Some(field), "{json}: {msg}");
            assert!(!msg.contains("line 1"), "{msg}");
        }
        let (field, msg) = field_of::<PolicyBody>("{not json");
        assert_eq!(field, None);
        assert!(msg.starts_with("invalid JSON"), "{msg}");
        let (_, msg) = field_of::<PolicyBody>(&format!("{ok} trailing"));
        assert!(msg.starts_with("invalid JSON"), "{msg}");
        let (field, _) = field_of::<PolicyBody>("[]");
        assert_eq!(field, None);
    }

    #[test]
    fn objects_only_where_objects_go() {
        use crate::http::model::{NewServiceBody, ServicePatch};
        let (field, msg) = field_of::<ServicePatch>("[]");
        assert_eq!(field, None);
        assert!(msg.contains("JSON object"), "{msg}");
        let (field, _) = field_of::<ServicePatch>(r#"{"backend_auth": ["u", "pw"]}"#);
        assert_eq!(field.as_deref(), Some("backend_auth"));
        let (field, _) = field_of::<PolicyPatch>(
            r#"{"rules": [{"command": "get", "target": "any"}, ["set", "deny"]]}"#,
        );
        assert_eq!(field.as_deref(), Some("rules[1]"));
        let (field, _) = field_of::<NewServiceBody>(
            r#"{"name": "a", "sentinels": ["h:1"], "policy": {"read_policy": "all", "consistency": "strong", "write_ack": "master", "rules": [[]]}}"#,
        );
        assert_eq!(field.as_deref(), Some("policy.rules[0]"));
        assert!(parse_json::<ServicePatch>(br#"{"backend_auth": null}"#).is_ok());
        // A wrong type that is not an object position is the typed parse's.
        let (field, _) = field_of::<PolicyPatch>(r#"{"rules": 5}"#);
        assert_eq!(field.as_deref(), Some("rules"));
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let p: PolicyPatch = parse_json(br#"{"failover_hold":null}"#).unwrap();
        assert_eq!(p.failover_hold, Some(None));
        assert_eq!(p.max_replica_lag, None);
        let p: PolicyPatch = parse_json(br#"{"max_replica_lag":5,"failover_hold":"2s"}"#).unwrap();
        assert_eq!(p.max_replica_lag, Some(Some(crate::http::model::Lag(5))));
        assert!(p.failover_hold.is_some_and(|h| h.is_some()));
        // JSON Schema counts 1024.0 an integer.
        let p: PolicyPatch = parse_json(br#"{"max_replica_lag":1024.0}"#).unwrap();
        assert_eq!(p.max_replica_lag, Some(Some(crate::http::model::Lag(1024))));
        // `null` is not a value for the fields that cannot be cleared.
        let (field, msg) = field_of::<PolicyPatch>(r#"{"read_policy":null}"#);
        assert_eq!(field.as_deref(), Some("read_policy"), "{msg}");
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap_err().status(), StatusCode::UNAUTHORIZED);
    }
}
