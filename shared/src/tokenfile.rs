//! The files the init container writes: `token` (the client token, no newline) and `token.json`.
//!
//! Each is written atomically — a temp file in the same directory, fsync, rename, fsync of the
//! directory — so an app container reading the volume sees either no file or a whole one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::secret::ClientToken;

/// File holding the bare token.
pub const TOKEN_FILE: &str = "token";
/// File holding the token and its metadata as JSON.
pub const TOKEN_JSON_FILE: &str = "token.json";
/// Default mode: owner and group may read, nobody may write (the app reads through fsGroup).
pub const DEFAULT_MODE: u32 = 0o440;

/// Contents of `token.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenFile {
    /// The Vault token.
    pub client_token: ClientToken,
    /// Its accessor.
    pub accessor: String,
    /// Policies attached to it.
    pub policies: Vec<String>,
    /// TTL in seconds at login.
    pub lease_duration: u64,
    /// Whether it can be renewed.
    pub renewable: bool,
    /// Expiry time, RFC 3339.
    pub expires_at: String,
    /// Vault address the token belongs to.
    pub vault_addr: String,
    /// AppRole it came from.
    pub role: String,
    /// Pod it was delivered to.
    pub pod_uid: String,
}

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A filesystem call failed.
    #[error("writing {file} in {dir}: {source}")]
    Io {
        /// The file being written.
        file: String,
        /// The output directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Serializing `token.json` failed (cannot happen with these types).
    #[error("encoding token.json: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Writes `token` and then `token.json` into `dir`, each atomically with `mode`.
pub fn write_token_files(dir: &Path, file: &TokenFile, mode: u32) -> Result<(), WriteError> {
    let json = serde_json::to_vec_pretty(file)?;
    write_atomic(dir, TOKEN_FILE, file.client_token.expose().as_bytes(), mode)?;
    write_atomic(dir, TOKEN_JSON_FILE, &json, mode)
}

/// Writes one file atomically: temp file in `dir`, fsync, chmod, rename over `name`, fsync `dir`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let io = |source: std::io::Error| WriteError::Io {
        file: name.to_owned(),
        dir: dir.display().to_string(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).map_err(io)?;
    tmp.persist(dir.join(name)).map_err(|e| io(e.error))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_both_files_with_the_mode_and_no_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = TokenFile {
            client_token: ClientToken::new("hvs.tok"),
            accessor: "acc".into(),
            policies: vec!["default".into()],
            lease_duration: 60,
            renewable: true,
            expires_at: "2026-01-01T00:00:00Z".into(),
            vault_addr: "http://127.0.0.1:8200".into(),
            role: "web".into(),
            pod_uid: "u1".into(),
        };
        write_token_files(dir.path(), &file, DEFAULT_MODE).expect("write");
        let token = fs::read_to_string(dir.path().join(TOKEN_FILE)).expect("token");
        assert_eq!(token, "hvs.tok");
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(TOKEN_JSON_FILE)).expect("json"))
                .expect("parse");
        assert_eq!(json["client_token"], "hvs.tok");
        assert_eq!(json["pod_uid"], "u1");
        for name in [TOKEN_FILE, TOKEN_JSON_FILE] {
            let mode = fs::metadata(dir.path().join(name))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o440, "{name}");
        }
        let entries: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(entries.len(), 2, "no temp files left behind");
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_file() {
        let err = write_atomic(Path::new("/nonexistent/dir"), TOKEN_FILE, b"x", 0o440)
            .expect_err("fails");
        assert!(err.to_string().contains("token"), "{err}");
    }
}
