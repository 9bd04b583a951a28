//! Process kubelet and Service proxy for the e2e harness.
