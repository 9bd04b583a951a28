//! kstatus: the health verdict Flux (and kpt, cli-utils' status poller)
//! gives a Kubernetes object, from `sigs.k8s.io/cli-utils`
//! `pkg/kstatus/status.Compute`. The `kstatus` tool
//! (e2e/k8s-tools/cmd/kstatus, built by `.ci/build-k8s-tools.sh`) reads the
//! object as JSON on stdin and prints one JSON line
//! `{"status": "...", "message": "..."}`. Test infrastructure only.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::E2eError;

/// kstatus' verdict on one object.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct KStatus {
    /// `InProgress`, `Current`, `Failed`, `Terminating`, `NotFound` or
    /// `Unknown`.
    pub status: String,
    pub message: String,
}

/// kstatus' verdict on `object` (as read from the API server, status
/// included). An object kstatus cannot judge (no `apiVersion`/`kind`, a
/// field of the wrong type) is an error with its words.
pub fn kstatus(object: &serde_json::Value) -> Result<KStatus, E2eError> {
    let program = crate::prometheus::tool("kstatus")?;
    let input = serde_json::to_vec(object)
        .map_err(|e| E2eError::Check(format!("kstatus: cannot serialize the object: {e}")))?;
    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| E2eError::Setup(format!("cannot run {}: {e}", program.display())))?;
    // The object is small; the tool reads all of stdin before writing.
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .map_err(|e| E2eError::Check(format!("kstatus: writing its stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| E2eError::Check(format!("kstatus: {e}")))?;
    if !out.status.success() {
        return Err(E2eError::Check(format!(
            "kstatus refused {} {} ({}): {}",
            object["kind"].as_str().unwrap_or("?"),
            object["metadata"]["name"].as_str().unwrap_or("?"),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .map_err(|e| E2eError::Check(format!("kstatus printed {stdout:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs against the built tool when `CAPSTAN_K8S_BIN` has it.
    fn have_tool() -> bool {
        let found = crate::prometheus::tool("kstatus").is_ok();
        if !found {
            eprintln!("SKIP: no kstatus tool (CAPSTAN_K8S_BIN)");
        }
        found
    }

    #[test]
    fn verdicts_of_the_real_library() {
        if !have_tool() {
            return;
        }
        let deployment = |observed: i64, available: i64| {
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "namespace": "n", "generation": 2},
                "spec": {"replicas": 1},
                "status": {"observedGeneration": observed, "replicas": 1, "updatedReplicas": 1,
                           "readyReplicas": available, "availableReplicas": available,
                           "conditions": [{"type": "Available", "status": "True"},
                                          {"type": "Progressing", "status": "True",
                                           "reason": "NewReplicaSetAvailable"}]},
            })
        };
        assert_eq!(kstatus(&deployment(2, 1)).unwrap().status, "Current");
        let stale = kstatus(&deployment(1, 1)).unwrap();
        assert_eq!(stale.status, "InProgress", "{stale:?}");

        // A custom resource: its Ready condition decides.
        let custom = |ready: &str| {
            json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "PostgresCluster",
                   "metadata": {"name": "c", "namespace": "n", "generation": 1},
                   "status": {"observedGeneration": 1,
                              "conditions": [{"type": "Ready", "status": ready, "reason": "R",
                                              "message": "m"}]}})
        };
        assert_eq!(kstatus(&custom("True")).unwrap().status, "Current");
        assert_eq!(kstatus(&custom("False")).unwrap().status, "InProgress");
        let mut deleting = custom("True");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-06T16:00:00Z");
        assert_eq!(kstatus(&deleting).unwrap().status, "Terminating");

        let err = kstatus(&json!({"metadata": {"name": "x"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kstatus refused"), "{err}");
    }
}
