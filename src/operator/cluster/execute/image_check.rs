//! The image check's only write: its result in `status.imageCheck` (the
//! pod is created by `apply` and deleted by the next plan, once the result
//! is recorded), with an Event.

use serde_json::json;
use tracing::{info, warn};

use super::{Executor, Next, now_rfc3339, replacing};
use crate::api::ImageCheckStatus;
use crate::operator::cluster::image_check::Step;
use crate::operator::report::{self, StatusError, reason};

impl Executor<'_> {
    pub(super) async fn check_image(&self, step: &Step) -> Result<Next, StatusError> {
        let cluster = &self.model.name;
        let Step::Record {
            candidate,
            passed,
            message,
            rehearsal,
            rehearsal_failed,
        } = step
        else {
            if let Step::Start(c) = step {
                info!(%cluster, operation = "image-check", image = %c.image, major = c.major, upgrade_from = ?c.upgrade_from.as_ref().map(|u| u.major), "trying a new PostgreSQL image before any instance gets it");
            }
            return Ok(Next::Continue);
        };
        let record = ImageCheckStatus {
            image: candidate.image.clone(),
            major: candidate.major,
            passed: *passed,
            message: message.clone(),
            generation: self.cluster.metadata.generation.unwrap_or_default(),
            checked_at: now_rfc3339(),
            upgrade_from: candidate.upgrade_from.as_ref().map(|u| u.major),
            link_bytes: rehearsal
                .as_ref()
                .map(|r| i64::try_from(r.link_bytes).unwrap_or(i64::MAX)),
            rehearsal_failed: *rehearsal_failed,
        };
        report::patch_status_if(
            self.ctx,
            self.cluster,
            &self.resource_version(),
            // Fields of an earlier check (an upgrade's) are not kept.
            json!({"imageCheck": replacing(&record, self.cluster.status.as_ref().and_then(|s| s.image_check.as_ref()))}),
            "imageCheck",
        )
        .await?;
        if *passed {
            info!(%cluster, operation = "image-check", image = %candidate.image, %message, "image passed its check");
            let next = if candidate.upgrade_from.is_some() {
                "the upgrade starts next"
            } else {
                "the instances get it next"
            };
            self.event(
                false,
                reason::IMAGE_CHECKED,
                format!("image {} runs {message}; {next}", candidate.image),
            )
            .await;
        } else {
            warn!(%cluster, operation = "image-check", image = %candidate.image, %message, "image failed its check");
            self.event(
                true,
                reason::IMAGE_CHECK_FAILED,
                format!(
                    "image {} cannot be used for PostgreSQL {}: {message}; no instance was changed",
                    candidate.image, candidate.major
                ),
            )
            .await;
        }
        Ok(Next::Restart)
    }
}
