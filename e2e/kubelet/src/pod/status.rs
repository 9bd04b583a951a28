//! Kubernetes status objects from the worker's container records.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Conditions the kubelet owns; others (readiness gates, DisruptionTarget)
/// are carried over from the API object.
pub const OWNED_CONDITIONS: [&str; 5] = [
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

pub fn now() -> Time {
    Time(Timestamp::now())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started: Time,
    pub finished: Time,
    pub container_id: String,
}

impl Term {
    pub fn to_k8s(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: Some(self.started.clone()),
            finished_at: Some(self.finished.clone()),
            // `<type>://<id>`, or absent when no process ran (simulated pods,
            // start failures).
            container_id: (!self.container_id.is_empty()).then(|| self.container_id.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtrState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        since: Time,
    },
    Terminated(Term),
}

impl CtrState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        CtrState::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    pub fn to_k8s(&self) -> ContainerState {
        match self {
            CtrState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            CtrState::Running { since } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(since.clone()),
                }),
                ..Default::default()
            },
            CtrState::Terminated(t) => ContainerState {
                terminated: Some(t.to_k8s()),
                ..Default::default()
            },
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn container_status(
    name: &str,
    image: &str,
    state: &CtrState,
    last: Option<&Term>,
    ready: bool,
    started: bool,
    restart_count: i32,
    container_id: Option<&str>,
) -> ContainerStatus {
    ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: image.to_string(),
        container_id: container_id.map(str::to_string),
        ready,
        started: Some(started),
        restart_count,
        state: Some(state.to_k8s()),
        last_state: Some(
            last.map(|t| ContainerState {
                terminated: Some(t.to_k8s()),
                ..Default::default()
            })
            .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

/// The kubelet's own conditions, with transition times kept across updates.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    list: Vec<PodCondition>,
}

impl Conditions {
    pub fn set(
        &mut self,
        type_: &str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
    ) {
        let status = if status { "True" } else { "False" }.to_string();
        match self.list.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = Some(now());
                }
                c.status = status;
                c.reason = reason.map(str::to_string);
                c.message = message;
            }
            None => self.list.push(PodCondition {
                type_: type_.to_string(),
                status,
                reason: reason.map(str::to_string),
                message,
                last_transition_time: Some(now()),
                ..Default::default()
            }),
        }
    }

    pub fn list(&self) -> &[PodCondition] {
        &self.list
    }
}
