//! Exit codes of `approle-init`.
//!
//! Scripts and kubelet restart policies see these, so they are part of the contract (DESIGN.md
//! "Exit codes of approle-init") and listed in the README. They never change meaning.

/// Why `approle-init` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The token was delivered and both files were written.
    Delivered = 0,
    /// Unexpected internal error (a bug): kubelet restarts the container.
    Internal = 1,
    /// The configuration (flags / env) is missing or invalid; restarting will not help.
    BadConfig = 2,
    /// No valid push arrived before `--timeout`.
    Timeout = 3,
    /// Security refusal: the wrapping token was already used, unknown, or created on another path —
    /// someone else may have intercepted the credential.
    Security = 4,
    /// Vault refused or failed the login (or was unreachable while unwrapping or logging in).
    VaultLogin = 5,
    /// The token files could not be written.
    WriteFailed = 6,
    /// Stopped by SIGTERM or SIGINT before a delivery completed.
    Terminated = 7,
}

impl ExitCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ExitCode; 8] = [
        ExitCode::Delivered,
        ExitCode::Internal,
        ExitCode::BadConfig,
        ExitCode::Timeout,
        ExitCode::Security,
        ExitCode::VaultLogin,
        ExitCode::WriteFailed,
        ExitCode::Terminated,
    ];

    /// The numeric process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// One-line meaning, as printed in the README table.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Delivered => "token delivered, files written",
            ExitCode::Internal => "internal error",
            ExitCode::BadConfig => "bad configuration",
            ExitCode::Timeout => "no valid push before the timeout",
            ExitCode::Security => {
                "security refusal: wrapping token invalid, reused or from the wrong path"
            }
            ExitCode::VaultLogin => "Vault unwrap or login failed",
            ExitCode::WriteFailed => "token files could not be written",
            ExitCode::Terminated => "stopped by SIGTERM/SIGINT before a delivery",
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ExitCode::ALL.len());
        assert_eq!(ExitCode::Delivered.code(), 0);
    }
}
