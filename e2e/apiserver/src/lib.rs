//! Emulated Kubernetes API server for the e2e harness.
