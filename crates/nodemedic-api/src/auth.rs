//! Who is asking, and may they: the bearer token is checked with a TokenReview, the permission with
//! a SubjectAccessReview, both answered by the API server — so the cluster's own users, service
//! accounts and RBAC decide. Writes need verb `create` on resource `actions` in group
//! `nodemedic.io`; `GET /actions/{id}` needs `get` on `actions`, `GET /nodes` needs `list` on
//! `nodes` in the same group. RBAC only has to name the group and resource; nothing serves them.

use crate::{ApiError, ApiState};
use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
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
    let caller = Caller {
        username: user.username.unwrap_or_default(),
        uid: user.uid,
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    };
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.username.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: Some(caller.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(state.client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|e| ApiError::kube("SubjectAccessReview", e))?;
    let allowed = answer.status.as_ref().is_some_and(|s| s.allowed && s.denied != Some(true));
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} may not {verb} {resource}.{GROUP}", if caller.username.is_empty() { "the caller" } else { &caller.username }),
        ));
    }
    Ok(Some(caller))
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
