//! The controller's command line, as a user meets it.

use std::process::Command;

fn controller() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_approle-controller"));
    c.env_clear();
    c
}

#[test]
fn help_shows_an_env_var_for_every_flag() {
    let out = controller().arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") && !l.starts_with("--help") && !l.starts_with("--version"))
        .collect();
    assert!(
        flags.len() >= 10,
        "expected the full flag list, got:\n{help}"
    );
    for (i, line) in help.lines().enumerate() {
        let t = line.trim_start();
        if !t.starts_with("--") || t.starts_with("--help") || t.starts_with("--version") {
            continue;
        }
        // clap prints the env var within the flag's help block.
        let block: String = help.lines().skip(i).take(8).collect::<Vec<_>>().join("\n");
        assert!(
            block.contains("[env: APPROLE_CONTROLLER_"),
            "no env var shown for {t}"
        );
    }
}

#[test]
fn missing_configuration_is_refused_naming_the_flag() {
    let out = controller().output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--vault-addr"), "{err}");
}

#[test]
fn vault_login_flags_of_another_method_are_refused_naming_the_flags() {
    let out = controller()
        .args([
            "--vault-addr",
            "http://127.0.0.1:1",
            "--vault-auth",
            "kubernetes",
            "--vault-token-file",
            "/nonexistent/token",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--vault-token-file is used only with --vault-auth token-file"),
        "{err}"
    );
}

#[test]
fn client_certificate_without_its_ca_is_refused_naming_the_flags() {
    let out = controller()
        .args([
            "--vault-addr",
            "http://127.0.0.1:1",
            "--vault-token-file",
            "/nonexistent/token",
            "--client-cert",
            "/nonexistent/cert.pem",
            "--client-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--client-cert needs --injector-ca"), "{err}");
}

#[test]
fn unreadable_certificate_file_is_a_clear_error() {
    // A kubeconfig is read, not dialled, at start: the certificate files fail first.
    let dir = std::env::temp_dir().join(format!("approle-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
         current-context: x\n",
    )
    .expect("kubeconfig");
    let out = controller()
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "--vault-addr",
            "http://127.0.0.1:1",
            "--vault-token-file",
            "/nonexistent/token",
            "--injector-ca",
            "/nonexistent/ca.pem",
            "--client-cert",
            "/nonexistent/cert.pem",
            "--client-key",
            "/nonexistent/key.pem",
            "--webhook-cert",
            "/nonexistent/wcert.pem",
            "--webhook-key",
            "/nonexistent/wkey.pem",
        ])
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("injector CA") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}
