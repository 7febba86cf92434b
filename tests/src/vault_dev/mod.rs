//! Vault-compatible dev server (see ../shared/vault-api.md).
