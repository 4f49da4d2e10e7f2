//! The command line, run as a user would.

use std::process::Command;

fn nodemedic(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodemedic")).args(args).output().expect("run nodemedic");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nodemedic-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

#[test]
fn simulate_compares_policies_side_by_side() {
    let (ok, out, err) = nodemedic(&["simulate", "--nodes", "128", "--days", "10", "--seed", "3", "--compare"]);
    assert!(ok, "{err}");
    let policies = ["nodemedic", "seed000", "seed003", "seed004", "seed004-npd", "nodemedic-noclass"];
    let header = out.lines().find(|l| policies.iter().all(|p| l.contains(p)));
    assert!(header.is_some(), "every preset and baseline has a column: {out}");
    let row = out.lines().find(|l| l.trim_start().starts_with("faulty node still taking work")).unwrap_or_default();
    assert_eq!(row.split_whitespace().count(), 5 + policies.len(), "the label, then a value per policy: {out}");
    assert!(out.contains("time to quarantine, p95 (min)"));
    // Common random numbers: every policy faces the same real faults.
    let faced = out.lines().find(|l| l.starts_with("real faults faced")).unwrap_or_default();
    let counts: Vec<&str> = faced.split_whitespace().skip(3).collect();
    assert!(counts.len() == policies.len() && counts.iter().all(|c| *c == counts[0]), "{faced}");
}

#[test]
fn simulate_over_seeds_reports_intervals_and_a_sweep_reports_rankings_with_a_model_file() {
    let (ok, out, err) = nodemedic(&["simulate", "--nodes", "32", "--days", "5", "--seeds", "3", "--compare", "seed004", "--threads", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("3 seeds (1..=3)") && out.contains(" ±") && out.contains("paired differences"), "{out}");
    let mut model: serde_json::Value = serde_json::from_str(&fault_model_json()).expect("model JSON");
    model["false_positives"]["per_node_day"] = serde_json::json!(0.0);
    let file = temp_file("model.json", &model.to_string());
    let (ok, out, err) = nodemedic(&[
        "simulate",
        "--nodes",
        "16",
        "--days",
        "3",
        "--seeds",
        "2",
        "--sweep",
        "--compare",
        "seed004",
        "--model",
        file.to_str().unwrap_or_default(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("base model") && out.contains("GSP reboot share = 1") && out.contains("nodemedic vs seed004"), "{out}");
    assert!(out.contains("fault rate x = 1.7") && out.contains("fault rate x = 6.2"), "the second dataset's rates are swept: {out}");
    let bad = temp_file("bad-model.json", "{\"unexpected_per_gpu_day\": -1}");
    let (ok, _, err) = nodemedic(&["simulate", "--nodes", "16", "--days", "1", "--model", bad.to_str().unwrap_or_default()]);
    assert!(!ok && err.contains("is not a fault model"), "{err}");
}

#[test]
fn simulate_calibration_holds_the_model_against_metas_failure_rates_and_follows_a_model_file() {
    let (ok, out, err) = nodemedic(&["simulate", "--calibration"]);
    assert!(ok, "{err}");
    assert!(out.contains("| 16384 | 1.8 h | 3.1 h | 1.7x |") && out.contains("| 1024 | 8.0 h | 49.5 h | 6.2x |"), "{out}");
    assert!(out.contains("Kokolis"), "the source is named: {out}");
    let mut model: serde_json::Value = serde_json::from_str(&fault_model_json()).expect("model JSON");
    let rate = model["unexpected_per_gpu_day"].as_f64().unwrap_or_default();
    model["unexpected_per_gpu_day"] = serde_json::json!(rate * 2.0);
    let file = temp_file("faster-model.json", &model.to_string());
    let (ok, out, err) = nodemedic(&["simulate", "--calibration", "--model", file.to_str().unwrap_or_default()]);
    assert!(ok, "{err}");
    assert!(out.contains("| 1024 | 8.0 h | 24.7 h | 3.1x |"), "twice the rate halves the model's MTBF: {out}");
}

fn fault_model_json() -> String {
    serde_json::to_string(&nodemedic_sim::faults::FaultModel::default()).expect("serialise the default model")
}

#[test]
fn simulate_json_is_machine_readable_and_reproducible() {
    let run = || {
        let (ok, out, err) = nodemedic(&["simulate", "--nodes", "64", "--days", "7", "--seed", "9", "--json"]);
        assert!(ok, "{err}");
        assert!(!out.contains("simulating [") && !err.contains("simulating [") && !err.contains('\r'), "no progress bar: {err}");
        out
    };
    let a = run();
    let v: serde_json::Value = serde_json::from_str(&a).expect("JSON");
    assert_eq!(v[0]["policy"], "nodemedic");
    assert!(v[0]["gpuHoursLost"].is_object() || v[0]["gpu_hours_lost"].is_object(), "{a}");
    assert_eq!(a, run(), "--seed makes runs reproducible");
}

#[test]
fn simulate_accepts_a_policy_file_in_the_comparison() {
    let (ok, yaml, _) = nodemedic(&["preset", "seed000"]);
    assert!(ok);
    let p = temp_file("mine.yaml", &yaml.replace("taintPrefix: ''", "taintPrefix: site.example/"));
    let (ok, out, err) = nodemedic(&["simulate", "--nodes", "64", "--days", "5", "--compare", p.to_str().unwrap_or_default()]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.contains("nodemedic") && l.contains("mine")), "{out}");
}

#[test]
fn validate_names_the_bad_field() {
    let p = temp_file(
        "bad.yaml",
        "rules:\n- name: r\n  condition: {type: Ready, status: \"False\"}\nladder:\n- step: reboot\ngates:\n  minHealthy: \"140%\"\n",
    );
    let (ok, _, err) = nodemedic(&["validate", p.to_str().unwrap_or_default()]);
    assert!(!ok);
    assert!(err.contains("gates.minHealthy: 140% is over 100%"), "{err}");
    let good = temp_file("good.yaml", "rules:\n- name: r\n  condition: {type: Ready, status: \"False\"}\nladder:\n- step: reboot\n");
    let (ok, out, _) = nodemedic(&["validate", good.to_str().unwrap_or_default()]);
    assert!(ok && out.contains("valid"));
}

#[test]
fn plan_previews_a_decision_for_a_snapshot() {
    let nodes = temp_file(
        "nodes.json",
        r#"[{"name":"gpu-1","labels":{"nvidia.com/gpu.count":"8","node-role.kubernetes.io/worker":""},"allocatable":{"nvidia.com/gpu":8},
            "conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","lastTransitionTime":"2026-11-21T10:00:00Z"}]},
           {"name":"gpu-2","labels":{"node-role.kubernetes.io/worker":""},
            "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-11-21T09:00:00Z"}]},
           {"name":"gpu-3","labels":{"node-role.kubernetes.io/worker":""},
            "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-11-21T09:00:00Z"}]}]"#,
    );
    let (ok, out, err) =
        nodemedic(&["plan", "--policy", "seed004", "--nodes", nodes.to_str().unwrap_or_default(), "--at", "2026-11-21T10:06:00Z"]);
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).expect("JSON decision");
    let text = d.to_string();
    assert!(text.contains("RemediationStarted") || text.contains("remediationStarted"), "{out}");
    assert!(d["wouldExecute"].as_array().is_some_and(|a| !a.is_empty()), "seed004 is monitor-only by default: {out}");
}

