//! The resources kube-dev serves and the discovery documents (`/api`, `/apis`, `/api/v1`,
//! `/apis/<group>/<version>`) built from them.
//!
//! Each [`ResourceDef`] names its storage: core/v1 `events` and events.k8s.io/v1 `events` share one
//! store (objects are kept in the events.k8s.io shape and converted on the way out), as the real
//! API server does.

use serde_json::{Value, json};

use super::status::Target;

/// One served resource.
#[derive(Debug, Clone, Copy)]
pub struct ResourceDef {
    /// API group (`""` for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural name used in URLs.
    pub resource: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Verbs advertised in discovery.
    pub verbs: &'static [&'static str],
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Subresources served (`status`, `log`, `token`).
    pub subresources: &'static [&'static str],
    /// Storage key (shared between resources that are one object in two shapes).
    pub storage: &'static str,
    /// Served only for POST (TokenReview), never stored.
    pub create_only: bool,
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    /// `v1` or `coordination.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// For error messages and `details`.
    pub fn target(&self) -> Target<'static> {
        Target {
            group: self.group,
            resource: self.resource,
            kind: self.kind,
        }
    }

    /// `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

/// Everything kube-dev serves.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        resource: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        short_names: &["ns"],
        subresources: &["status"],
        storage: "namespaces",
        create_only: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        verbs: CRUD,
        short_names: &["po"],
        subresources: &["status", "log"],
        storage: "pods",
        create_only: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: CRUD,
        short_names: &["ev"],
        subresources: &[],
        storage: "events",
        create_only: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        verbs: CRUD,
        short_names: &[],
        subresources: &[],
        storage: "secrets",
        create_only: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        verbs: CRUD,
        short_names: &["cm"],
        subresources: &[],
        storage: "configmaps",
        create_only: false,
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        verbs: CRUD,
        short_names: &["sa"],
        subresources: &["token"],
        storage: "serviceaccounts",
        create_only: false,
    },
    ResourceDef {
        group: "events.k8s.io",
        version: "v1",
        resource: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: CRUD,
        short_names: &["ev"],
        subresources: &[],
        storage: "events",
        create_only: false,
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        verbs: CRUD,
        short_names: &[],
        subresources: &[],
        storage: "leases",
        create_only: false,
    },
    ResourceDef {
        group: "admissionregistration.k8s.io",
        version: "v1",
        resource: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
        verbs: CRUD,
        short_names: &[],
        subresources: &[],
        storage: "mutatingwebhookconfigurations",
        create_only: false,
    },
    ResourceDef {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "tokenreviews",
        singular: "tokenreview",
        kind: "TokenReview",
        namespaced: false,
        verbs: &["create"],
        short_names: &[],
        subresources: &[],
        storage: "tokenreviews",
        create_only: true,
    },
];

/// The resource for a group/version/plural, if served.
pub fn find(group: &str, version: &str, resource: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

/// Whether a group/version is served at all.
pub fn group_version_served(group: &str, version: &str) -> bool {
    RESOURCES
        .iter()
        .any(|r| r.group == group && r.version == version)
}

/// The `pods` resource definition.
pub fn pods() -> &'static ResourceDef {
    find("", "v1", "pods").expect("pods are always served")
}

/// The core `namespaces` resource definition.
pub fn namespaces() -> &'static ResourceDef {
    find("", "v1", "namespaces").expect("namespaces are always served")
}

/// `/version`.
pub fn version_doc() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0+kube-dev",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions_doc(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({
        "name": group,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// `/apis`.
pub fn group_list_doc() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().map(|(g, v)| group_doc(g, v)).collect::<Vec<_>>(),
    })
}

/// `/apis/<group>`.
pub fn group_single_doc(group: &str) -> Option<Value> {
    groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .map(|(g, v)| {
            let mut d = group_doc(g, v);
            d["kind"] = json!("APIGroup");
            d["apiVersion"] = json!("v1");
            d
        })
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list_doc(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.resource,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if r.resource == "pods" {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        for sub in r.subresources {
            let (kind, verbs): (&str, &[&str]) = match *sub {
                "status" => (r.kind, &["get", "patch", "update"]),
                "log" => (r.kind, &["get"]),
                "token" => ("TokenRequest", &["create"]),
                _ => (r.kind, &["get"]),
            };
            let mut e = json!({
                "name": format!("{}/{}", r.resource, sub),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if *sub == "token" {
                e["group"] = json!("authentication.k8s.io");
                e["version"] = json!("v1");
            }
            resources.push(e);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn core_and_events_groups_are_discoverable() {
        let core = resource_list_doc("", "v1");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods"));
        assert!(names.contains(&"pods/log"));
        let groups = group_list_doc();
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "events.k8s.io")
        );
    }
}
