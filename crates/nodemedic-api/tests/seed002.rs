//! Seed 002's own curl examples (scripts/seed002-examples.sh) against the API, on a cluster set up
//! as the seed's walkthrough sets it up: a node labelled into `test-pool` as a GKE TPU node (4 chips,
//! topology 8x8x8), the JobSet `example-jobset`, and for the API reference examples a complete
//! `my-node-pool` slice with the JobSet `my-jobset`.

mod common;

use common::*;
use nodemedic_testenv::{ControlPlane, FakeNode, Options};

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_curl_examples_succeed_unchanged() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options { kwok: true, ..Options::default() }).await?;
    cp.run(|cp| async move {
        install_jobset_crd(cp).await?;
        // `kubectl label node $NODE cloud.google.com/gke-nodepool=test-pool ...-accelerator-count=4 ...-tpu-topology=8x8x8`
        let mut test_node = FakeNode::cpu("kind-control-plane", "test-pool");
        test_node.labels.insert(CHIPS.into(), "4".into());
        test_node.labels.insert(TOPOLOGY.into(), "8x8x8".into());
        let test_nodes = cp.create_nodes(&test_node, 1).await?;
        // A 2x2 slice of 4 chips per node is one node: complete.
        let mut slice = FakeNode::cpu("my-slice", "my-node-pool");
        slice.labels.insert(CHIPS.into(), "4".into());
        slice.labels.insert(TOPOLOGY.into(), "2x2".into());
        let slice_nodes = cp.create_nodes(&slice, 1).await?;
        let (node, slice_node) = (test_nodes.first().cloned().unwrap_or_default(), slice_nodes.first().cloned().unwrap_or_default());
        create_jobset(cp, "default", "example-jobset", &node, &node).await?;
        create_jobset(cp, "default", "my-jobset", &slice_node, &slice_node).await?;
        let api = serve(cp, no_auth(), None).await?;

        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/seed002-examples.sh");
        let kubectl = format!("{} --kubeconfig={}", cp.binaries().path("kubectl").display(), cp.kubeconfig().display());
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .env("NODEMEDIC_API", &api.url)
            .env("KUBECTL", &kubectl)
            .env("NODE", &node)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "the seed's examples failed:\n{stdout}");
        assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 6, "{stdout}");
        assert!(pod_deleted(cp, "default", "example-jobset-workers-0-0").await?, "example-jobset restarted");
        assert!(pod_deleted(cp, "default", "my-jobset-workers-0-0").await?, "my-jobset restarted");
        Ok::<_, anyhow::Error>(())
    })
    .await
}
