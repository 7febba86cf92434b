//! Audit log: one JSON object per request, kept in memory (for tests) and optionally appended to a
//! file as JSON lines by a background thread (so request handling never waits on disk).
//!
//! Entries record the token *accessor*, never a token, secret_id or wrapping token; paths are
//! recorded without query strings (which may carry `?token=` or `?secret_id=`).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC3339 request time (UTC).
    pub time: String,
    /// Request UUID.
    pub request_id: String,
    /// TCP peer IP.
    pub remote_address: String,
    /// Path relative to `/v1/`.
    pub path: String,
    /// `read`, `list`, `create`, `update`, `delete`, `patch`, `header`.
    pub operation: String,
    /// Accessor of the presented token (`""` when none/unknown).
    pub accessor: String,
    /// HTTP status code.
    pub status: u16,
    /// The error text, if any.
    pub error: Option<String>,
    /// Whether the response was wrapped.
    pub wrapped: bool,
}

/// The audit sink.
#[derive(Debug)]
pub struct Audit {
    entries: Mutex<Vec<AuditEntry>>,
    file: Mutex<Option<(mpsc::Sender<String>, JoinHandle<()>)>>,
}

impl Audit {
    /// A sink, optionally appending to `path`.
    pub fn new(path: Option<&Path>) -> std::io::Result<Arc<Self>> {
        let file = match path {
            None => None,
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                let (tx, rx) = mpsc::channel::<String>();
                let handle = std::thread::Builder::new()
                    .name("vault-dev-audit".into())
                    .spawn(move || {
                        let mut w = std::io::BufWriter::new(f);
                        while let Ok(line) = rx.recv() {
                            let _ = w.write_all(line.as_bytes());
                            // Drain what is queued, then flush so readers see whole lines soon.
                            while let Ok(more) = rx.try_recv() {
                                let _ = w.write_all(more.as_bytes());
                            }
                            let _ = w.flush();
                        }
                        let _ = w.flush();
                    })?;
                Some((tx, handle))
            }
        };
        Ok(Arc::new(Audit {
            entries: Mutex::new(Vec::new()),
            file: Mutex::new(file),
        }))
    }

    /// Record one entry.
    pub fn record(&self, e: AuditEntry) {
        if let Some((tx, _)) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && let Ok(mut line) = serde_json::to_string(&e)
        {
            line.push('\n');
            let _ = tx.send(line);
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// A copy of all entries so far.
    pub fn entries(&self) -> Vec<AuditEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stop the file writer after flushing everything queued.
    pub fn close(&self) {
        let taken = self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            let _ = handle.join();
        }
    }
}
