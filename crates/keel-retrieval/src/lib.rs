//! The RAG service: files become searchable chunks in the background, and a search asks both
//! legs and fuses them.
//!
//! Ingestion runs off the request path. Attaching a file only writes an `in_progress` row;
//! [`Retrieval::spawn_workers`] starts workers that lease such rows from the store (the
//! store's table is the queue, so its depth is bounded by nothing in memory and survives a
//! restart), extract and chunk the file on the blocking pool, embed the chunks through the
//! served embedding model's own queue and batcher (no second copy of the model), and hand
//! the result to the store, which swaps the file's chunks in one transaction.

mod ingest;
pub mod pdf;
mod search;
mod telemetry;

use std::sync::Arc;

use keel_engine::{EngineError, LoadedModel, ModelRegistry, Task};
use keel_rag::records::StoreError;
use keel_rag::RagStore;
use tokio::sync::Notify;

pub use search::{Hit, SearchRequest};

/// Why a RAG request failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A request field is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
}

pub struct Retrieval {
    store: Arc<dyn RagStore>,
    registry: Arc<ModelRegistry>,
    /// The embedding model for chunks and queries; None: the first one configured.
    model: Option<String>,
    /// Wakes idle workers when a file is attached on this replica.
    wake: Notify,
    /// Reads PDFs in a separate process; None: PDFs fail as unsupported.
    pdf: Option<pdf::PdfExtractor>,
}

impl Retrieval {
    pub fn new(
        store: Arc<dyn RagStore>,
        registry: Arc<ModelRegistry>,
        model: Option<String>,
        pdf: Option<pdf::PdfExtractor>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            model,
            wake: Notify::new(),
            pdf,
        })
    }

    /// Runs `f` against the store on the blocking pool.
    pub async fn with_store<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn RagStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }

    /// The embedding model, if it is ready.
    pub fn model(&self) -> Result<Arc<LoadedModel>, EngineError> {
        self.registry.get(self.model.as_deref(), Task::Embedding)
    }

    /// The most content tokens a chunk may have: what the embedding model reads whole.
    pub fn content_limit(&self) -> Result<u32, EngineError> {
        let model = self.model()?;
        let limit = model
            .text_tokenizer()
            .map(|t| t.content_limit())
            .unwrap_or(0);
        Ok(limit as u32)
    }

    /// Tells idle workers that there is work.
    pub fn notify(&self) {
        self.wake.notify_waiters();
    }
}
