//! How `approle-init` starts and ends without a delivery: bad configuration (exit 2), no push
//! before the timeout (exit 3), SIGTERM (exit 7). Configuration goes through the `APPROLE_INIT_*`
//! environment here, the way the injector sets it; the push tests use flags.

mod common;

use std::os::unix::fs::PermissionsExt;

use approle_shared::exit::ExitCode;
use common::{Init, Pki, init_crypto};

/// Environment of a valid configuration listening on `ip`, with `out_dir`.
fn env(pki: &Pki, ip: &str, out_dir: &str) -> Vec<(&'static str, String)> {
    vec![
        ("APPROLE_INIT_LISTEN", format!("{ip}:0")),
        ("APPROLE_INIT_ROLE", "web".into()),
        ("APPROLE_INIT_POD_UID", "0b7a2c7e-uid".into()),
        // Nothing listens there; these tests never reach Vault.
        ("APPROLE_INIT_VAULT_ADDR", "http://127.0.0.1:9".into()),
        ("APPROLE_INIT_CLIENT_CA_PEM", pki.ca.cert_pem().to_owned()),
        ("APPROLE_INIT_OUT_DIR", out_dir.to_owned()),
    ]
}

fn with(
    mut env: Vec<(&'static str, String)>,
    key: &'static str,
    value: Option<&str>,
) -> Vec<(&'static str, String)> {
    env.retain(|(k, _)| *k != key);
    if let Some(value) = value {
        env.push((key, value.to_owned()));
    }
    env
}

/// A directory this process cannot create files in. As root, permissions do not stop us, so
/// then we fall back to a directory of a read-only filesystem.
fn unwritable_dir(parent: &std::path::Path) -> String {
    let dir = parent.join("read-only");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    if std::fs::write(dir.join("probe"), b"x").is_err() {
        return dir.display().to_string();
    }
    std::fs::remove_file(dir.join("probe")).expect("remove probe");
    "/proc".to_owned()
}

#[tokio::test]
async fn bad_configuration_exits_2_with_a_line_naming_the_flag() {
    init_crypto();
    let pki = Pki::new("injector CA");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("out");
    let a_file = tmp.path().join("a-file");
    std::fs::write(&a_file, b"x").expect("file");
    let good = env(&pki, "127.0.77.20", &out.display().to_string());
    let unwritable = unwritable_dir(tmp.path());
    let missing = tmp.path().join("missing").display().to_string();
    let a_file = a_file.display().to_string();

    type Case<'a> = (&'a str, &'static str, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("role missing", "APPROLE_INIT_ROLE", None, "--role"),
        (
            "role invalid",
            "APPROLE_INIT_ROLE",
            Some("web/../admin"),
            "--role",
        ),
        ("pod uid missing", "APPROLE_INIT_POD_UID", None, "--pod-uid"),
        (
            "Vault address missing",
            "APPROLE_INIT_VAULT_ADDR",
            None,
            "--vault-addr",
        ),
        (
            "Vault address without scheme",
            "APPROLE_INIT_VAULT_ADDR",
            Some("vault:8200"),
            "--vault-addr",
        ),
        (
            "client CA garbage",
            "APPROLE_INIT_CLIENT_CA_PEM",
            Some("nope"),
            "--client-ca-pem",
        ),
        (
            "Vault CA garbage",
            "APPROLE_INIT_VAULT_CACERT_PEM",
            Some("nope"),
            "--vault-cacert-pem",
        ),
        (
            "out dir missing",
            "APPROLE_INIT_OUT_DIR",
            Some(&missing),
            "--out-dir",
        ),
        (
            "out dir is a file",
            "APPROLE_INIT_OUT_DIR",
            Some(&a_file),
            "--out-dir",
        ),
        (
            "out dir unwritable",
            "APPROLE_INIT_OUT_DIR",
            Some(&unwritable),
            "--out-dir",
        ),
        (
            "timeout garbage",
            "APPROLE_INIT_TIMEOUT",
            Some("later"),
            "--timeout",
        ),
        (
            "listen garbage",
            "APPROLE_INIT_LISTEN",
            Some("everywhere"),
            "--listen",
        ),
        (
            "file mode not octal",
            "APPROLE_INIT_FILE_MODE",
            Some("rw"),
            "--file-mode",
        ),
        (
            "log filter garbage",
            "APPROLE_INIT_LOG_LEVEL",
            Some("x=loud"),
            "--log-level",
        ),
    ];
    for (name, key, value, flag) in cases {
        let mut init = Init::spawn(&[], &with(good.clone(), key, value));
        let (code, output) = init.exit().await;
        assert_eq!(
            code,
            i32::from(ExitCode::BadConfig.code()),
            "{name}: exit code; output:\n{output}"
        );
        let line = output
            .lines()
            .find(|l| l.contains("bad configuration"))
            .unwrap_or_else(|| panic!("{name}: no 'bad configuration' line in\n{output}"));
        assert!(line.contains(flag), "{name}: {flag} in {line}");
        assert!(
            !output.contains("listening on"),
            "{name}: checked before listening"
        );
    }
}

#[tokio::test]
async fn without_a_push_it_exits_3_at_the_timeout() {
    init_crypto();
    let pki = Pki::new("injector CA");
    let out = tempfile::tempdir().expect("tempdir");
    let env = with(
        env(&pki, "127.0.77.21", &out.path().display().to_string()),
        "APPROLE_INIT_TIMEOUT",
        Some("1s"),
    );
    let mut init = Init::spawn(&[], &env);
    init.listening().await;
    let (code, output) = init.exit().await;
    assert_eq!(code, i32::from(ExitCode::Timeout.code()), "{output}");
    assert!(
        output.contains("no valid push arrived within 1s"),
        "{output}"
    );
    assert_eq!(std::fs::read_dir(out.path()).expect("ls").count(), 0);
}

#[tokio::test]
async fn sigterm_before_a_push_exits_7() {
    init_crypto();
    let pki = Pki::new("injector CA");
    let out = tempfile::tempdir().expect("tempdir");
    let env = env(&pki, "127.0.77.22", &out.path().display().to_string());
    let mut init = Init::spawn(&["--log-format".into(), "json".into()], &env);
    init.listening().await;
    init.sigterm();
    let (code, output) = init.exit().await;
    assert_eq!(code, i32::from(ExitCode::Terminated.code()), "{output}");
    let last: serde_json::Value = serde_json::from_str(output.lines().last().expect("a line"))
        .expect("--log-format json prints JSON lines");
    assert_eq!(last["exit"], 7, "{last}");
}

#[tokio::test]
async fn help_names_every_environment_variable() {
    let mut init = Init::spawn(&["--help".into()], &[]);
    let (code, output) = init.exit().await;
    assert_eq!(code, 0, "{output}");
    for var in [
        "APPROLE_INIT_LISTEN",
        "APPROLE_INIT_ROLE",
        "APPROLE_INIT_APPROLE_MOUNT",
        "APPROLE_INIT_POD_UID",
        "APPROLE_INIT_VAULT_ADDR",
        "APPROLE_INIT_VAULT_CACERT_PEM",
        "APPROLE_INIT_CLIENT_CA_PEM",
        "APPROLE_INIT_OUT_DIR",
        "APPROLE_INIT_TIMEOUT",
        "APPROLE_INIT_SOURCE_ADDRESS",
        "APPROLE_INIT_FILE_MODE",
        "APPROLE_INIT_VAULT_TIMEOUT",
        "APPROLE_INIT_LOG_LEVEL",
        "APPROLE_INIT_LOG_FORMAT",
    ] {
        assert!(output.contains(var), "{var} in --help:\n{output}");
    }
}
