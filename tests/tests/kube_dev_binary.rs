//! The `kube-dev` binary: one ready line with the server URL and kubeconfig path, a kubeconfig
//! that kube-rs accepts, and SIGTERM stopping every process it started before it exits.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const DEADLINE: Duration = Duration::from_secs(30);

const SLEEPER: &str = "#!/bin/sh
echo $$ > \"$APPROLE_INIT_OUT_DIR/pid\"
exec sleep 300
";

fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn binary_prints_ready_line_and_sigterm_stops_pod_processes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("approle-init");
    std::fs::write(&script, SLEEPER).expect("script");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let root = dir.path().join("root");
    let kubeconfig_out = dir.path().join("kubeconfig.yaml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-dev"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .arg("--root-dir")
        .arg(&root)
        .arg("--kubeconfig-out")
        .arg(&kubeconfig_out)
        .arg("--init-binary")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kube-dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("ready in time")
        .expect("read")
        .expect("a line");
    let rest = ready
        .strip_prefix("kube-dev ready: server=https://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected ready line {ready:?}"));
    let (port, kc) = rest.split_once(" kubeconfig=").expect("kubeconfig field");
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{ready}");
    assert_eq!(PathBuf::from(kc), kubeconfig_out);

    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_out).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let pods: Api<Pod> = Api::default_namespaced(client);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper-0"},
        "spec": {
            "initContainers": [{"name": "approle-init", "image": "approle-init:dev",
                "env": [{"name": "APPROLE_INIT_OUT_DIR", "value": "/out"}],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
            "containers": [{"name": "app", "image": "nginx"}],
            "volumes": [{"name": "out", "emptyDir": {}}]
        }
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let uid = created.metadata.uid.expect("uid");
    let pid_file = root
        .join("pods")
        .join(&uid)
        .join("volumes/kubernetes.io~empty-dir/out/pid");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let pid = loop {
        if let Ok(p) = std::fs::read_to_string(&pid_file)
            && !p.trim().is_empty()
        {
            break p.trim().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "init process started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(alive(&pid));

    let kd_pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &kd_pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    assert!(!alive(&pid), "the init process {pid} was stopped");
}
