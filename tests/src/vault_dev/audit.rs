//! Audit log: one JSON object per request, kept in memory (for tests) and optionally appended to a
//! file as JSON lines by a background thread (so request handling never waits on disk).
//!
//! Entries record the token *accessor*, never a token, secret_id or wrapping token; paths are
//! recorded without query strings (which may carry `?token=` or `?secret_id=`).

use std::collections::VecDeque;
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

/// How many entries are kept in memory (the oldest are dropped first), so a long benchmark does
/// not grow without bound; the file, when configured, keeps everything.
pub const MEMORY_ENTRIES: usize = 262_144;

/// The audit sink.
#[derive(Debug)]
pub struct Audit {
    entries: Mutex<VecDeque<AuditEntry>>,
    total: std::sync::atomic::AtomicU64,
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
            entries: Mutex::new(VecDeque::new()),
            total: std::sync::atomic::AtomicU64::new(0),
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
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MEMORY_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(e);
    }

    /// How many requests were audited since start (including entries no longer in memory).
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of the entries kept in memory (the most recent [`MEMORY_ENTRIES`]).
    pub fn entries(&self) -> Vec<AuditEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
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
