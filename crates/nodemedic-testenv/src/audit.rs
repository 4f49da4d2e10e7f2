//! The API server's audit log, for benchmarks that count what a client asks of the API server.

use crate::{TestEnvError, io};
use std::path::Path;

/// Writes the audit policy into `dir` (Metadata for the named users, nothing for anyone else) and
/// returns the API server's audit flags. The `RequestReceived` stage is left out: a watch is logged
/// when it starts (`ResponseStarted`) and again when it ends, every other request once it completes.
pub(crate) fn apiserver_args(dir: &Path, log: &Path, users: &[String]) -> Result<Vec<String>, TestEnvError> {
    let policy = serde_json::json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": users}, {"level": "None"}],
    });
    let path = dir.join("audit-policy.json");
    std::fs::write(&path, policy.to_string()).map_err(io("writing the audit policy"))?;
    Ok(vec![
        format!("--audit-policy-file={}", path.display()),
        format!("--audit-log-path={}", log.display()),
        "--audit-log-format=json".into(),
        "--audit-log-mode=blocking".into(),
        "--audit-log-maxsize=0".into(),
    ])
}
