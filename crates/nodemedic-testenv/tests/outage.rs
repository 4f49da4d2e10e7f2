//! API-server outages on demand: kube-apiserver killed and started again on the same port keeps
//! the data (etcd runs on); a paused one accepts connections and answers nothing until resumed.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use nodemedic_testenv::{ControlPlane, Options};
use std::time::Duration;

async fn namespace_within(api: &Api<Namespace>, limit: Duration) -> Option<Result<Namespace, kube::Error>> {
    tokio::time::timeout(limit, api.get("kept")).await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_api_server_keeps_its_port_and_data_and_a_paused_one_answers_only_once_resumed() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    let namespaces: Api<Namespace> = Api::all(cp.client());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("kept".into());
    namespaces.create(&PostParams::default(), &ns).await?;
    let server = cp.server().to_string();

    cp.stop_api_server()?;
    let refused = namespace_within(&namespaces, Duration::from_secs(10)).await;
    assert!(matches!(refused, Some(Err(_))), "a stopped API server refuses at once: {refused:?}");
    cp.start_api_server().await?;
    assert_eq!(cp.server(), server);
    let back = namespace_within(&namespaces, Duration::from_secs(10)).await;
    assert!(matches!(back, Some(Ok(_))), "the namespace is still there: {back:?}");

    cp.pause_api_server()?;
    let paused = namespace_within(&namespaces, Duration::from_secs(2)).await;
    assert!(paused.is_none(), "a paused API server does not answer: {paused:?}");
    cp.resume_api_server()?;
    let resumed = namespace_within(&namespaces, Duration::from_secs(10)).await;
    assert!(matches!(resumed, Some(Ok(_))), "it answers once resumed: {resumed:?}");
    cp.check_alive()?;
    Ok(())
}
