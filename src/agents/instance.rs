//! The instance manager API as the operator calls it.

use std::time::Duration;

use super::client::{AgentClient, ClientError, Endpoint};
use crate::contract::backup::{BackupJob, BackupRequest, SentinelRequest};
use crate::contract::instance::{
    DemoteRequest, DemoteResult, InstanceReport, PromoteRequest, PromoteResult,
};

/// Promotion takes the Lease, promotes and waits for the first accepted
/// write; a clean demotion waits for a checkpoint and a stop.
const ROLE_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentClient {
    /// `GET /status`.
    pub async fn instance_status(&self, ep: &Endpoint) -> Result<InstanceReport, ClientError> {
        self.get(ep, "/status").await
    }

    /// `POST /promote`: returns once the instance accepts writes.
    pub async fn promote(
        &self,
        ep: &Endpoint,
        request: &PromoteRequest,
    ) -> Result<PromoteResult, ClientError> {
        self.post(ep, "/promote", request, ROLE_CHANGE_TIMEOUT)
            .await
    }

    /// `POST /demote`: a clean shutdown, then following `new_primary`.
    pub async fn demote(
        &self,
        ep: &Endpoint,
        request: &DemoteRequest,
    ) -> Result<DemoteResult, ClientError> {
        self.post(ep, "/demote", request, ROLE_CHANGE_TIMEOUT).await
    }

    /// `POST /backup`: starts the backup on the primary and returns its job
    /// (`Running`) at once, or the job of the same `backup` asked for
    /// before; 409 while another backup runs or on a replica. Follow the
    /// job in `InstanceReport.backup`.
    pub async fn backup(
        &self,
        ep: &Endpoint,
        request: &BackupRequest,
    ) -> Result<BackupJob, ClientError> {
        self.post(ep, "/backup", request, self.timeout()).await
    }

    /// `POST /sentinel`: the primary writes the sentinel row of a backup
    /// a standby is about to take; 409 on a replica.
    pub async fn sentinel(
        &self,
        ep: &Endpoint,
        request: &SentinelRequest,
    ) -> Result<SentinelRequest, ClientError> {
        self.post(ep, "/sentinel", request, self.timeout()).await
    }

    /// `POST /prepare-stop`: a CHECKPOINT within `timeout`, and the next
    /// shutdown (within two minutes) without the smart phase.
    pub async fn prepare_stop(&self, ep: &Endpoint, timeout: Duration) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post(ep, "/prepare-stop", &serde_json::json!({}), timeout)
            .await?;
        Ok(())
    }

    /// `POST /inventory`: the instance reads what the repositories hold
    /// again at its next tick.
    pub async fn inventory_changed(&self, ep: &Endpoint) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post(ep, "/inventory", &serde_json::json!({}), self.timeout())
            .await?;
        Ok(())
    }
}
