//! The REST handlers of `/api/v1` (docs/api.md) and their OpenAPI descriptions.
//!
//! Handlers are thin: parse (the extractors name the field at fault), call [`Admin`] or
//! the token table, convert to the wire shapes of `model`. Every change goes through
//! `Admin`, which validates, audits and publishes it; token changes are audited here with
//! [`Admin::record`].
//!
//! [`routes`] registers each handler together with its `#[utoipa::path]`, so a route
//! cannot exist without being in the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, ReadAccess, WriteAccess};
use super::model::*;
use crate::admin::{Actor, NewService, ServiceUpdate};
use crate::auth::Caller;
use crate::failover::FailoverOptions;
use crate::state::{CommandRule, ServiceState};
use crate::store::{AuditQuery, EventQuery};

/// Default `limit` of the paged lists (REST and gRPC).
pub(crate) const DEFAULT_LIMIT: u32 = 50;
/// Largest `limit` of the paged lists.
pub(crate) const MAX_LIMIT: u32 = 1000;
/// Most kinds in one `kind=` filter.
const MAX_KINDS: usize = 32;

/// Every `/api/v1` route that needs a token (the caller adds authentication).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(list_services, create_service))
        .routes(routes!(get_service, update_service, delete_service))
        .routes(routes!(service_topology))
        .routes(routes!(fleet_topology))
        .routes(routes!(get_policy, put_policy, patch_policy))
        .routes(routes!(list_rules))
        .routes(routes!(put_rule, delete_rule))
        .routes(routes!(list_users))
        .routes(routes!(put_user, delete_user))
        .routes(routes!(failover))
        .routes(routes!(list_events))
        .routes(routes!(super::sse::events_stream))
        .routes(routes!(list_proxies))
        .routes(routes!(list_audit))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
}

fn actor(caller: &Caller) -> Actor {
    Actor::new(caller.actor())
}

/// The version a client waits for: the change's, or when nothing changed the version
/// that last changed the service.
pub(crate) fn version_of(s: &ServiceState, changed: Option<u64>) -> u64 {
    changed.unwrap_or_else(|| s.config_version.max(s.topology.changed_version))
}

fn with_status<T: serde::Serialize>(created: bool, body: T) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Parses an optional query parameter; errors name it. An empty value (`limit=`) is not
/// a number: 400, as the schema says.
fn param<T: std::str::FromStr>(
    name: &str,
    value: Option<&str>,
    what: &str,
) -> Result<Option<T>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid_field(name, format!("must be {what}"))),
    }
}

fn limit(value: Option<&str>) -> Result<u32, ApiError> {
    let what = format!("an integer from 1 to {MAX_LIMIT}");
    match param::<u32>("limit", value, &what)? {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid_field("limit", format!("must be {what}"))),
    }
}

fn before(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    match param::<i64>("before", value, "a positive integer (an id)")? {
        Some(n) if n < 1 => Err(ApiError::invalid_field(
            "before",
            "must be a positive integer (an id)",
        )),
        other => Ok(other),
    }
}

pub(crate) fn next_before(
    ids: impl DoubleEndedIterator<Item = i64>,
    len: usize,
    limit: u32,
) -> Option<i64> {
    // A full page may have a next one; a short page is the last.
    (len == limit as usize).then(|| ids.last()).flatten()
}

// ---------------------------------------------------------------------------------------
// Who am I.

/// The calling token's name and role.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "tokens",
    responses((status = 200, body = WhoAmI)))]
async fn whoami(ReadAccess(caller): ReadAccess) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role.into(),
    })
}

// ---------------------------------------------------------------------------------------
// Services.

/// Every service.
#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    responses((status = 200, body = ServiceList)))]
async fn list_services(_: ReadAccess, State(app): State<AppState>) -> Json<ServiceList> {
    Json(ServiceList {
        services: app.admin.services().iter().map(ServiceView::from).collect(),
    })
}

/// Registers a service and starts watching its Sentinels.
#[utoipa::path(post, path = "/api/v1/services", tag = "services",
    request_body = NewServiceBody,
    responses(
        (status = 201, body = ServiceView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A service with that name exists"),
    ))]
async fn create_service(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewServiceBody>,
) -> Result<Response, ApiError> {
    let policy = body
        .policy
        .map(|p| p.into_policy("policy."))
        .transpose()
        .map_err(|(f, m)| ApiError::invalid_field(f, m))?;
    let created = app
        .admin
        .create_service(
            &actor(&caller),
            NewService {
                name: body.name,
                sentinels: body.sentinels.into_iter().map(|a| a.0).collect(),
                backend_auth: body.backend_auth.map(Into::into),
                policy,
            },
        )
        .await?;
    Ok(with_status(true, ServiceView::from(&created)))
}

