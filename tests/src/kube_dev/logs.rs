//! `GET .../pods/<name>/log`: serves the captured output of a container (what `kubectl logs`
//! reads), with `container`, `follow`, `tailLines`, `limitBytes` and the real server's messages
//! for a missing or not-yet-started container.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::Value;

use super::api::ApiState;
use super::resources;
use super::status::ApiError;
use super::util::{str_at, uid_of};

/// `<root>/pods/<uid>/logs/<container>.log`.
pub fn log_path(root: &Path, uid: &str, container: &str) -> PathBuf {
    root.join("pods")
        .join(uid)
        .join("logs")
        .join(format!("{container}.log"))
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|c| str_at(c, &["name"]).to_string()).collect())
        .unwrap_or_default()
}

fn container_state<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|l| {
            pod.pointer(&format!("/status/{l}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .find(|s| str_at(s, &["name"]) == container)
        .and_then(|s| s.get("state"))
}

/// Serves the log subresource.
pub fn serve(
    st: &ApiState,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pods = resources::pods();
    let pod = st
        .store
        .get("pods", ns, name)
        .ok_or_else(|| ApiError::not_found(pods.target(), name))?;
    let app = names(&pod, "containers");
    let init = names(&pod, "initContainers");
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.clone(),
        None if app.len() == 1 => app[0].clone(),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            return Err(ApiError::bad_request(msg));
        }
    };
    if !app.contains(&container) && !init.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let path = log_path(&st.root_dir, uid_of(&pod), &container);
    if !path.exists() {
        let reason = container_state(&pod, &container)
            .and_then(|s| s.get("waiting"))
            .map(|w| str_at(w, &["reason"]).to_string())
            .unwrap_or_else(|| "ContainerCreating".to_string());
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let content = std::fs::read(&path).unwrap_or_default();
    let mut content = match query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => tail_lines(&content, n).to_vec(),
        None => content,
    };
    if let Some(limit) = query
        .get("limitBytes")
        .and_then(|l| l.parse::<usize>().ok())
    {
        content.truncate(limit);
    }
    let follow = query.get("follow").is_some_and(|f| f == "true");
    if !follow {
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            content,
        )
            .into_response());
    }
    let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let store = st.store.clone();
    let (ns, name, uid) = (ns.to_string(), name.to_string(), uid_of(&pod).to_string());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if tx.send(Bytes::from(content)).await.is_err() {
            return;
        }
        let mut offset = offset;
        loop {
            let data = tokio::fs::read(&path).await.unwrap_or_default();
            let len = data.len() as u64;
            if len > offset {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                if tx
                    .send(Bytes::copy_from_slice(&data[start..]))
                    .await
                    .is_err()
                {
                    return;
                }
                offset = len;
                continue;
            }
            let running = store.get("pods", &ns, &name).is_some_and(|p| {
                uid_of(&p) == uid
                    && container_state(&p, &container)
                        .is_some_and(|s| s.get("terminated").is_none())
            });
            if !running {
                return;
            }
            // Follow by polling the file: container output has no change notification here.
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn tail_lines(content: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return &content[i + 1..];
            }
        }
    }
    content
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (house rule)
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
    }
}
