//! Who is asking, and may they: the bearer token is checked with a TokenReview, the permission with
//! a SubjectAccessReview, both answered by the API server — so the cluster's own users, service
//! accounts and RBAC decide. Writes need verb `create` on resource `actions` in group
//! `nodemedic.io`; `GET /actions/{id}` needs `get` on `actions`, `GET /nodes` needs `list` on
//! `nodes` in the same group. RBAC only has to name the group and resource; nothing serves them.
//! The controller's `/metrics`, `/healthz` and `/readyz` on the API listener need `get` on their
//! path (`nonResourceURLs`); only `/openapi.json` is answered without a token.

use crate::{ApiError, ApiState};
use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

pub const GROUP: &str = "nodemedic.io";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

/// Authenticates and authorises a request for `verb` on `resource`. `Ok(None)` when auth is off.
pub async fn authorize(state: &ApiState, headers: &HeaderMap, verb: &str, resource: &str) -> Result<Option<Caller>, ApiError> {
    if !state.config.auth {
        return Ok(None);
    }
    let caller = authenticate(state, headers).await?;
    let attributes =
        ResourceAttributes { group: Some(GROUP.into()), resource: Some(resource.into()), verb: Some(verb.into()), ..Default::default() };
    let allowed = review_access(state, &caller, Some(attributes), None).await?;
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} may not {verb} {resource}.{GROUP}", if caller.username.is_empty() { "the caller" } else { &caller.username }),
        ));
    }
    Ok(Some(caller))
}

/// Authenticates and authorises a request for `verb` on a path that is not a resource
/// (`/metrics`): RBAC's `nonResourceURLs`, as Prometheus' scrape role grants it.
pub async fn authorize_path(state: &ApiState, headers: &HeaderMap, verb: &str, path: &str) -> Result<Option<Caller>, ApiError> {
    if !state.config.auth {
        return Ok(None);
    }
    let caller = authenticate(state, headers).await?;
    let attributes = NonResourceAttributes { path: Some(path.into()), verb: Some(verb.into()) };
    if !review_access(state, &caller, None, Some(attributes)).await? {
        let who = if caller.username.is_empty() { "the caller" } else { &caller.username };
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("{who} may not {verb} {path}")));
    }
    Ok(Some(caller))
}

/// The routes of `router` (the controller's `/metrics`, `/healthz`, `/readyz` on the API listener)
/// answered only for a caller whose token and RBAC allow `get` on the path; unchanged when auth is off.
pub fn require_token(state: ApiState, router: axum::Router) -> axum::Router {
    if !state.config.auth {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(state, guard))
}

async fn guard(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path().to_string();
    let checked = crate::deadline(&state, "authorising the request", authorize_path(&state, request.headers(), "get", &path)).await;
    match checked {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// The TokenReview of the request's bearer token: 401 without one or when it is not accepted.
async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token =
        bearer(headers).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer ...)"))?;
    let review = TokenReview { spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None }, ..Default::default() };
    let reviewed = Api::<TokenReview>::all(state.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| ApiError::kube("TokenReview", e))?;
    let status = reviewed.status.unwrap_or_default();
    let user = match (status.authenticated, status.user) {
        (Some(true), Some(user)) => user,
        _ => {
            let why = status.error.unwrap_or_else(|| "the token was not accepted".into());
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("authentication failed: {why}")));
        }
    };
    Ok(Caller {
        username: user.username.unwrap_or_default(),
        uid: user.uid,
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}

async fn review_access(
    state: &ApiState,
    caller: &Caller,
    resource_attributes: Option<ResourceAttributes>,
    non_resource_attributes: Option<NonResourceAttributes>,
) -> Result<bool, ApiError> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.username.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: Some(caller.extra.clone()),
            resource_attributes,
            non_resource_attributes,
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(state.client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|e| ApiError::kube("SubjectAccessReview", e))?;
    Ok(answer.status.as_ref().is_some_and(|s| s.allowed && s.denied != Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_authorization_carries_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, axum::http::HeaderValue::from_static("Basic dXNlcjpwdw=="));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, axum::http::HeaderValue::from_static("bearer abc.def"));
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, axum::http::HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
