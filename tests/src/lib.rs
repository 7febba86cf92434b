//! approle-testkit: the servers and harness that prove approle-injector on one machine.
//!
//! * [`vault_dev`] — an in-memory, Vault-compatible dev server (binary `vault-dev`).
//! * [`kube_dev`] — a local Kubernetes API server with a kubelet simulator (binary `kube-dev`).
//! * [`harness`] — starts the real binaries as processes on loopback, captures their output, and
//!   offers the helpers the end-to-end tests and the sandbox share.
//! * [`impostor`] — a TLS server on a pod's IP that is not the pod's init container.

pub mod harness;
pub mod impostor;
pub mod kube_dev;
pub mod vault_dev;
