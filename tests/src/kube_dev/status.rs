//! API errors as the real API server sends them: a `metav1.Status` body with the HTTP code,
//! `reason`, `details` and the same message texts (`pods "web-0" not found`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// A failed API call, rendered as a `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, if any.
    pub details: Option<Value>,
}

/// Identifies the resource an error is about, for messages and `details`.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// API group (`""` for core).
    pub group: &'a str,
    /// Plural resource name (`pods`).
    pub resource: &'a str,
    /// Kind (`Pod`), used by `Invalid`.
    pub kind: &'a str,
}

impl Target<'_> {
    /// `pods` or `leases.coordination.k8s.io`, as used in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": self.resource});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

/// One field problem of an `Invalid` error.
#[derive(Debug, Clone)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, `FieldValueDuplicate`, ...
    pub reason: &'static str,
    /// Field path, e.g. `spec.containers[0].name`.
    pub field: String,
    /// Message after the field path, e.g. `Required value`.
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 `pods "web-0" not found`.
    pub fn not_found(t: Target<'_>, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", t.qualified()),
        );
        e.details = Some(t.details(name));
        e
    }

    /// 409 `pods "web-0" already exists`.
    pub fn already_exists(t: Target<'_>, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.qualified()),
        );
        e.details = Some(t.details(name));
        e
    }

    /// 409 Conflict for a stale `resourceVersion`.
    pub fn conflict(t: Target<'_>, name: &str) -> Self {
        Self::conflict_with(
            t,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a custom explanation.
    pub fn conflict_with(t: Target<'_>, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                t.qualified()
            ),
        );
        e.details = Some(t.details(name));
        e
    }

    /// 422 `Pod "web-0" is invalid: spec.containers: Required value`.
    pub fn invalid(t: Target<'_>, name: &str, causes: Vec<Cause>) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let message = if parts.len() == 1 {
            format!("{} \"{name}\" is invalid: {}", t.kind, parts[0])
        } else {
            format!("{} \"{name}\" is invalid: [{}]", t.kind, parts.join(", "))
        };
        let mut e = Self::new(422, "Invalid", message);
        let mut d = json!({
            "name": name,
            "kind": t.kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason, "message": c.message, "field": c.field
            })).collect::<Vec<_>>(),
        });
        if !t.group.is_empty() {
            d["group"] = json!(t.group);
        }
        e.details = Some(d);
        e
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 401 Unauthorized (no or unknown bearer token).
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 410 Expired (in watch streams: `too old resource version: X (Y)`).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// 404 for a URL that names no resource (`the server could not find the requested resource`).
    pub fn no_route() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (
            code,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A `Status` with `status: Success` (the answer to deleting most kinds).
pub fn success_status(t: Target<'_>, name: &str, uid: &str) -> Value {
    let mut d = t.details(name);
    d["uid"] = json!(uid);
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    const PODS: Target<'static> = Target {
        group: "",
        resource: "pods",
        kind: "Pod",
    };

    #[test]
    fn not_found_reads_like_the_api_server() {
        let s = ApiError::not_found(PODS, "web-0").to_status();
        assert_eq!(s["message"], "pods \"web-0\" not found");
        assert_eq!(s["details"], json!({"name":"web-0","kind":"pods"}));
        assert_eq!(s["code"], 404);
    }

    #[test]
    fn group_resources_are_qualified() {
        let t = Target {
            group: "coordination.k8s.io",
            resource: "leases",
            kind: "Lease",
        };
        let s = ApiError::conflict(t, "l").to_status();
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .starts_with("Operation cannot be fulfilled on leases.coordination.k8s.io \"l\"")
        );
    }
}
