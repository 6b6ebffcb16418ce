//! What a RAG store keeps, as the storage backends return it: files, vector stores, the
//! files attached to a store with their ingestion status, and chunks. Plain data; the HTTP
//! layer turns these into OpenAI's shapes.

use serde_json::{Map, Value};

use crate::chunk::ChunkStrategy;
use crate::filter::Attributes;

/// Who owns an object: the caller's key id, or `anonymous` when no keys are configured.
/// Another owner's object is reported as not found.
pub type Owner = str;

#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    pub id: String,
    pub owner: String,
    pub filename: String,
    pub bytes: u64,
    pub purpose: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileCounts {
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl FileCounts {
    pub fn total(&self) -> u64 {
        self.in_progress + self.completed + self.failed + self.cancelled
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreRecord {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub metadata: Map<String, Value>,
    pub created_at: i64,
    pub last_active_at: i64,
    pub file_counts: FileCounts,
    /// Bytes of chunk text stored.
    pub usage_bytes: u64,
}

/// A file batch: the files one request attached, counted by their current status.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub id: String,
    pub store_id: String,
    pub created_at: i64,
    pub cancelled: bool,
    pub file_counts: FileCounts,
}

impl BatchRecord {
    /// OpenAI's batch status: `in_progress` while any file is, `cancelled` once cancelled,
    /// `failed` when every file failed, `completed` otherwise.
    pub fn status(&self) -> &'static str {
        let c = self.file_counts;
        if c.in_progress > 0 {
            "in_progress"
        } else if self.cancelled {
            "cancelled"
        } else if c.total() > 0 && c.failed == c.total() {
            "failed"
        } else {
            "completed"
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStatus {
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl IngestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// Why a file's ingestion failed, as OpenAI's `last_error` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

/// A file attached to a vector store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreFileRecord {
    pub store_id: String,
    pub file_id: String,
    pub status: IngestStatus,
    pub attributes: Attributes,
    pub strategy: ChunkStrategy,
    pub last_error: Option<LastError>,
    pub usage_bytes: u64,
    pub created_at: i64,
    /// Bumped by every (re-)attach; an ingestion result for an older generation is dropped.
    pub generation: i64,
}

/// One attach request: the file, its attributes and how to chunk it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attach {
    pub file_id: String,
    pub attributes: Attributes,
    pub strategy: ChunkStrategy,
}

/// A claimed ingestion job: which file, for which store, at which generation.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestJob {
    pub store_id: String,
    pub file_id: String,
    pub filename: String,
    pub generation: i64,
    pub strategy: ChunkStrategy,
}

/// A chunk as ingestion hands it to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChunk {
    pub text: String,
    pub headings: String,
    pub tokens: u32,
    /// L2-normalised.
    pub embedding: Vec<f32>,
}

/// A stored chunk as a search returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkView {
    pub id: i64,
    pub store_id: String,
    pub file_id: String,
    pub filename: String,
    pub text: String,
    pub headings: String,
    pub attributes: Attributes,
}

/// Cursor pagination as OpenAI lists do it: `after`/`before` an id, newest first by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    pub after: Option<String>,
    pub before: Option<String>,
    pub descending: bool,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            limit: 20,
            after: None,
            before: None,
            descending: true,
        }
    }
}

/// How a store reads one page of a [`ListQuery`]: the rows past `cursor` (ids smaller when
/// `descending`, else larger), in that order, `fetch` of them; [`ReadPlan::page`] makes the
/// page of what it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan<'a> {
    pub cursor: Option<&'a str>,
    pub descending: bool,
    /// One more than the page holds: whether it was read tells `has_more`.
    pub fetch: usize,
    limit: usize,
    /// `before` reads back from its cursor, against the list's order; the page is flipped.
    flip: bool,
}

impl ListQuery {
    /// `after` continues in the list's order; `before` walks back from the cursor, so it
    /// reads in the opposite order and flips the page.
    pub fn plan(&self) -> ReadPlan<'_> {
        let (cursor, forward) = match (&self.after, &self.before) {
            (Some(a), _) => (Some(a.as_str()), true),
            (None, Some(b)) => (Some(b.as_str()), false),
            (None, None) => (None, true),
        };
        ReadPlan {
            cursor,
            descending: self.descending == forward,
            fetch: self.limit + 1,
            limit: self.limit,
            flip: !forward,
        }
    }
}

impl ReadPlan<'_> {
    pub fn page<T>(&self, mut items: Vec<T>) -> Page<T> {
        let has_more = items.len() > self.limit;
        items.truncate(self.limit);
        if self.flip {
            items.reverse();
        }
        Page { items, has_more }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

/// A storage failure. `NotFound` covers another owner's object too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no {kind} with id '{id}'")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Backend(String),
}