/// One service.
#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)))]
async fn get_service(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(ServiceView::from(&app.admin.service(&name)?)))
}

/// Changes a service's Sentinels or backend credentials.
#[utoipa::path(patch, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    request_body = ServicePatch,
    responses(
        (status = 200, body = ServiceView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn update_service(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ServicePatch>,
) -> Result<Json<ServiceView>, ApiError> {
    let update = ServiceUpdate {
        sentinels: body.sentinels.map(|s| s.into_iter().map(|a| a.0).collect()),
        backend_auth: body.backend_auth.map(|a| a.map(Into::into)),
    };
    let updated = app
        .admin
        .update_service(&actor(&caller), &name, update)
        .await?;
    Ok(Json(ServiceView::from(&updated)))
}

/// Query of `DELETE /api/v1/services/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeleteServiceParams {
    /// Delete even while connected proxies serve it.
    #[param(value_type = Option<bool>)]
    force: Option<String>,
}

/// Removes a service.
#[utoipa::path(delete, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name", example = "mymaster"), DeleteServiceParams),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Connected proxies serve it (use `force=true`)"),
    ))]
async fn delete_service(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteServiceParams>,
) -> Result<StatusCode, ApiError> {
    let force = param::<bool>("force", q.force.as_deref(), "true or false")?.unwrap_or(false);
    app.admin
        .delete_service(&actor(&caller), &name, force)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Topology.

/// A service's topology.
#[utoipa::path(get, path = "/api/v1/services/{name}/topology", tag = "topology",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    responses((status = 200, body = TopologyView), (status = 404, body = ErrorBody)))]
async fn service_topology(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TopologyView>, ApiError> {
    Ok(Json(TopologyView::of(&app.admin.service(&name)?)))
}

/// Every service's topology, with the global config version.
#[utoipa::path(get, path = "/api/v1/topology", tag = "topology",
    responses((status = 200, body = FleetTopology)))]
async fn fleet_topology(_: ReadAccess, State(app): State<AppState>) -> Json<FleetTopology> {
    Json(FleetTopology::from(&*app.state.current()))
}

// ---------------------------------------------------------------------------------------
// Policy and rules.

/// A service's routing policy.
#[utoipa::path(get, path = "/api/v1/services/{name}/policy", tag = "policy",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    responses((status = 200, body = PolicyView), (status = 404, body = ErrorBody)))]
async fn get_policy(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json(PolicyView::from(&app.admin.policy(&name)?)))
}

async fn policy_change(
    app: &AppState,
    name: &str,
    changed: Option<u64>,
) -> Result<Json<PolicyChange>, ApiError> {
    let s = app.admin.service(name)?;
    Ok(Json(PolicyChange {
        policy: PolicyView::from(&s.policy),
        version: version_of(&s, changed),
    }))
}

