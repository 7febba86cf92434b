//! Server-side apply field ownership (`metadata.managedFields`), enough for the conflict
//! semantics clients rely on (e.g. two leader candidates applying `spec.holderIdentity`):
//!
//! * An apply by manager M records M as owner (operation `Apply`) of every field in its config.
//! * An apply that sets a field owned by another manager to a different value fails with
//!   409 Conflict (`Apply failed with 1 conflict: conflict with "N": .spec.holderIdentity`)
//!   unless `force=true`, which takes the field over.
//! * Fields M applied before and leaves out now are removed if nobody else owns them.
//! * Once an object has managed fields, every other write (PUT/PATCH, operation `Update`) moves
//!   the fields it changes to its manager (`fieldManager`, else the user agent's product).
//!
//! Simplifications: lists are atomic (owned as a whole, no `k:`/`v:` keys), and objects that no
//! apply ever touched carry no managed fields at all.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::util::now_time;

type Path = Vec<String>;

const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Every leaf field path of an object (maps are descended, lists and scalars are leaves).
pub fn leaves(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                if let Some(meta) = v.as_object() {
                    for (mk, mv) in meta {
                        if !UNTRACKED_META.contains(&mk.as_str()) {
                            walk(&mut out, vec!["metadata".into(), mk.clone()], mv);
                        }
                    }
                }
                continue;
            }
            walk(&mut out, vec![k.clone()], v);
        }
    }
    out
}

fn walk(out: &mut BTreeSet<Path>, path: Path, v: &Value) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(out, p, child);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, k| cur.get(k))
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn display(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let entry = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
            cur = entry.as_object_mut().expect("only objects are inserted");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn rec(out: &mut BTreeSet<Path>, path: Path, v: &Value) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    let mut p = path.clone();
                    p.push(k.strip_prefix("f:").unwrap_or(k).to_string());
                    rec(out, p, child);
                }
            }
            _ if !path.is_empty() => {
                out.insert(path);
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    rec(&mut out, Vec::new(), v);
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    paths: BTreeSet<Path>,
}

fn read(obj: &Value) -> Option<Vec<Entry>> {
    let mf = obj.pointer("/metadata/managedFields")?.as_array()?;
    Some(
        mf.iter()
            .map(|e| Entry {
                manager: e["manager"].as_str().unwrap_or("").to_string(),
                operation: e["operation"].as_str().unwrap_or("").to_string(),
                api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                time: e["time"].as_str().unwrap_or("").to_string(),
                paths: from_fields_v1(&e["fieldsV1"]),
            })
            .collect(),
    )
}

fn write(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.paths),
            })
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager.
    pub manager: String,
    /// `.spec.holderIdentity`.
    pub field: String,
}

/// Applies `config` by `manager` to `current` (None: the object is being created).
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaves(config);
    let mut entries = current.and_then(read).unwrap_or_default();
    let base = current.cloned().unwrap_or_else(|| config.clone());
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| e.manager != manager) {
        for p in &applied {
            let clash = e.paths.iter().any(|owned| {
                overlaps(owned, p) && value_at(&base, owned) != value_at(config, owned)
            });
            if clash {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: display(p),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.dedup();
        return Err(conflicts);
    }
    let mut new = base.clone();
    json_patch::merge(&mut new, config);
    // Fields this manager applied before and no longer applies go away unless shared.
    let previously: BTreeSet<Path> = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.paths.iter().cloned())
        .collect();
    for p in previously.difference(&applied) {
        let shared = entries
            .iter()
            .any(|e| !(e.manager == manager && e.operation == "Apply") && e.paths.contains(p));
        if !shared {
            remove_at(&mut new, p);
        }
    }
    // Others keep fields whose value did not change (shared ownership); forced or changed
    // fields move to this manager.
    for e in entries.iter_mut() {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        let other_manager = e.manager != manager;
        e.paths.retain(|owned| {
            let touched = applied.iter().any(|p| overlaps(owned, p));
            let unchanged = value_at(&base, owned) == value_at(&new, owned);
            !touched || (other_manager && unchanged)
        });
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: api_version.to_string(),
        time: now_time(),
        paths: applied,
    });
    write(&mut new, &entries);
    Ok(new)
}

/// Records a non-apply write by `manager` on an object that has managed fields.
pub fn record_update(old: &Value, new: &mut Value, manager: &str, api_version: &str) {
    let Some(mut entries) = read(old) else {
        return;
    };
    let before = leaves(old);
    let after = leaves(new);
    let changed: BTreeSet<Path> = before
        .union(&after)
        .filter(|p| value_at(old, p) != value_at(new, p))
        .cloned()
        .collect();
    if changed.is_empty() {
        // Nothing of substance changed: keep managedFields (and so the no-op) as they were.
        write(new, &entries);
        return;
    }
    for e in entries.iter_mut() {
        e.paths
            .retain(|owned| !changed.iter().any(|c| overlaps(owned, c)));
    }
    let gained: BTreeSet<Path> = changed.intersection(&after).cloned().collect();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update")
    {
        Some(e) => {
            e.paths.extend(gained);
            e.time = now_time();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: now_time(),
            paths: gained,
        }),
    }
    write(new, &entries);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    fn lease(holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "l", "namespace": "d"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    }

    #[test]
    fn a_second_manager_applying_another_holder_conflicts() {
        let created = json!({"metadata": {"name": "l", "namespace": "d"}, "spec": {}});
        let a = apply(
            Some(&created),
            &lease("a"),
            "a",
            false,
            "coordination.k8s.io/v1",
        )
        .unwrap();
        assert_eq!(a["spec"]["holderIdentity"], "a");
        let err = apply(Some(&a), &lease("b"), "b", false, "coordination.k8s.io/v1").unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "a".into(),
                field: ".spec.holderIdentity".into()
            }]
        );
        // The same value is shared ownership, not a conflict.
        assert!(apply(Some(&a), &lease("a"), "b", false, "coordination.k8s.io/v1").is_ok());
        let forced = apply(Some(&a), &lease("b"), "b", true, "coordination.k8s.io/v1").unwrap();
        assert_eq!(forced["spec"]["holderIdentity"], "b");
        // After the force, a no longer owns the holder: b's value stands against a's apply.
        assert!(
            apply(
                Some(&forced),
                &lease("a"),
                "a",
                false,
                "coordination.k8s.io/v1"
            )
            .is_err()
        );
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let a = apply(None, &lease("a"), "a", false, "coordination.k8s.io/v1").unwrap();
        let mut released = a.clone();
        released["spec"]["holderIdentity"] = Value::Null;
        if let Some(s) = released["spec"].as_object_mut() {
            s.remove("holderIdentity");
        }
        record_update(&a, &mut released, "a", "coordination.k8s.io/v1");
        // Nobody owns the holder now, so b may apply it.
        let b = apply(
            Some(&released),
            &lease("b"),
            "b",
            false,
            "coordination.k8s.io/v1",
        )
        .unwrap();
        assert_eq!(b["spec"]["holderIdentity"], "b");
    }

    #[test]
    fn fields_a_manager_stops_applying_are_removed() {
        let with_labels = json!({"metadata": {"name": "c", "labels": {"x": "1", "y": "2"}}});
        let first = apply(None, &with_labels, "m", false, "v1").unwrap();
        let fewer = json!({"metadata": {"name": "c", "labels": {"x": "1"}}});
        let second = apply(Some(&first), &fewer, "m", false, "v1").unwrap();
        assert_eq!(second["metadata"]["labels"], json!({"x": "1"}));
    }
}
