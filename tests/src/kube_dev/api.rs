//! The HTTP API: routing of `/api/v1/...` and `/apis/<group>/<version>/...` URLs to the generic
//! verbs (get, list, watch, create, update, patch, delete, deletecollection), the `status`, `log`
//! and `token` subresources, discovery and authentication.
//!
//! ```text
//!   request ─▶ auth (bearer) ─▶ parse URL ─▶ ResourceDef ─▶ verb handler ─▶ Store
//!                                                         └▶ kinds (defaults, validation)
//!                                                         └▶ admission (pods, on create)
//! ```
//!
//! Objects are stored in one shape per storage and presented per resource (see `events`), or,
//! as the real server answers `Accept: …;as=Table` and `…;as=PartialObjectMetadata[List]`, as a
//! `Table` (kubectl) or metadata only (kube's `Api<PartialObjectMeta<K>>`, client-go's metadata
//! informers) for get, list and watch. Errors are `Status` objects (see `status`). A watch
//! writes the events that are ready together as one write, as the real server flushes only
//! when no further event is queued.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::admission::Admission;
use super::events;
use super::kinds;
use super::managed;
use super::patch::{self, PatchKind};
use super::resources::{self, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, success_status};
use super::store::{Change, ChangeKind, EncodingKey, Store, Update};
use super::table;
use super::tokens::TokenIssuer;
use super::util::{
    metadata_mut, name_of, name_suffix, namespace_of, new_uid, now_time, rv_of, str_at, time_in,
    uid_of,
};

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The object store.
    pub store: Arc<Store>,
    /// The admin bearer token written to the kubeconfig.
    pub admin_token: String,
    /// `host:port` of this server (for `/api`'s `serverAddressByClientCIDRs`).
    pub server_address: String,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Longest a watch is served before the server ends it, whatever `timeoutSeconds` asked.
    pub max_watch_duration: Option<Duration>,
    /// Root dir (pod logs live under `pods/<uid>/logs`).
    pub root_dir: PathBuf,
    /// Service-account token issuer (TokenRequest, TokenReview, authentication).
    pub tokens: Arc<TokenIssuer>,
    /// Mutating admission webhooks.
    pub admission: Admission,
}

/// The axum router serving the whole API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

type Q = HashMap<String, String>;

