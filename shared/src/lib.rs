//! approle-shared: what the controller and the init container agree on.
//!
//! ```text
//!   controller                                       init container
//!   ──────────                                       ──────────────
//!   annotations::InjectionSpec::from_annotations     exit::ExitCode
//!   vault::Vault::generate_wrapped_secret_id  ──push::PushRequest──▶  vault::Vault::wrapping_lookup
//!   tls::push_client_config (mTLS client)            tls::receiver_server_config (mTLS server)
//!                                             ◀──push::PushResponse── vault::Vault::unwrap_secret_id
//!                                                    vault::Vault::approle_login
//!                                                    tokenfile::write_token_files
//! ```
//!
//! Nothing here talks to Kubernetes or owns a runtime: it is types, parsing, the Vault client layer
//! and TLS configuration. Every credential is a [`secret`] newtype whose `Debug` is redacted, so a
//! token can reach a log line only by an explicit `expose_secret()`.

#![forbid(unsafe_code)]

pub mod annotations;
pub mod exit;
pub mod inject;
pub mod push;
pub mod secret;
pub mod telemetry;
pub mod tls;
pub mod tokenfile;
pub mod vault;

/// Label the system puts on every pod it manages (and, from the webhook issue on, watches by).
pub const MANAGED_LABEL: &str = "vault-approle.io/managed";
/// Name of the injected init container; the controller pushes only to pods that run it.
pub const INIT_CONTAINER_NAME: &str = "vault-approle-init";
/// Default AppRole mount path in Vault.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
