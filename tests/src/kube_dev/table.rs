//! Server-side printing: `meta.k8s.io/v1` `Table` responses for clients that ask with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` (kubectl get, also for watches),
//! with the columns of the real printers for the kinds kube-dev serves.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::resources::ResourceDef;
use super::util::{name_of, str_at};

fn col(name: &str, ty: &str, format: &str, priority: i32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(ts: &str) -> String {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn pod_status_reason(pod: &Value) -> String {
    let mut reason = str_at(pod, &["status", "phase"]).to_string();
    if !str_at(pod, &["status", "reason"]).is_empty() {
        reason = str_at(pod, &["status", "reason"]).to_string();
    }
    let inits = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let n_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, s) in inits.iter().enumerate() {
        if let Some(t) = s.pointer("/state/terminated") {
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            let r = str_at(t, &["reason"]);
            reason = if r.is_empty() {
                format!("Init:ExitCode:{}", t.get("exitCode").unwrap_or(&json!(0)))
            } else {
                format!("Init:{r}")
            };
            initializing = true;
        } else if let Some(w) = s.pointer("/state/waiting")
            && !str_at(w, &["reason"]).is_empty()
            && str_at(w, &["reason"]) != "PodInitializing"
        {
            reason = format!("Init:{}", str_at(w, &["reason"]));
            initializing = true;
        } else {
            reason = format!("Init:{i}/{n_init}");
            initializing = true;
        }
        break;
    }
    if !initializing {
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut has_running = false;
        for s in statuses.iter().rev() {
            if let Some(w) = s.pointer("/state/waiting")
                && !str_at(w, &["reason"]).is_empty()
            {
                reason = str_at(w, &["reason"]).to_string();
            } else if let Some(t) = s.pointer("/state/terminated") {
                let r = str_at(t, &["reason"]);
                reason = if r.is_empty() {
                    format!("ExitCode:{}", t.get("exitCode").unwrap_or(&json!(0)))
                } else {
                    r.to_string()
                };
            } else if s.get("ready").and_then(Value::as_bool) == Some(true)
                && s.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if !str_at(pod, &["metadata", "deletionTimestamp"]).is_empty() {
        reason = "Terminating".into();
    }
    reason
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .chain(
            pod.pointer("/status/initContainerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
        .sum();
    let ip = str_at(pod, &["status", "podIP"]);
    let node = str_at(pod, &["spec", "nodeName"]);
    vec![
        json!(name_of(pod)),
        json!(format!("{ready}/{total}")),
        json!(pod_status_reason(pod)),
        json!(restarts.to_string()),
        json!(age(str_at(pod, &["metadata", "creationTimestamp"]))),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn columns_and_cells(def: &ResourceDef, items: &[Value]) -> (Vec<Value>, Vec<Vec<Value>>) {
    let name_col = col("Name", "string", "name", 0);
    let age_col = col("Age", "string", "", 0);
    let created = |o: &Value| json!(age(str_at(o, &["metadata", "creationTimestamp"])));
    match (def.group, def.resource) {
        ("", "pods") => (
            vec![
                name_col,
                col("Ready", "string", "", 0),
                col("Status", "string", "", 0),
                col("Restarts", "string", "", 0),
                age_col,
                col("IP", "string", "", 1),
                col("Node", "string", "", 1),
                col("Nominated Node", "string", "", 1),
                col("Readiness Gates", "string", "", 1),
            ],
            items.iter().map(pod_cells).collect(),
        ),
        ("", "namespaces") => (
            vec![name_col, col("Status", "string", "", 0), age_col],
            items
                .iter()
                .map(|o| {
                    vec![
                        json!(name_of(o)),
                        json!(str_at(o, &["status", "phase"])),
                        created(o),
                    ]
                })
                .collect(),
        ),
        ("", "events") => (
            vec![
                col("Last Seen", "string", "", 0),
                col("Type", "string", "", 0),
                col("Reason", "string", "", 0),
                col("Object", "string", "", 0),
                col("Message", "string", "", 0),
            ],
            items
                .iter()
                .map(|o| {
                    let last = [
                        str_at(o, &["series", "lastObservedTime"]),
                        str_at(o, &["lastTimestamp"]),
                        str_at(o, &["eventTime"]),
                    ]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or("");
                    vec![
                        json!(age(last)),
                        json!(str_at(o, &["type"])),
                        json!(str_at(o, &["reason"])),
                        json!(format!(
                            "{}/{}",
                            str_at(o, &["involvedObject", "kind"]).to_lowercase(),
                            str_at(o, &["involvedObject", "name"])
                        )),
                        json!(str_at(o, &["message"])),
                    ]
                })
                .collect(),
        ),
        ("coordination.k8s.io", "leases") => (
            vec![name_col, col("Holder", "string", "", 0), age_col],
            items
                .iter()
                .map(|o| {
                    vec![
                        json!(name_of(o)),
                        json!(str_at(o, &["spec", "holderIdentity"])),
                        created(o),
                    ]
                })
                .collect(),
        ),
        ("", "secrets" | "configmaps") => {
            let mut cols = vec![name_col];
            if def.resource == "secrets" {
                cols.push(col("Type", "string", "", 0));
            }
            cols.push(col("Data", "integer", "", 0));
            cols.push(age_col);
            let rows = items
                .iter()
                .map(|o| {
                    let n = ["data", "binaryData"]
                        .iter()
                        .filter_map(|k| o.get(*k).and_then(Value::as_object))
                        .map(|m| m.len())
                        .sum::<usize>();
                    let mut row = vec![json!(name_of(o))];
                    if def.resource == "secrets" {
                        row.push(json!(str_at(o, &["type"])));
                    }
                    row.push(json!(n));
                    row.push(created(o));
                    row
                })
                .collect();
            (cols, rows)
        }
        _ => (
            vec![name_col, age_col],
            items
                .iter()
                .map(|o| vec![json!(name_of(o)), created(o)])
                .collect(),
        ),
    }
}

/// A `Table` of `items` (already in the served shape).
pub fn table(
    def: &ResourceDef,
    items: &[Value],
    resource_version: &str,
    query: &HashMap<String, String>,
) -> Value {
    let (columns, cells) = columns_and_cells(def, items);
    let include = query
        .get("includeObject")
        .map_or("Metadata", String::as_str);
    let rows: Vec<Value> = items
        .iter()
        .zip(cells)
        .map(|(o, cells)| {
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
        ];
        for (s, want) in cases {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn pod_status_column_reflects_init_progress() {
        let pod = json!({"metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "state": {"running": {}}}]}});
        assert_eq!(pod_status_reason(&pod), "Init:0/1");
        let failed = json!({"metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status_reason(&failed), "Init:CrashLoopBackOff");
    }
}