#[test]
fn unknown_presets_and_bad_snapshots_get_clear_errors() {
    let (ok, _, err) = nodemedic(&["simulate", "--policy", "nope"]);
    assert!(!ok && err.contains("neither a policy file nor a preset"), "{err}");
    let nodes = temp_file("garbage.json", "{not json");
    let (ok, _, err) = nodemedic(&["plan", "--policy", "seed000", "--nodes", nodes.to_str().unwrap_or_default()]);
    assert!(!ok && err.contains("is not a JSON list of node observations"), "{err}");
}

#[test]
fn the_documented_example_policy_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gpu-workers.yaml");
    let (ok, out, err) = nodemedic(&["validate", example]);
    assert!(ok, "{err}");
    assert!(out.contains("valid"));
}

#[test]
fn simulate_trace_prints_a_timeline_of_decisions_with_reasons() {
    let (ok, out, err) = nodemedic(&["simulate", "--nodes", "64", "--days", "10", "--seed", "2", "--trace"]);
    assert!(ok, "{err}");
    assert!(out.contains("timeline: nodemedic"), "{out}");
    assert!(out.contains("RemediationStarted: node unhealthy: rule `"), "{out}");
}

#[test]
fn dev_cluster_serves_fake_gpu_nodes_to_kubectl_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodemedic"))
        .args(["dev-cluster", "--nodes", "3", "--pools", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start dev-cluster");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut kubeconfig, mut kubectl) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("read line");
        if let Some(v) = line.strip_prefix("kubeconfig: ") {
            kubeconfig = v.trim().to_string();
        }
        if let Some(v) = line.strip_prefix("kubectl:    ") {
            kubectl = v.trim().to_string();
        }
        if line.starts_with("ready;") {
            break;
        }
    }
    assert!(!kubeconfig.is_empty() && !kubectl.is_empty(), "dev-cluster printed its kubeconfig and kubectl");
    let out = Command::new(&kubectl)
        .args(["--kubeconfig", &kubeconfig, "get", "nodes", "-L", "cloud.google.com/gke-nodepool", "--no-headers"])
        .output()
        .expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("pool-0") && text.contains("pool-1"), "{text}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "dev-cluster exits cleanly on SIGTERM: {status}");
    assert!(!std::path::Path::new(&kubeconfig).exists(), "its files are deleted");
}