/// A request addressed to a resource.
#[derive(Debug)]
struct Req {
    def: &'static ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    query: Q,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }
    fn ns(&self) -> &str {
        self.ns.as_deref().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    /// The field manager of a write: `fieldManager`, else the user agent's product name.
    fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.clone();
        }
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|p| !p.is_empty())
            .unwrap_or("unknown")
            .to_string()
    }

    fn wants_table(&self) -> bool {
        self.accept().contains("as=Table")
    }

    /// The metadata client's `Accept: application/json;as=PartialObjectMetadata[List];
    /// g=meta.k8s.io;v=v1`: objects are answered as `PartialObjectMetadata`, metadata only.
    fn wants_metadata(&self) -> bool {
        let a = self.accept();
        a.contains("as=PartialObjectMetadata") && a.contains("g=meta.k8s.io")
    }

    fn accept(&self) -> &str {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// An object as `meta.k8s.io/v1` `PartialObjectMetadata`.
fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn json_response(code: StatusCode, v: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn handle(
    State(st): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let result = dispatch(&st, method.clone(), &uri, headers, body).await;
    match result {
        Ok(r) => {
            tracing::debug!(%method, %path, status = r.status().as_u16(), "request");
            r
        }
        Err(e) => {
            tracing::debug!(%method, %path, status = e.code, error = %e.message, "request failed");
            e.into_response()
        }
    }
}

fn authenticated(st: &ApiState, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    token.trim() == st.admin_token || st.tokens.authenticate(&st.store, token.trim()).is_some()
}

async fn dispatch(
    st: &Arc<ApiState>,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // Public endpoints, as `system:public-info-viewer` allows on a real cluster.
    match segs.as_slice() {
        ["version"] => return Ok(json_response(StatusCode::OK, &resources::version_doc())),
        ["healthz" | "livez" | "readyz", ..] => {
            return Ok((StatusCode::OK, "ok").into_response());
        }
        _ => {}
    }
    if !authenticated(st, &headers) {
        return Err(ApiError::unauthorized());
    }
    let query: Q = Query::<Q>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        [] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz", "/openapi/v3"]}),
            ));
        }
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                &resources::core_versions_doc(&st.server_address),
            ));
        }
        ["apis"] => return Ok(json_response(StatusCode::OK, &resources::group_list_doc())),
        ["apis", g] => {
            return resources::group_single_doc(g)
                .map(|d| json_response(StatusCode::OK, &d))
                .ok_or_else(ApiError::no_route);
        }
        ["openapi", rest @ ..] => return super::openapi::serve(rest, &query),
        ["openid", "v1", "jwks"] => return Ok(json_response(StatusCode::OK, &st.tokens.jwks())),
        [".well-known", "openid-configuration"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "issuer": super::tokens::API_AUDIENCE,
                    "jwks_uri": format!("https://{}/openid/v1/jwks", st.server_address),
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                }),
            ));
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if !resources::group_version_served(group, version) {
        return Err(ApiError::no_route());
    }
    if rest.is_empty() {
        return Ok(json_response(
            StatusCode::OK,
            &resources::resource_list_doc(group, version),
        ));
    }
    // `namespaces/<ns>/<resource>...`, except `namespaces/<name>[/status]` itself.
    let (ns, rest) = if rest[0] == "namespaces"
        && rest.len() >= 3
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"))
    {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    if rest.len() > 3 {
        return Err(ApiError::no_route());
    }
    let def = resources::find(group, version, rest[0]).ok_or_else(ApiError::no_route)?;
    if def.namespaced != ns.is_some() && (ns.is_some() || rest.len() > 1) {
        return Err(ApiError::no_route());
    }
    let r = Req {
        def,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
        query,
        headers,
        body,
    };
    if let Some(sub) = &r.sub
        && !def.subresources.contains(&sub.as_str())
    {
        return Err(ApiError::no_route());
    }
    if def.create_only {
        return match (&method, &r.name) {
            (&Method::POST, None) => st.tokens.review(&st.store, &r.body),
            _ => Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )),
        };
    }
    match (method, r.name.is_some(), r.sub.as_deref()) {
        (Method::GET, false, _) => {
            let watch = r
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1");
            if watch {
                watch_handler(st, r)
            } else {
                list(st, &r)
            }
        }
        (Method::GET, true, Some("log")) => super::logs::serve(st, r.ns(), r.name(), &r.query),
        (Method::GET, true, None | Some("status")) => get(st, &r),
        (Method::POST, false, None) => create(st, &r).await,
        (Method::POST, true, Some("token")) => st
            .tokens
            .token_request(&st.store, r.ns(), r.name(), &r.body)
            .map(|v| json_response(StatusCode::CREATED, &v)),
        (Method::PUT, true, None | Some("status")) => update(st, &r),
        (Method::PATCH, true, None | Some("status")) => patch_handler(st, &r).await,
        (Method::DELETE, true, None) => delete(st, &r),
        (Method::DELETE, false, None) => delete_collection(st, &r),
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// The object as served for `def` (core/v1 events converted, type meta set).
pub fn present<'a>(def: &ResourceDef, obj: &'a Value) -> Cow<'a, Value> {
    let api_version = def.api_version();
    let mut v = if def.storage == "events" && def.group.is_empty() {
        events::to_core(obj)
    } else if str_at(obj, &["apiVersion"]) == api_version && str_at(obj, &["kind"]) == def.kind {
        // Stored in this shape already (`ingest`): no copy.
        return Cow::Borrowed(obj);
    } else {
        obj.clone()
    };
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(def.kind);
    Cow::Owned(v)
}

fn ingest(def: &ResourceDef, obj: Value) -> Value {
    let mut v = if def.storage == "events" && def.group.is_empty() {
        events::from_core(&obj)
    } else {
        obj
    };
    if def.storage == "events" {
        v["apiVersion"] = json!("events.k8s.io/v1");
    } else {
        v["apiVersion"] = json!(def.api_version());
    }
    v["kind"] = json!(def.kind);
    v
}

fn parse_object(def: &ResourceDef, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "couldn't get version/kind; json parse error: {e} (kube-dev accepts JSON bodies only)"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "Object 'Kind' is missing in request body",
        ));
    }
    let kind = str_at(&v, &["kind"]);
    let api_version = str_at(&v, &["apiVersion"]);
    if !kind.is_empty() && kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    if !api_version.is_empty() && api_version != def.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    Ok(v)
}

fn require_namespace(st: &ApiState, ns: &str, creating: bool) -> Result<(), ApiError> {
    let nsdef = resources::namespaces();
    match st.store.get("namespaces", "", ns) {
        None => Err(ApiError::not_found(nsdef.target(), ns)),
        Some(n) if creating && !str_at(&n, &["metadata", "deletionTimestamp"]).is_empty() => {
            Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )))
        }
        Some(_) => Ok(()),
    }
}

