//! `manifests/` against the binaries: every `APPROLE_CONTROLLER_*` variable the manifests set is a
//! flag of the controller (a renamed flag cannot leave a manifest silently ignored), and every
//! object file parses as YAML. Schema validation of the rendered kustomizations is `.ci/check-manifests`;
//! the pod webhook itself is what the harness registers in kube-dev for every end-to-end test
//! (`harness::manifest_pod_webhook`). The policies shipped in `manifests/` are loaded by the real
//! controller and do what their comments say.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use approle_testkit::harness::{
    self, ROLE, Stack, StackOptions, bin_path, manifest_pod_webhook, manifests_dir,
};
use serde_json::json;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("read manifests dir")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// `APPROLE_CONTROLLER_*` names in `text`.
fn controller_env_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "APPROLE_CONTROLLER_";
    text.match_indices(PREFIX)
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_controller_variable_in_the_manifests_is_a_flag() {
    let mut files = Vec::new();
    yaml_files(&manifests_dir(), &mut files);
    assert!(files.len() >= 8, "manifests found: {files:?}");
    let mut used = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read manifest");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let parsed = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc);
            assert!(parsed.is_ok(), "{}: {:?}", file.display(), parsed.err());
        }
        used.extend(controller_env_names(&text));
    }
    assert!(used.len() >= 5, "variables found: {used:?}");

    let help =
        std::process::Command::new(bin_path("approle-controller").expect("controller binary"))
            .arg("--help")
            .output()
            .expect("run approle-controller --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags = controller_env_names(&help);
    let unknown: Vec<_> = used.difference(&flags).collect();
    assert!(
        unknown.is_empty(),
        "manifests set variables the controller does not read: {unknown:?}"
    );
}

#[test]
fn the_pod_webhook_is_for_pods_and_fails_closed() {
    let hook = manifest_pod_webhook("https://127.0.0.1:1/mutate").expect("webhook");
    assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:1/mutate");
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["rules"][0]["resources"][0], "pods");
    assert_eq!(hook["rules"][0]["operations"][0], "CREATE");
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(
        excluded
            .as_array()
            .is_some_and(|v| v.iter().any(|n| n == "kube-system")),
        "{excluded}"
    );
}

fn yaml(path: &str) -> serde_yaml_ng::Value {
    let path = manifests_dir().join(path);
    let text = std::fs::read_to_string(&path).expect("read manifest");
    serde_yaml_ng::from_str(&text).expect("parse manifest")
}

/// The policy of the base ConfigMap, and the one the kind overlay patches in.
fn shipped_policies() -> [(&'static str, String); 2] {
    let base = yaml("base/policy.yaml")["data"]["policy.yaml"]
        .as_str()
        .expect("base policy")
        .to_owned();
    let kind = yaml("kind/kustomization.yaml");
    let patch = kind["patches"]
        .as_sequence()
        .and_then(|all| {
            all.iter()
                .find(|p| p["target"]["kind"].as_str() == Some("ConfigMap"))
        })
        .and_then(|p| p["patch"].as_str())
        .expect("the kind overlay patches the policy ConfigMap");
    let ops: serde_yaml_ng::Value = serde_yaml_ng::from_str(patch).expect("patch");
    let kind = ops[0]["value"].as_str().expect("policy value").to_owned();
    [("base", base), ("kind", kind)]
}

/// Both shipped policies load (a malformed one would refuse with "no authorization policy loaded
/// yet") and deny role `web` in namespace `default`: the base denies everything, the kind
/// overlay allows `web` only in `demo` for service account `web`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_policies_load_and_deny_by_default() {
    for (name, policy) in shipped_policies() {
        let _one = harness::exclusive().await;
        let stack = Stack::start(StackOptions {
            policy: Some(policy),
            ..Default::default()
        })
        .await
        .expect("stack");
        let pod = stack
            .pod("web-0", json!({"vault-approle.io/role": ROLE}))
            .expect("pod");
        let refused = match stack.create(&pod).await {
            Ok(_) => panic!("{name} policy: a pod asking for {ROLE} in default was admitted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            refused.contains("role \"web\" is not allowed in namespace \"default\""),
            "{name} policy: {refused}"
        );
        assert_eq!(stack.secret_id_mints(ROLE), 0, "{name} policy");
    }
}