/// Replaces a service's routing policy.
#[utoipa::path(put, path = "/api/v1/services/{name}/policy", tag = "policy",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    request_body = PolicyBody,
    responses(
        (status = 200, body = PolicyChange),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn put_policy(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Json<PolicyChange>, ApiError> {
    let policy = body
        .into_policy("")
        .map_err(|(f, m)| ApiError::invalid_field(f, m))?;
    let changed = app.admin.set_policy(&actor(&caller), &name, policy).await?;
    policy_change(&app, &name, changed).await
}

/// Changes some fields of a service's routing policy.
#[utoipa::path(patch, path = "/api/v1/services/{name}/policy", tag = "policy",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    request_body = PolicyPatch,
    responses(
        (status = 200, body = PolicyChange),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn patch_policy(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PolicyPatch>,
) -> Result<Json<PolicyChange>, ApiError> {
    // Read-modify-write inside `Admin`, serialised with every other change.
    let (_, changed) = app
        .admin
        .update_policy(&actor(&caller), &name, |current| {
            body.apply(current)
                .map_err(|(field, message)| crate::Error::InvalidField { field, message })
        })
        .await?;
    policy_change(&app, &name, changed).await
}

/// A service's command rules.
#[utoipa::path(get, path = "/api/v1/services/{name}/rules", tag = "policy",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    responses((status = 200, body = RuleList), (status = 404, body = ErrorBody)))]
async fn list_rules(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RuleList>, ApiError> {
    Ok(Json(RuleList {
        rules: app
            .admin
            .policy(&name)?
            .rules
            .iter()
            .map(RuleView::from)
            .collect(),
    }))
}

/// Adds or replaces the rule of a command.
#[utoipa::path(put, path = "/api/v1/services/{name}/rules/{command}", tag = "policy",
    params(
        ("name" = String, Path, description = "Service name", example = "mymaster"),
        ("command" = String, Path, description = "Command name (`flushall`) or `container|sub`",
            pattern = r"^[!-{}~]+(\|[!-{}~]+)?$", max_length = 128),
    ),
    request_body = RuleTarget,
    responses(
        (status = 200, body = RuleChange, description = "Replaced"),
        (status = 201, body = RuleChange, description = "Created"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn put_rule(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath((name, command)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RuleTarget>,
) -> Result<Response, ApiError> {
    let rule = CommandRule::new(&command, body.target.into())
        .map_err(|m| ApiError::invalid_field("command", m))?;
    let (created, changed) = app
        .admin
        .put_rule(&actor(&caller), &name, rule.clone())
        .await?;
    let s = app.admin.service(&name)?;
    Ok(with_status(
        created,
        RuleChange {
            rule: RuleView::from(&rule),
            version: version_of(&s, changed),
        },
    ))
}

/// Removes the rule of a command.
#[utoipa::path(delete, path = "/api/v1/services/{name}/rules/{command}", tag = "policy",
    params(
        ("name" = String, Path, description = "Service name", example = "mymaster"),
        ("command" = String, Path, description = "Command name", max_length = 128),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such service or rule"),
    ))]
async fn delete_rule(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath((name, command)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.admin
        .delete_rule(&actor(&caller), &name, &command)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Users.

/// A service's proxy users (names only).
#[utoipa::path(get, path = "/api/v1/services/{name}/users", tag = "users",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    responses((status = 200, body = UserList), (status = 404, body = ErrorBody)))]
async fn list_users(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<UserList>, ApiError> {
    Ok(Json(UserList {
        users: app
            .admin
            .users(&name)?
            .into_iter()
            .map(|name| UserView { name })
            .collect(),
    }))
}

/// Admin's field names for a user are the body's; the user's name is the path's `user`.
fn user_field(e: crate::Error) -> ApiError {
    match e {
        crate::Error::InvalidField { field, message } if field == "name" => {
            ApiError::invalid_field("user", message)
        }
        other => other.into(),
    }
}

/// Creates a proxy user or changes its password.
#[utoipa::path(put, path = "/api/v1/services/{name}/users/{user}", tag = "users",
    params(
        ("name" = String, Path, description = "Service name", example = "mymaster"),
        ("user" = String, Path, description = "User name: 1-128 printable ASCII characters, no spaces",
            pattern = r"^[!-~]{1,128}$"),
    ),
    request_body = UserBody,
    responses(
        (status = 200, body = UserChange, description = "Password changed (or unchanged)"),
        (status = 201, body = UserChange, description = "Created"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn put_user(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath((name, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<UserBody>,
) -> Result<Response, ApiError> {
    let (created, changed) = app
        .admin
        .put_user(&actor(&caller), &name, &user, &body.password.0)
        .await
        .map_err(user_field)?;
    let s = app.admin.service(&name)?;
    Ok(with_status(
        created,
        UserChange {
            name: user,
            version: version_of(&s, changed),
        },
    ))
}

/// Deletes a proxy user; the proxies disconnect its clients.
#[utoipa::path(delete, path = "/api/v1/services/{name}/users/{user}", tag = "users",
    params(
        ("name" = String, Path, description = "Service name", example = "mymaster"),
        ("user" = String, Path, description = "User name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such service or user"),
    ))]
async fn delete_user(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath((name, user)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.admin.delete_user(&actor(&caller), &name, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// Failover.

/// A planned failover: pauses writes, lets the replicas catch up, and asks a Sentinel
/// that agrees with the majority to fail over. Returns when the new master is accepted.
#[utoipa::path(post, path = "/api/v1/services/{name}/failover", tag = "topology",
    params(("name" = String, Path, description = "Service name", example = "mymaster")),
    responses(
        (status = 200, body = FailoverView),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A failover is running, there is no master, or no healthy replica"),
        (status = 503, body = ErrorBody, description = "The Redis nodes or Sentinels did not complete it"),
    ))]
async fn failover(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<FailoverView>, ApiError> {
    let report = app
        .admin
        .failover(&actor(&caller), &name, FailoverOptions::default())
        .await?;
    Ok(Json(report.into()))
}

// ---------------------------------------------------------------------------------------
// Events, proxies, audit.

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsParams {
    /// Only this service's events (also of a deleted service).
    service: Option<String>,
    /// Only these kinds, comma-separated (`master-changed,failover-finished`).
    #[param(pattern = r"^([a-z-]{1,64}(,[a-z-]{1,64}){0,31})?$")]
    kind: Option<String>,
    /// Only events with a smaller id: `next_before` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

fn kinds(value: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    let kinds: Vec<String> = value.split(',').map(|k| k.trim().to_string()).collect();
    check_kinds(&kinds).map_err(|m| ApiError::invalid_field("kind", m))?;
    Ok(kinds)
}

/// An event-kind filter: at most [`MAX_KINDS`] names of lowercase letters and `-`.
pub(crate) fn check_kinds(kinds: &[String]) -> Result<(), String> {
    if kinds.len() > MAX_KINDS {
        return Err(format!("at most {MAX_KINDS} kinds"));
    }
    let valid = |k: &String| {
        !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
    };
    if !kinds.iter().all(valid) {
        return Err(
            "a comma-separated list of event kinds (`master-changed,failover-finished`)".into(),
        );
    }
    Ok(())
}

/// Topology and configuration events, newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(EventsParams),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody)))]
async fn list_events(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventsParams>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = limit(q.limit.as_deref())?;
    let rows = app
        .admin
        .events(EventQuery {
            service: q.service.filter(|s| !s.is_empty()),
            kinds: kinds(q.kind.as_deref())?,
            before: before(q.before.as_deref())?,
            limit,
        })
        .await?;
    let next = next_before(rows.iter().map(|r| r.id), rows.len(), limit);
    Ok(Json(EventPage {
        events: rows.into_iter().map(EventView::from).collect(),
        next_before: next,
    }))
}

/// The proxy fleet with the version each proxy runs.
#[utoipa::path(get, path = "/api/v1/proxies", tag = "proxies",
    responses((status = 200, body = ProxyList)))]
async fn list_proxies(_: ReadAccess, State(app): State<AppState>) -> Json<ProxyList> {
    let fleet = app.state.current();
    Json(ProxyList {
        version: fleet.version,
        proxies: app
            .registry
            .list()
            .iter()
            .map(|p| ProxyView::new(p, &fleet))
            .collect(),
    })
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only changes of this service.
    service: Option<String>,
    /// Only changes by this actor (`token:ci`, `config`).
    actor: Option<String>,
    /// Only entries with a smaller id: `next_before` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody)))]
async fn list_audit(
    _: ReadAccess,
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = limit(q.limit.as_deref())?;
    let rows = app
        .admin
        .audit(AuditQuery {
            service: q.service.filter(|s| !s.is_empty()),
            actor: q.actor.filter(|s| !s.is_empty()),
            before: before(q.before.as_deref())?,
            limit,
        })
        .await?;
    let next = next_before(rows.iter().map(|r| r.id), rows.len(), limit);
    Ok(Json(AuditPage {
        entries: rows.into_iter().map(AuditView::from).collect(),
        next_before: next,
    }))
}

// ---------------------------------------------------------------------------------------
// Tokens.

/// Every API token (never the tokens themselves).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList), (status = 403, body = ErrorBody)))]
async fn list_tokens(
    _: WriteAccess,
    State(app): State<AppState>,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        tokens: app
            .tokens
            .list()
            .await?
            .iter()
            .map(TokenView::from)
            .collect(),
    }))
}

/// Writes a token change to the audit log. The change is made: a failure here is
/// logged, not reported to the caller (who would otherwise lose the new token).
async fn audit_token(
    app: &AppState,
    caller: &Caller,
    action: &str,
    name: &str,
    before: Value,
    after: Value,
) {
    if let Err(e) = app
        .admin
        .record(&actor(caller), action, None, name, before, after)
        .await
    {
        tracing::error!(error = %e, action, token = name, "cannot write the audit row of a token change");
    }
}

/// Creates a token. The response is the only time the token is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A token with that name exists"),
    ))]
async fn create_token(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    let (info, secret) = app
        .tokens
        .create(&body.name, body.role.into(), &caller.actor())
        .await?;
    audit_token(
        &app,
        &caller,
        "token.create",
        &info.name,
        Value::Null,
        json!({"name": info.name, "role": info.role}),
    )
    .await;
    Ok(with_status(
        true,
        CreatedToken {
            id: info.id,
            name: info.name,
            role: info.role.into(),
            token: secret.expose().to_string(),
        },
    ))
}

/// Deletes a token; requests with it fail at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = i64, Path, description = "Token id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "It is the last admin token"),
    ))]
async fn delete_token(
    WriteAccess(caller): WriteAccess,
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::invalid_field("id", "must be an integer token id"))?;
    let info = app.tokens.delete(id).await?;
    audit_token(
        &app,
        &caller,
        "token.delete",
        &info.name,
        json!({"name": info.name, "role": info.role}),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
