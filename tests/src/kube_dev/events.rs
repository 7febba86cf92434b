//! Events are stored once, in the events.k8s.io/v1 shape, and served in two shapes like the real
//! API server: as events.k8s.io/v1 `Event` and as core/v1 `Event` (what `kubectl describe`
//! lists). These functions convert between the two field layouts.
//!
//! | events.k8s.io/v1 | core/v1 |
//! |---|---|
//! | `regarding` | `involvedObject` |
//! | `note` | `message` |
//! | `reportingController` | `reportingComponent` |
//! | `deprecatedSource` | `source` |
//! | `deprecatedFirstTimestamp` / `deprecatedLastTimestamp` / `deprecatedCount` | `firstTimestamp` / `lastTimestamp` / `count` |

use serde_json::{Map, Value};

const PAIRS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, from_core: bool) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = PAIRS.iter().find_map(|(new, core)| {
            if from_core && k == core {
                Some(*new)
            } else if !from_core && k == new {
                Some(*core)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    Value::Object(out)
}

/// core/v1 shape → stored (events.k8s.io/v1) shape.
pub fn from_core(obj: &Value) -> Value {
    let mut v = rename(obj, true);
    // core/v1 events carry the time in first/lastTimestamp; events.k8s.io requires eventTime.
    v["apiVersion"] = Value::from("events.k8s.io/v1");
    v
}

/// Stored shape → core/v1 shape.
pub fn to_core(obj: &Value) -> Value {
    let mut v = rename(obj, false);
    v["apiVersion"] = Value::from("v1");
    // client-go's describe sorts and prints by lastTimestamp, falling back to eventTime; fill
    // the core fields from the series so `kubectl describe` shows count and age.
    if v.get("count").is_none()
        && let Some(c) = v.get("series").and_then(|s| s.get("count")).cloned()
    {
        v["count"] = c;
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_round_trip() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hi", "reason": "R",
            "reportingController": "c", "eventTime": "2024-01-01T00:00:00.000000Z"});
        let core = to_core(&new);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["reportingComponent"], "c");
        assert_eq!(from_core(&core), new);
    }
}
