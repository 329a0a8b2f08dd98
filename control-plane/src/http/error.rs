//! The one error type of the HTTP API: `{"error": "...", "field": "..."}` with a status.
//!
//! What the client sees is chosen here, by who caused the error: input errors repeat the
//! input's fault (naming the field), conflicts and unknown names say what they are, and
//! everything else is a 500 with a generic message whose detail goes to the log only.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// The input field at fault, as a JSON path (`read_policy`, `rules[2].target`), or
    /// the query / path parameter's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why a request was refused with 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not (or no longer) valid.
    Invalid,
}

/// An error a handler returns.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// For 401: what `WWW-Authenticate` says.
    unauthorized: Option<Unauthorized>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                field: None,
            },
            unauthorized: None,
        }
    }

    /// 400 without a single field at fault.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 naming `field`.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::bad_request(message);
        e.body.field = Some(field.into());
        e
    }

    /// 401; the response carries `WWW-Authenticate: Bearer`.
    pub fn unauthorized(why: Unauthorized) -> ApiError {
        let message = match why {
            Unauthorized::Missing => "missing bearer token (Authorization: Bearer <token>)",
            Unauthorized::Invalid => "invalid or revoked token",
        };
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, message);
        e.unauthorized = Some(why);
        e
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 405.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 413.
    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the limit of {limit} bytes"),
        )
    }

    /// 415.
    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a JSON body (Content-Type: application/json)",
        )
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500. `detail` is logged, the client sees a generic message.
    pub fn internal(detail: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "HTTP request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        use crate::Error;
        match e {
            Error::UnknownService(name) => ApiError::not_found(format!("unknown service `{name}`")),
            Error::NotFound(m) => ApiError::not_found(m),
            Error::Invalid(m) => ApiError::bad_request(m),
            Error::InvalidField { field, message } => ApiError::invalid_field(field, message),
            Error::Conflict(m) => ApiError::conflict(m),
            Error::Unavailable(m) => ApiError::unavailable(m),
            other => ApiError::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(why) = self.unauthorized {
            // RFC 6750 section 3: `invalid_token` when one was presented.
            let challenge = match why {
                Unauthorized::Missing => r#"Bearer realm="pivot""#,
                Unauthorized::Invalid => r#"Bearer realm="pivot", error="invalid_token""#,
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