#[test]
fn crds_prints_both_custom_resource_definitions() {
    let (ok, out, err) = nodemedic(&["crds"]);
    assert!(ok, "{err}");
    assert!(out.contains("nodehealthpolicies.nodemedic.io") && out.contains("noderemediations.nodemedic.io"), "{out}");
    assert_eq!(out.matches("---").count(), 2);
}

/// Issue 16 §1: every file the command line reads refuses a repeated key, naming it (serde would
/// keep the last value).
#[test]
fn every_file_the_command_line_reads_refuses_a_repeated_key() {
    let policy = temp_file(
        "dup-policy.json",
        r#"{"rules":[{"name":"r","condition":{"type":"Ready","status":"False"}}],"ladder":[{"step":"reboot"}],"dryRun":true,"dryRun":false}"#,
    );
    let (ok, _, err) = nodemedic(&["validate", policy.to_str().unwrap_or_default()]);
    assert!(!ok && err.contains("duplicate key `dryRun`"), "{err}");

    let nodes = temp_file("dup-nodes.json", r#"[{"name":"gpu-1","name":"gpu-2","conditions":[]}]"#);
    let (ok, _, err) = nodemedic(&["plan", "--policy", "seed000", "--nodes", nodes.to_str().unwrap_or_default()]);
    assert!(!ok && err.contains("duplicate key `name`"), "{err}");

    let mut model = fault_model_json();
    model.insert_str(1, r#""seed_note": 1, "seed_note": 2, "#);
    let json = temp_file("dup-model.json", &model);
    let (ok, _, err) = nodemedic(&["simulate", "--nodes", "16", "--days", "1", "--model", json.to_str().unwrap_or_default()]);
    assert!(!ok && err.contains("duplicate key `seed_note`"), "{err}");

    let good = temp_file("dup-good.yaml", "rules:\n- name: r\n  condition: {type: Ready, status: \"False\"}\nladder:\n- step: reboot\n");
    let kube = temp_file("dup-kubectl.json", r#"{"kind":"List","items":[{"metadata":{"name":"gpu-1","name":"gpu-2"}}]}"#);
    let out = std::os::unix::process::CommandExt::arg0(&mut Command::new(env!("CARGO_BIN_EXE_nodemedic")), "kubectl-medic")
        .args(["plan", good.to_str().unwrap_or_default(), "--nodes-json", kube.to_str().unwrap_or_default()])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run kubectl-medic");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("duplicate key `name` in `items[0].metadata`"), "{err}");
}
