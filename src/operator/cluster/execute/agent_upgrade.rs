//! Sending the operator's own binary to one agent (see
//! [`crate::operator::cluster::agent_upgrade`]). The agent answers once the
//! binary is installed and checked, just before it re-executes; the next
//! reconciles see its report with the new checksum, then move to the next
//! agent.

use hyper::body::Bytes;
use tracing::{info, warn};

use super::Executor;
use crate::operator::cluster::agent_upgrade::Step;
use crate::operator::report::reason;

impl Executor<'_> {
    pub(super) async fn upgrade_agent(&self, step: &Step) {
        let Some(client) = self.agents else { return };
        let Some(sha256) = self
            .observed
            .operator_build
            .as_ref()
            .and_then(|b| b.sha256.clone())
        else {
            return;
        };
        let pods = if step.pooler {
            &self.observed.pooler_pods
        } else {
            &self.observed.pods
        };
        let Some(uid) = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(step.pod.as_str()))
            .and_then(|p| p.metadata.uid.clone().or_else(|| p.metadata.name.clone()))
        else {
            return;
        };
        // It took the binary a moment ago and is re-executing: its report
        // shows the new build next, not a reason to send it again.
        if self.ctx.binary_sent.recently(&uid) {
            return;
        }
        let endpoint = if step.pooler {
            self.poolers().into_iter().find(|ep| ep.name == step.pod)
        } else {
            self.endpoint(&step.pod)
        };
        let Some(endpoint) = endpoint else { return };
        // Read per step, not kept: the operator's memory limit is small.
        let binary = match tokio::fs::read("/proc/self/exe").await {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                warn!(cluster = %self.model.name, error = %e, "cannot read the operator's own binary");
                return;
            }
        };
        let size = binary.len();
        let started = std::time::Instant::now();
        match client.replace_binary(&endpoint, &sha256, binary).await {
            Ok(()) => {
                self.ctx.binary_sent.sent(&uid);
                info!(cluster = %self.model.name, pod = %step.pod, operation = "agent-upgrade", bytes = size, elapsed_ms = started.elapsed().as_millis() as u64, "agent took the new binary");
                let message = format!(
                    "{} took the operator's binary ({} → {}) and re-executes in place; {} keeps running",
                    step.pod,
                    step.from,
                    crate::contract::agent::short_sha(&sha256),
                    if step.pooler {
                        "PgBouncer"
                    } else {
                        "PostgreSQL"
                    }
                );
                self.event(false, reason::AGENT_UPGRADED, message).await;
            }
            Err(e) => {
                warn!(cluster = %self.model.name, pod = %step.pod, operation = "agent-upgrade", error = %e, "agent did not take the new binary");
                self.event(
                    true,
                    reason::AGENT_UPGRADE_FAILED,
                    format!(
                        "{} did not take the operator's binary: {e}; it keeps running the old one and Capstan tries again",
                        step.pod
                    ),
                )
                .await;
            }
        }
    }
}
