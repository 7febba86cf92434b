//! Local Kubernetes API server and kubelet simulator.
