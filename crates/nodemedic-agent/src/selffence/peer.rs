//! The peer protocol: each agent answers `POST /self-fencing/v1/peer` (a bearer token shared through a
//! Secret) with whether it reaches the API server and, if it does, how the asking node looks from
//! there (is nodemedic remediating it?). The asking side puts every known peer the question at once,
//! each with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use kube::Api;
use nodemedic_core::selffence::{PeerAnswer, PeerVerdict, verdict_from_record};
use nodemedic_k8s::NodeRemediation;
use serde::{Deserialize, Serialize};

pub const PATH: &str = "/self-fencing/v1/peer";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Question {
    /// The asking node.
    pub node: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reply {
    /// The answering node.
    pub node: String,
    pub api_server_reachable: bool,
    pub verdict: PeerVerdict,
}

/// What the answering side knows: its own API reachability (from its last check) and a client to
/// read the asking node's NodeRemediation.
pub struct Answerer {
    pub node: String,
    pub token: String,
    pub api_ok: Arc<AtomicBool>,
    pub client: kube::Client,
    pub lookup_timeout: Duration,
}

/// Compares without stopping at the first difference, so the time taken says nothing about the token.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn answer(State(me): State<Arc<Answerer>>, headers: HeaderMap, Json(q): Json<Question>) -> Result<Json<Reply>, StatusCode> {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|t| same_token(t.as_bytes(), me.token.as_bytes())) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let reachable = me.api_ok.load(Ordering::Relaxed);
    let verdict = if reachable { me.verdict_on(&q.node).await } else { PeerVerdict::Unknown };
    tracing::debug!(asker = %q.node, reachable, ?verdict, "answered a peer");
    Ok(Json(Reply { node: me.node.clone(), api_server_reachable: reachable, verdict }))
}

impl Answerer {
    async fn verdict_on(&self, node: &str) -> PeerVerdict {
        let api: Api<NodeRemediation> = Api::all(self.client.clone());
        match tokio::time::timeout(self.lookup_timeout, api.get_opt(node)).await {
            Ok(Ok(record)) => verdict_from_record(record.as_ref().and_then(|r| r.status.as_ref()).map(|s| &s.record)),
            Ok(Err(error)) => {
                tracing::warn!(%error, asker = node, "reading a peer's NodeRemediation");
                PeerVerdict::Unknown
            }
            Err(_) => PeerVerdict::Unknown,
        }
    }
}

/// Serves the peer endpoint until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, me: Arc<Answerer>) {
    let app = axum::Router::new().route(PATH, post(answer)).with_state(me);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the self-fencing peer endpoint stopped");
    }
}

/// The asking side.
pub struct Asker {
    http: reqwest::Client,
    token: String,
    node: String,
}

impl Asker {
    pub fn new(node: &str, token: &str, timeout: Duration) -> reqwest::Result<Asker> {
        let http = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).no_proxy().build()?;
        Ok(Asker { http, token: token.to_string(), node: node.to_string() })
    }

    /// Asks every peer at once; a peer that does not answer in time, refuses, or answers in a shape
    /// we do not read is silent.
    pub async fn ask_all(&self, peers: &[SocketAddr]) -> Vec<PeerAnswer> {
        futures::future::join_all(peers.iter().map(|p| self.ask(*p))).await
    }

    async fn ask(&self, peer: SocketAddr) -> PeerAnswer {
        let sent =
            self.http.post(format!("http://{peer}{PATH}")).bearer_auth(&self.token).json(&Question { node: self.node.clone() }).send();
        let reply = match sent.await.and_then(|r| r.error_for_status()) {
            Ok(response) => response.json::<Reply>().await,
            Err(error) => Err(error),
        };
        match reply {
            Ok(r) => PeerAnswer::Answered { api_server_reachable: r.api_server_reachable, verdict: r.verdict },
            Err(error) => {
                tracing::debug!(%peer, %error, "a peer did not answer");
                PeerAnswer::Silent
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn only_the_same_token_matches() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"", b"abc"));
    }
}