fn get(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let obj = st
        .store
        .get(r.def.storage, r.ns(), r.name())
        .ok_or_else(|| ApiError::not_found(r.def.target(), r.name()))?;
    let v = present(r.def, &obj);
    if r.wants_table() {
        let rv = rv_of(&obj).to_string();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(r.def, &[v.into_owned()], &rv, &r.query),
        ));
    }
    if r.wants_metadata() {
        return Ok(json_response(StatusCode::OK, &partial_metadata(&v)));
    }
    Ok(json_response(StatusCode::OK, &v))
}

struct Filter {
    def: &'static ResourceDef,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(r: &Req) -> Result<Self, ApiError> {
        let core_shape = r.def.group.is_empty();
        Ok(Self {
            def: r.def,
            ns: r.ns.clone(),
            labels: LabelSelector::parse(r.query.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldSelector::parse(
                r.query.get("fieldSelector").map_or("", String::as_str),
                r.def.storage,
                core_shape,
            )?,
        })
    }

    /// The presented object if it matches.
    fn matches<'a>(&self, obj: &'a Value) -> Option<Cow<'a, Value>> {
        if let Some(ns) = &self.ns
            && namespace_of(obj) != ns
        {
            return None;
        }
        let v = present(self.def, obj);
        (self.labels.matches(&v) && self.fields.matches(&v)).then_some(v)
    }
}

fn list(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let filter = Filter::new(r)?;
    if let Some(ns) = &r.ns
        && r.def.namespaced
        && st.store.get("namespaces", "", ns).is_none()
    {
        // Listing in a namespace that does not exist is an empty list on a real server too.
    }
    let (items, rv) = st.store.list(r.def.storage, r.ns.as_deref());
    let items: Vec<Cow<Value>> = items.iter().filter_map(|o| filter.matches(o)).collect();
    if r.wants_table() {
        let items: Vec<Value> = items.into_iter().map(Cow::into_owned).collect();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(r.def, &items, &rv.to_string(), &r.query),
        ));
    }
    if r.wants_metadata() {
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items.iter().map(|v| partial_metadata(v)).collect::<Vec<_>>(),
            }),
        ));
    }
    // Encoded from the stored objects as they are: no copy of each, and none of the list.
    Ok(json_response(
        StatusCode::OK,
        &List {
            kind: &r.def.list_kind(),
            api_version: &r.def.api_version(),
            metadata: json!({"resourceVersion": rv.to_string()}),
            items: items.iter().map(|v| ListItem(v)).collect(),
        },
    ))
}

/// A list response, in the API server's field order.
#[derive(serde::Serialize)]
struct List<'a> {
    kind: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: Value,
    items: Vec<ListItem<'a>>,
}

/// An object as a list item: without `apiVersion` and `kind`, as the API server lists them.
struct ListItem<'a>(&'a Value);

impl serde::Serialize for ListItem<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_object() {
            Some(m) => s.collect_map(
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind")),
            ),
            None => self.0.serialize(s),
        }
    }
}

/// One line of a watch stream: `{"type":…,"object":…}`, the order of the API server's
/// `metav1.WatchEvent`. Clients rely on it: kube's adjacently tagged `WatchEvent` decodes the
/// object straight into its type when `type` comes first, and buffers all of it otherwise.
#[derive(serde::Serialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: &'a Value,
}

fn watch_event(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&WatchEvent { object, kind }).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch response's write size once events queue up.
const WATCH_WRITE_BYTES: usize = 64 * 1024;

/// Sends watch events ready together as few writes (up to [`WATCH_WRITE_BYTES`] each), as the API
/// server flushes a watch response only when no further event is queued. A lone event goes out
/// as it is, uncopied. False once the client is gone.
async fn send_batched(tx: &mpsc::Sender<Bytes>, events: impl Iterator<Item = Bytes>) -> bool {
    let mut batch = Vec::new();
    let mut size = 0;
    for event in events {
        size += event.len();
        batch.push(event);
        if size >= WATCH_WRITE_BYTES {
            if tx.send(joined(&mut batch)).await.is_err() {
                return false;
            }
            size = 0;
        }
    }
    batch.is_empty() || tx.send(joined(&mut batch)).await.is_ok()
}

