//! Smoke test of `approle-bench --quick`: every phase runs to the end against the real binaries
//! and the JSON has the figures the README promises. No timing is asserted: figures come from the
//! benchmark itself, run in release.

use std::process::Command;
use std::time::Duration;

use approle_testkit::harness::{self, bin_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_bench_completes_and_writes_json() {
    harness::install_crypto();
    // kube-dev hands out pod IPs from one range: no other stack may run in this process meanwhile.
    let _one = harness::exclusive().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("bench.json");
    let bench = bin_path("approle-bench").expect("approle-bench is built");
    let mut child = tokio::process::Command::from({
        let mut c = Command::new(bench);
        c.arg("--quick").arg("--json-out").arg(&json_path);
        // The controller's debug lines give the stages of each delivery.
        c.args(["--controller-log-level", "info,approle_controller=debug"]);
        c
    })
    .kill_on_drop(true)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("starting approle-bench");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = tokio::spawn(read_all(stdout));
    let err = tokio::spawn(read_all(stderr));
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("approle-bench --quick stops by itself")
        .expect("waiting for approle-bench");
    let out = out.await.expect("stdout reader");
    let err = err.await.expect("stderr reader");
    assert!(
        status.success(),
        "approle-bench failed: {status}\n{out}\n{err}"
    );
    assert!(out.contains("TARGET"), "no table printed:\n{out}");

    let text = std::fs::read_to_string(&json_path).expect("JSON written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let bursts = v["bursts"].as_array().expect("bursts");
    assert_eq!(bursts.len(), 2, "{v}");
    for b in bursts {
        assert_eq!(b["exactly_once"], true, "{b}");
        assert_eq!(b["delivered"], b["pods"], "{b}");
        assert_eq!(b["live_secret_ids_after"], 0, "{b}");
        for key in [
            "deliveries_per_s",
            "floor_deliveries_per_s",
            "init_to_token_ms",
            "floor_latency_ms",
            "latency_floor_ratio",
            "controller_cpu_s",
            "controller_peak_rss_mib",
            "vault_requests_per_delivery",
        ] {
            assert!(!b[key].is_null(), "burst lacks {key}: {b}");
        }
        assert!(b["init_to_token_ms"]["p99"].as_f64().is_some(), "{b}");
        // Every pod's delivery split at the controller's lines (these fail if a line the bench
        // reads is reworded).
        let stages = b["listening_to_token_stages_ms"]
            .as_object()
            .expect("stages");
        let names: Vec<&str> = stages.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "identity_shown",
                "identity_verified",
                "minted",
                "seen_running",
                "slot",
                "token_written"
            ],
            "{b}"
        );
        for (name, p) in stages {
            assert_eq!(p["samples"], b["pods"], "stage {name}: {b}");
        }
        let queue = &b["runnable_tasks"];
        assert!(queue["samples"].as_u64().is_some_and(|n| n > 0), "{b}");
        assert!(
            queue["mean"].as_f64().is_some() && queue["p95"].as_u64().is_some(),
            "{b}"
        );
    }
    for key in ["idle_rss_mib", "rss_with_cached_pods_mib", "cached_pods"] {
        assert!(
            v["controller"][key].as_f64().is_some(),
            "controller lacks {key}: {v}"
        );
    }
    for key in [
        "start_to_listening_ms",
        "floor_start_to_listening_ms",
        "peak_rss_mib",
        "binary_bytes",
    ] {
        assert!(!v["init"][key].is_null(), "init lacks {key}: {v}");
    }
    // The debug binary the tests built is dynamic, a `cargo rustc … crt-static` one static:
    // either way the bench read its program headers.
    let linkage = v["init"]["linkage"].as_str().unwrap_or_default();
    assert!(
        ["static", "dynamic"].contains(&linkage),
        "linkage {linkage:?}: {v}"
    );
    assert!(v["floor_alone_ms"]["p50"].as_f64().is_some(), "{v}");
    assert!(!v["targets"].as_array().expect("targets").is_empty());
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = String::new();
    let _ = r.read_to_string(&mut s).await;
    s
}
