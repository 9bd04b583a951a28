//! Errors of one reconciliation, each in a static category for metrics
//! and as the reason of its Warning Event.

use super::cluster::apply::ApplyError;
use super::cluster::plan::PlanError;
use super::metrics::ErrorCategory;
use super::report::StatusError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the cluster's objects: {0}")]
    Observe(#[source] kube::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(
        "the watches of the cluster's children have not delivered their first list within 30s; check the operator's RBAC (list/watch) and the API server"
    )]
    CachesNotReady,
}

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Observe(_) | Error::CachesNotReady => ErrorCategory::Observe,
            Error::Apply(ApplyError::Api { .. }) => ErrorCategory::Apply,
            Error::Apply(_) | Error::Plan(_) => ErrorCategory::Internal,
            Error::Status(_) => ErrorCategory::Status,
        }
    }

    /// A write refused because another one came first (409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Status(StatusError::Conflict))
    }
}