/// The events of `batch` (emptied) as one buffer, allocated once at its final size (growing it
/// event by event reallocated and copied it over and over, and touched fresh memory each time).
fn joined(batch: &mut Vec<Bytes>) -> Bytes {
    if let [_] = batch.as_slice() {
        return batch.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
    for event in batch.drain(..) {
        buf.extend_from_slice(&event);
    }
    buf.freeze()
}

fn too_old_event(requested: u64, oldest: u64) -> Bytes {
    watch_event(
        "ERROR",
        &ApiError::expired(format!("too old resource version: {requested} ({oldest})")).to_status(),
    )
}

fn watch_handler(st: &Arc<ApiState>, r: Req) -> Result<Response, ApiError> {
    let filter = Filter::new(&r)?;
    let bookmarks = r
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let send_initial = r
        .query
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true");
    let table = r.wants_table();
    let metadata = !table && r.wants_metadata();
    let rv = r.query.get("resourceVersion").cloned().unwrap_or_default();
    // The real server picks a random timeout between 30 and 60 minutes when none is given.
    let timeout = r
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs)
        .min(st.max_watch_duration.unwrap_or(Duration::MAX));
    let from = if send_initial || rv.is_empty() || rv == "0" {
        None
    } else {
        Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        )
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let start = st.store.watch(r.def.storage, from);
    let store = st.store.clone();
    let interval = st.bookmark_interval;
    let def = r.def;
    let query = r.query.clone();
    tokio::spawn(async move {
        let start = match start {
            Ok(s) => s,
            Err(too_old) => {
                tracing::info!(
                    resource = def.resource,
                    requested = too_old.requested,
                    oldest = too_old.oldest,
                    "watch from a resourceVersion older than the history window: 410 Expired"
                );
                let _ = tx
                    .send(too_old_event(too_old.requested, too_old.oldest))
                    .await;
                return;
            }
        };
        let encode = |kind: &str, obj: Cow<'_, Value>| -> Bytes {
            if table {
                let obj = obj.into_owned();
                let t = table::table(def, std::slice::from_ref(&obj), rv_of(&obj), &query);
                watch_event(kind, &t)
            } else if metadata {
                watch_event(kind, &partial_metadata(&obj))
            } else {
                watch_event(kind, &obj)
            }
        };
        // A change's event: encoded once and shared with every watcher of the same resource
        // that sees the same event type; tables depend on this watch's query, so not shared.
        let change_event = |c: &Change| -> Option<Bytes> {
            let (kind, obj) = translate(&filter, c)?;
            if table {
                return Some(encode(kind, obj));
            }
            // Metadata is the same whichever group presents the object.
            let (group, version) = if metadata {
                ("meta.k8s.io", "v1")
            } else {
                (def.group, def.version)
            };
            let key = EncodingKey {
                group,
                version,
                event: kind,
            };
            // The object as stored (not converted to another shape): its JSON in this event
            // is what the store keeps once every stream has read the change.
            let as_stored = !metadata && matches!(obj, Cow::Borrowed(_));
            Some(c.encoded(key, || {
                let event = encode(kind, obj);
                if as_stored {
                    c.encoded_as_stored(kind, &event);
                }
                event
            }))
        };
        let mut last_rv = start.start_rv;
        if let Some((items, snap_rv)) = start.snapshot {
            let added = items
                .iter()
                .filter_map(|o| filter.matches(o).map(|v| encode("ADDED", v)));
            if !send_batched(&tx, added).await {
                return;
            }
            if send_initial && bookmarks {
                let b = json!({"kind": def.kind, "apiVersion": def.api_version(),
                    "metadata": {"resourceVersion": snap_rv.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(watch_event("BOOKMARK", &b)).await.is_err() {
                    return;
                }
            }
        }
        if !send_batched(&tx, start.replay.iter().filter_map(|c| change_event(c))).await {
            return;
        }
        let mut rx = start.rx;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::info!(resource = def.resource, "watch closed by the server: timeout");
                    return;
                }
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let b = json!({"kind": def.kind, "apiVersion": def.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(watch_event("BOOKMARK", &b)).await.is_err() {
                        return;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let (changes, head) = match store.since(def.storage, last_rv) {
                        Ok(next) => next,
                        Err(too_old) => {
                            // This stream fell out of the history window: like the watch
                            // cache, end it with 410 so the client re-lists.
                            let _ = tx.send(too_old_event(too_old.requested, too_old.oldest)).await;
                            return;
                        }
                    };
                    if !send_batched(&tx, changes.iter().filter_map(|c| change_event(c))).await {
                        return;
                    }
                    last_rv = last_rv.max(head);
                    start.cursor.advance(last_rv);
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// A change as seen through a filtered watch: objects entering the selection are ADDED, leaving
/// it DELETED, as with the real watch cache. An object that leaves the selection is sent as it
/// was before the change (the watch cache's `PrevObject`) with the change's resourceVersion: the
/// watcher learns only that it is out of the selection, not what it is now.
fn translate<'a>(filter: &Filter, c: &'a Change) -> Option<(&'static str, Cow<'a, Value>)> {
    let now = filter.matches(&c.object);
    let before = c.old.as_deref().and_then(|o| filter.matches(o));
    match c.kind {
        ChangeKind::Added => now.map(|v| ("ADDED", v)),
        ChangeKind::Deleted => before
            .or(now)
            .map(|_| ("DELETED", present(filter.def, &c.object))),
        ChangeKind::Modified => match (before, now) {
            (Some(_), Some(v)) => Some(("MODIFIED", v)),
            (None, Some(v)) => Some(("ADDED", v)),
            (Some(old), None) => {
                let mut old = old.into_owned();
                if let Some(meta) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), json!(rv_of(&c.object)));
                }
                Some(("DELETED", Cow::Owned(old)))
            }
            (None, None) => None,
        },
    }
}

/// Create: defaults → admission → validation → store.
async fn create(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let def = r.def;
    let obj = parse_object(def, &r.body)?;
    let created = create_object(st, def, r.ns(), obj, r.dry_run(), false).await?;
    let mut resp = json_response(StatusCode::CREATED, &present(def, &created.0));
    for w in created.1 {
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(resp)
}

/// Creates an object (shared by POST and server-side apply). Returns it and admission warnings.
pub async fn create_object(
    st: &ApiState,
    def: &'static ResourceDef,
    path_ns: &str,
    obj: Value,
    dry_run: bool,
    from_apply: bool,
) -> Result<(Arc<Value>, Vec<String>), ApiError> {
    let mut obj = ingest(def, obj);
    if def.namespaced {
        let body_ns = namespace_of(&obj).to_string();
        if body_ns.is_empty() {
            metadata_mut(&mut obj).insert("namespace".into(), json!(path_ns));
        } else if body_ns != path_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        require_namespace(st, path_ns, true)?;
    } else {
        metadata_mut(&mut obj).remove("namespace");
    }
    {
        let meta = metadata_mut(&mut obj);
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        let gen_name = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.is_empty() && !gen_name.is_empty() {
            let n = format!("{gen_name}{}", name_suffix());
            meta.insert("name".into(), json!(n));
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_time()));
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        // Clients cannot set managed fields; only server-side apply (below) records them.
        if !from_apply {
            meta.remove("managedFields");
        }
    }
    apply_kind_defaults(def, &mut obj);
    let mut warnings = Vec::new();
    if def.storage == "pods" && !dry_run {
        // The ServiceAccount admission plugin: the pod's service account must exist.
        let sa = str_at(&obj, &["spec", "serviceAccountName"]).to_string();
        if st.store.get("serviceaccounts", path_ns, &sa).is_none() {
            return Err(ApiError::forbidden(format!(
                "pods \"{}\" is forbidden: error looking up service account {path_ns}/{sa}: serviceaccount \"{sa}\" not found",
                name_of(&obj)
            )));
        }
    }
    if def.storage == "pods" {
        let outcome = st.admission.admit_pod_create(&st.store, &obj).await?;
        warnings = outcome.warnings;
        if let Some(patched) = outcome.patched {
            obj = patched;
            // The real server decodes (and so defaults) the patched object again.
            kinds::default_pod(&mut obj);
        }
    }
    let mut causes = kinds::validate_name(def.kind, name_of(&obj));
    if def.storage == "pods" {
        causes.extend(kinds::validate_pod(&obj));
    }
    if def.group == "events.k8s.io" {
        causes.extend(kinds::validate_event(&obj));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(def.target(), name_of(&obj), causes));
    }
    let name = name_of(&obj).to_string();
    let stored = st
        .store
        .create(def.storage, obj, dry_run)
        .map_err(|_| ApiError::already_exists(def.target(), &name))?;
    if def.storage == "namespaces" && !dry_run {
        super::seed_service_account(&st.store, &name);
    }
    Ok((stored, warnings))
}

fn apply_kind_defaults(def: &ResourceDef, obj: &mut Value) {
    match def.storage {
        "pods" => kinds::default_pod(obj),
        "namespaces" => kinds::default_namespace(obj),
        "secrets" => kinds::default_secret(obj),
        "mutatingwebhookconfigurations" => kinds::default_mutating_webhooks(obj),
        _ => {}
    }
}

fn has_status_subresource(def: &ResourceDef) -> bool {
    def.subresources.contains(&"status")
}

/// The update rules shared by PUT and PATCH: optimistic concurrency, immutable metadata, the
/// status subresource split and the pod spec rule; finishes deletion when the last finalizer
/// of a terminating object goes away.
fn apply_update(
    def: &ResourceDef,
    sub: Option<&str>,
    cur: &Value,
    mut new: Value,
    write: Write<'_>,
) -> Result<Update, ApiError> {
    let name = name_of(cur).to_string();
    let want_rv = rv_of(&new);
    if !want_rv.is_empty() && want_rv != rv_of(cur) {
        return Err(ApiError::conflict(def.target(), &name));
    }
    let want_uid = uid_of(&new);
    if !want_uid.is_empty() && want_uid != uid_of(cur) {
        return Err(ApiError::conflict_with(
            def.target(),
            &name,
            &format!(
                "Precondition failed: UID in precondition: {want_uid}, UID in object meta: {}",
                uid_of(cur)
            ),
        ));
    }
    if sub == Some("status") {
        let mut out = cur.clone();
        match new.as_object_mut().and_then(|m| m.remove("status")) {
            Some(s) => out["status"] = s,
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let Write::Update(manager) = write {
            managed::record_update(cur, &mut out, manager, &def.api_version());
        }
        return Ok(Update::Put(out));
    }
    {
        let cur_meta = cur.get("metadata");
        let meta = metadata_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generateName",
        ] {
            match cur_meta.and_then(|m| m.get(k)) {
                Some(v) => {
                    meta.insert(k.into(), v.clone());
                }
                None => {
                    meta.remove(k);
                }
            }
        }
        if matches!(write, Write::Update(_)) {
            meta.remove("managedFields");
        }
    }
    if has_status_subresource(def) {
        match cur.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    match def.storage {
        "pods" => kinds::check_pod_spec_update(cur, &new)?,
        "mutatingwebhookconfigurations" => kinds::default_mutating_webhooks(&mut new),
        "namespaces" => {
            if let Some(s) = cur.get("spec") {
                new["spec"] = s.clone();
            }
        }
        _ => {}
    }
    let terminating = !str_at(&new, &["metadata", "deletionTimestamp"]).is_empty();
    let no_finalizers = new
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(|f| f.is_empty());
    if terminating && no_finalizers {
        let grace_over = def.storage != "pods"
            || new
                .get("metadata")
                .and_then(|m| m.get("deletionGracePeriodSeconds"))
                .and_then(Value::as_i64)
                == Some(0);
        if grace_over && def.storage != "namespaces" {
            return Ok(Update::Delete(new));
        }
    }
    if let Write::Update(manager) = write {
        managed::record_update(cur, &mut new, manager, &def.api_version());
    }
    Ok(Update::Put(new))
}

/// How a write records field ownership.
#[derive(Debug, Clone, Copy)]
enum Write<'a> {
    /// PUT or a non-apply PATCH by this manager.
    Update(&'a str),
    /// Server-side apply: ownership was computed by `managed::apply`.
    Apply,
}

fn apply_conflict(def: &ResourceDef, name: &str, conflicts: &[managed::Conflict]) -> ApiError {
    let message = match conflicts {
        [one] => format!(
            "Apply failed with 1 conflict: conflict with \"{}\": {}",
            one.manager, one.field
        ),
        many => format!(
            "Apply failed with {} conflicts: {}",
            many.len(),
            many.iter()
                .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut e = ApiError::conflict(def.target(), name);
    e.message = message;
    if let Some(d) = e.details.as_mut() {
        d["causes"] = json!(
            conflicts
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict",
                            "message": format!("conflict with \"{}\"", c.manager),
                            "field": c.field}))
                .collect::<Vec<_>>()
        );
    }
    e
}

fn update(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let def = r.def;
    let mut body = ingest(def, parse_object(def, &r.body)?);
    let body_name = name_of(&body).to_string();
    if body_name != r.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            r.name()
        )));
    }
    if def.namespaced {
        let body_ns = namespace_of(&body).to_string();
        if body_ns.is_empty() {
            metadata_mut(&mut body).insert("namespace".into(), json!(r.ns()));
        } else if body_ns != r.ns() {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let sub = r.sub.as_deref();
    let manager = r.manager();
    let res = st
        .store
        .update(def.storage, r.ns(), r.name(), r.dry_run(), |cur| {
            apply_update(def, sub, cur, body, Write::Update(&manager))
        })?;
    match res {
        Some((obj, _)) => Ok(json_response(StatusCode::OK, &present(def, &obj))),
        None => Err(ApiError::not_found(def.target(), r.name())),
    }
}

async fn patch_handler(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let def = r.def;
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchKind::from_content_type(ct)?;
    let sub = r.sub.as_deref();
    let manager = r.manager();
    if kind == PatchKind::Apply {
        return server_side_apply(st, r).await;
    }
    let res = st
        .store
        .update(def.storage, r.ns(), r.name(), r.dry_run(), |cur| {
            let mut doc = present(def, cur).into_owned();
            patch::apply(kind, &mut doc, &r.body)?;
            apply_update(def, sub, cur, ingest(def, doc), Write::Update(&manager))
        })?;
    match res {
        Some((obj, _)) => Ok(json_response(StatusCode::OK, &present(def, &obj))),
        None => Err(ApiError::not_found(def.target(), r.name())),
    }
}

/// `application/apply-patch+yaml` (JSON bodies): field ownership and conflicts per `managed`.
async fn server_side_apply(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let def = r.def;
    let Some(manager) = r.query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::invalid(
            super::status::Target {
                group: "meta.k8s.io",
                resource: "patchoptions",
                kind: "PatchOptions.meta.k8s.io",
            },
            "",
            vec![super::status::Cause {
                reason: "FieldValueRequired",
                field: "fieldManager".into(),
                message: "Required value: is required for apply patch".into(),
            }],
        ));
    };
    let force = r.query.get("force").is_some_and(|f| f == "true");
    let mut config = parse_object(def, &r.body)?;
    metadata_mut(&mut config).insert("name".into(), json!(r.name()));
    if def.namespaced {
        metadata_mut(&mut config).insert("namespace".into(), json!(r.ns()));
    }
    let api_version = def.api_version();
    let sub = r.sub.as_deref();
    let res = st
        .store
        .update(def.storage, r.ns(), r.name(), r.dry_run(), |cur| {
            let presented = present(def, cur);
            let new = managed::apply(Some(&presented), &config, manager, force, &api_version)
                .map_err(|c| apply_conflict(def, r.name(), &c))?;
            apply_update(def, sub, cur, ingest(def, new), Write::Apply)
        })?;
    match res {
        Some((obj, _)) => Ok(json_response(StatusCode::OK, &present(def, &obj))),
        None if sub.is_none() => {
            let obj = managed::apply(None, &config, manager, force, &api_version)
                .map_err(|c| apply_conflict(def, r.name(), &c))?;
            let (created, _) = create_object(st, def, r.ns(), obj, r.dry_run(), true).await?;
            Ok(json_response(StatusCode::CREATED, &present(def, &created)))
        }
        None => Err(ApiError::not_found(def.target(), r.name())),
    }
}

