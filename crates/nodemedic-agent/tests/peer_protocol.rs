//! The self-fencing peer protocol against hostile and broken peers: a wrong token, a peer that accepts
//! the connection and never answers, one that answers garbage, one that is not there. Each counts as
//! silent, within the question's deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nodemedic_agent::selffence::peer::{Answerer, Asker, serve};
use nodemedic_core::selffence::{PeerAnswer, PeerVerdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_millis(500);

/// A peer agent that does not reach the API server (its client points nowhere and is never used).
async fn answering_peer(token: &str) -> anyhow::Result<SocketAddr> {
    let config = kube::Config::new("http://127.0.0.1:1".parse()?);
    let me = Answerer {
        node: "peer".into(),
        token: token.into(),
        api_ok: Arc::new(AtomicBool::new(false)),
        client: kube::Client::try_from(config)?,
        lookup_timeout: DEADLINE,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(me)));
    Ok(addr)
}

/// Accepts connections and runs `reply` on each (or holds it open for ever when None).
async fn raw_peer(reply: Option<&'static [u8]>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            if let Some(reply) = reply {
                let _ = conn.write_all(reply).await;
            }
            held.push(conn);
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_peer_without_the_api_server_answers_so_and_vouches_for_nobody() -> anyhow::Result<()> {
    let peer = answering_peer("right").await?;
    let asker = Asker::new("me", "right", DEADLINE)?;
    let answers = asker.ask_all(&[peer]).await;
    assert_eq!(answers, [PeerAnswer::Answered { api_server_reachable: false, verdict: PeerVerdict::Unknown }]);
    Ok(())
}

#[tokio::test]
async fn a_question_with_the_wrong_token_is_refused_and_heard_as_silence() -> anyhow::Result<()> {
    let peer = answering_peer("right").await?;
    let answers = Asker::new("me", "wrong", DEADLINE)?.ask_all(&[peer]).await;
    assert_eq!(answers, [PeerAnswer::Silent]);
    // Without any token at all, the endpoint says 401.
    let status = reqwest::Client::new()
        .post(format!("http://{peer}{}", nodemedic_agent::selffence::peer::PATH))
        .json(&serde_json::json!({"node": "me"}))
        .send()
        .await?
        .status();
    assert_eq!(status.as_u16(), 401);
    Ok(())
}

#[tokio::test]
async fn a_peer_that_never_answers_is_silent_by_the_deadline_and_does_not_hold_up_the_others() -> anyhow::Result<()> {
    let mute = raw_peer(None).await?;
    let garbage = raw_peer(Some(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"api\":")).await?;
    let not_json = raw_peer(Some(b"\xff\xfe not http at all\r\n\r\n")).await?;
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let good = answering_peer("right").await?;
    let asker = Asker::new("me", "right", DEADLINE)?;
    let started = Instant::now();
    let answers = asker.ask_all(&[mute, garbage, not_json, gone, good]).await;
    assert!(started.elapsed() < DEADLINE * 4, "the round took {:?}", started.elapsed());
    assert_eq!(answers[..4], [PeerAnswer::Silent; 4]);
    assert!(matches!(answers[4], PeerAnswer::Answered { .. }), "{answers:?}");
    Ok(())
}
