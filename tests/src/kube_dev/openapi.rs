//! Minimal OpenAPI v3 documents, enough for kubectl: `kubectl apply` (default
//! `--validate=strict`) asks `/openapi/v3` whether the PATCH operation of a kind accepts the
//! `fieldValidation` query parameter, and leaves validation to the server when it does.
//! Each group-version document lists, per served resource, the collection POST and item PATCH
//! operations with their `x-kubernetes-group-version-kind` and the `fieldValidation` parameter.
//! There are no schemas (kubectl then builds strategic merge patches from its built-in types),
//! and `/openapi/v2` is not served (kubectl falls back as it does for servers without it).

use std::collections::HashMap;

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::{Map, Value, json};

use super::resources::{RESOURCES, ResourceDef};
use super::status::ApiError;

/// Changes whenever the documents change (clients cache by it).
const HASH: &str = "kube-dev-1";

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ])
}

fn operation(def: &ResourceDef, action: &str, id_prefix: &str) -> Value {
    json!({
        "operationId": format!("{id_prefix}{}", def.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": def.group, "version": def.version, "kind": def.kind},
        "parameters": params(),
        "responses": {"200": {"description": "OK"}},
    })
}

fn gv_doc(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for def in RESOURCES
        .iter()
        .filter(|d| d.group == group && d.version == version && !d.create_only)
    {
        let base = format!("/{}", gv_path(group, version));
        let collection = if def.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", def.resource)
        } else {
            format!("{base}/{}", def.resource)
        };
        paths.insert(
            collection.clone(),
            json!({"post": operation(def, "post", "create")}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"patch": operation(def, "patch", "patch")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

/// Serves `/openapi/v3` and `/openapi/v3/<gv path>`.
pub fn serve(rest: &[&str], query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let _ = query;
    let body = match rest {
        ["v3"] => {
            let mut paths = Map::new();
            for d in RESOURCES {
                let p = gv_path(d.group, d.version);
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}")}),
                );
            }
            json!({"paths": paths})
        }
        ["v3", "api", version] => gv_doc("", version),
        ["v3", "apis", group, version] => gv_doc(group, version),
        _ => return Err(ApiError::no_route()),
    };
    let paths_empty = body
        .get("paths")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    if paths_empty {
        return Err(ApiError::no_route());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn pod_patch_advertises_field_validation() {
        let doc = gv_doc("", "v1");
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
    }
}