/// Parsed `DeleteOptions` (body and query).
#[derive(Debug, Default)]
struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<String>,
}

fn delete_options(r: &Req) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions::default();
    if !r.body.is_empty() {
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        o.grace = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    if let Some(g) = r.query.get("gracePeriodSeconds") {
        o.grace = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request("invalid gracePeriodSeconds"))?,
        );
    }
    Ok(o)
}

/// What a delete produced.
enum Deleted {
    /// Gone now (the last state).
    Gone(Arc<Value>),
    /// Marked for deletion (graceful pods, finalizers, namespaces).
    Terminating(Arc<Value>),
}

fn delete_one(
    st: &ApiState,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
    dry_run: bool,
) -> Result<Deleted, ApiError> {
    let res = st.store.update(def.storage, ns, name, dry_run, |cur| {
        if let Some(uid) = &opts.uid
            && uid != uid_of(cur)
        {
            return Err(ApiError::conflict_with(
                def.target(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(cur)
                ),
            ));
        }
        if let Some(rv) = &opts.rv
            && rv != rv_of(cur)
        {
            return Err(ApiError::conflict_with(
                def.target(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    rv_of(cur)
                ),
            ));
        }
        let mut obj = cur.clone();
        let finalizers = cur
            .get("metadata")
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let grace = match def.storage {
            "pods" => {
                // Only pods on kube-dev's node have a kubelet to stop them; pods bound to a node
                // that does not exist go at once (what the pod GC does on a real cluster).
                let scheduled = str_at(cur, &["spec", "nodeName"]) == super::NODE_NAME;
                let terminal = matches!(
                    str_at(cur, &["status", "phase"]),
                    "Succeeded" | "Failed"
                );
                let g = opts
                    .grace
                    .or_else(|| {
                        cur.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
                    .max(0);
                if scheduled && !terminal { g } else { 0 }
            }
            "namespaces" => 1,
            _ => 0,
        };
        let already = cur
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if grace == 0 && !finalizers && def.storage != "namespaces" {
            return Ok(Update::Delete(obj));
        }
        let grace = already.map_or(grace, |a| a.min(grace));
        let meta = metadata_mut(&mut obj);
        if already.is_none() || already.is_some_and(|a| grace < a) {
            meta.insert("deletionTimestamp".into(), json!(time_in(grace)));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        if def.storage == "namespaces" {
            obj["status"] = json!({"phase": "Terminating"});
        }
        Ok(Update::Put(obj))
    })?;
    match res {
        None => Err(ApiError::not_found(def.target(), name)),
        Some((obj, ChangeKind::Deleted)) => Ok(Deleted::Gone(obj)),
        Some((obj, _)) => Ok(Deleted::Terminating(obj)),
    }
}

fn delete(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let def = r.def;
    let opts = delete_options(r)?;
    let dry_run = r.dry_run();
    match delete_one(st, def, r.ns(), r.name(), &opts, dry_run)? {
        Deleted::Gone(obj) if def.storage != "pods" => Ok(json_response(
            StatusCode::OK,
            &success_status(def.target(), r.name(), uid_of(&obj)),
        )),
        Deleted::Gone(obj) => Ok(json_response(StatusCode::OK, &present(def, &obj))),
        Deleted::Terminating(obj) => {
            if def.storage == "namespaces" && !dry_run {
                finalize_namespace(st, r.name().to_string());
            }
            Ok(json_response(StatusCode::OK, &present(def, &obj)))
        }
    }
}

fn delete_collection(st: &ApiState, r: &Req) -> Result<Response, ApiError> {
    let def = r.def;
    let filter = Filter::new(r)?;
    let opts = delete_options(r)?;
    let (items, _) = st.store.list(def.storage, r.ns.as_deref());
    let mut out = Vec::new();
    for o in items.iter().filter(|o| filter.matches(o).is_some()) {
        match delete_one(st, def, namespace_of(o), name_of(o), &opts, r.dry_run()) {
            Ok(Deleted::Gone(v) | Deleted::Terminating(v)) => {
                out.push(present(def, &v).into_owned());
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": def.list_kind(), "apiVersion": def.api_version(),
                "metadata": {"resourceVersion": st.store.current_rv().to_string()},
                "items": out}),
    ))
}

/// The namespace controller: delete everything in a terminating namespace as a client's delete
/// would (pods gracefully, so the kubelet stops them; objects with finalizers only marked), then
/// remove the namespace once nothing is left in it. As on a real cluster, a finalizer that no one
/// removes keeps the namespace `Terminating`.
fn finalize_namespace(st: &ApiState, ns: String) {
    let contents = || {
        resources::RESOURCES.iter().filter(|d| {
            d.namespaced && !d.create_only && !(d.storage == "events" && d.group.is_empty())
        })
    };
    for def in contents() {
        let (items, _) = st.store.list(def.storage, Some(&ns));
        for o in items {
            let _ = delete_one(st, def, &ns, name_of(&o), &DeleteOptions::default(), false);
        }
    }
    let store = st.store.clone();
    tokio::spawn(async move {
        while !contents().all(|d| store.list(d.storage, Some(&ns)).0.is_empty()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = store.delete("namespaces", "", &ns, None);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sent(events: Vec<Bytes>) -> Vec<Bytes> {
        let (tx, mut rx) = mpsc::channel(1024);
        assert!(send_batched(&tx, events.into_iter()).await);
        drop(tx);
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.push(b);
        }
        out
    }

    fn event(i: usize, len: usize) -> Bytes {
        let mut line = format!("{{\"type\":\"ADDED\",\"i\":{i},\"pad\":\"");
        line.push_str(&"x".repeat(len));
        line.push_str("\"}\n");
        Bytes::from(line)
    }

    #[tokio::test]
    async fn events_ready_together_go_out_in_few_writes_whole_and_in_order() {
        let events: Vec<Bytes> = (0..100).map(|i| event(i, 5000)).collect();
        let expected: Vec<u8> = events.iter().flat_map(|e| e.to_vec()).collect();
        let writes = sent(events).await;
        // 100 × ~5 KB in writes of at least 64 KiB each but the last: 8 writes, not 100.
        assert!(writes.len() < 10, "{} writes", writes.len());
        for w in &writes[..writes.len() - 1] {
            assert!(w.len() >= WATCH_WRITE_BYTES, "{}", w.len());
        }
        // Every write ends with a whole event, and together they are the events in order.
        assert!(writes.iter().all(|w| w.ends_with(b"}\n")));
        assert_eq!(writes.concat(), expected);
    }

    #[tokio::test]
    async fn a_lone_event_is_sent_as_it_is_and_none_sends_nothing() {
        let one = event(7, 10);
        let writes = sent(vec![one.clone()]).await;
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].as_ptr(), one.as_ptr(), "copied");
        assert!(sent(Vec::new()).await.is_empty());
        // Two small events: one write holding both.
        let writes = sent(vec![event(1, 10), event(2, 10)]).await;
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0], [event(1, 10), event(2, 10)].concat());
    }

    #[tokio::test]
    async fn a_gone_client_ends_the_send() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let events = (0..3).map(|i| event(i, 10));
        assert!(!send_batched(&tx, events).await);
    }
}
