//! Errors of one reconciliation, each in a static category for metrics.

use super::cluster::apply::ApplyError;
use super::cluster::plan::PlanError;
use super::metrics::ErrorCategory;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the cluster's objects: {0}")]
    Observe(#[source] kube::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot write status: {0}")]
    Status(#[source] kube::Error),
    #[error(transparent)]
    Ha(#[from] super::ha::HaError),
}

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Observe(_) => ErrorCategory::Observe,
            Error::Apply(ApplyError::Api { .. }) => ErrorCategory::Apply,
            Error::Apply(_) | Error::Plan(_) => ErrorCategory::Internal,
            Error::Status(_) | Error::Ha(_) => ErrorCategory::Status,
        }
    }

    /// A write refused because another one came first (409).
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::Ha(super::ha::HaError::Conflict) => true,
            Error::Status(kube::Error::Api(s)) => s.code == 409,
            _ => false,
        }
    }
}
