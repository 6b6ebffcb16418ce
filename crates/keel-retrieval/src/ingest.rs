//! The ingestion workers: lease a file, extract, chunk, embed, store; one log line per file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::tokenize::TextTokenizer;
use keel_engine::LoadedModel;
use keel_rag::chunk::{chunk, TokenSpans};
use keel_rag::records::{IngestJob, LastError, NewChunk};
use keel_rag::{extract, from_pdf_text, is_pdf, RagError};

use crate::Retrieval;

/// L2-normalised, so the store's dot product is the cosine (the engine's own normalisation).
pub(crate) fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    keel_engine::postprocess::normalize(&mut v);
    v
}

/// Idle workers look for work this often even when nothing wakes them (a file attached
/// through another replica, a lease run out).
const POLL: Duration = Duration::from_millis(500);
/// How often the store's gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(2);
/// Chunks embedded per engine request: one dynamic batch's worth.
const EMBED_BATCH: usize = 32;
/// An embedding request refused for load (queue full) is retried this many times.
const EMBED_RETRIES: u32 = 8;

struct Spans<'a>(&'a TextTokenizer);

impl TokenSpans for Spans<'_> {
    fn spans(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, RagError> {
        self.0
            .content_spans(text)
            .map_err(|e| RagError::Tokenizer(e.to_string()))
    }
}

impl Retrieval {
    /// Starts `workers` ingestion tasks on the current runtime. Each file a worker takes stays
    /// leased to it for `lease`; past that, another worker (of any replica) may take it.
    pub fn spawn_workers(self: &Arc<Self>, workers: usize, lease: Duration) {
        crate::telemetry::describe();
        // Leases of a previous run of this process are void: the embedded store has one
        // process, so nobody else is working on them.
        if let Err(e) = self.store.release_leases() {
            tracing::warn!(target: "keel::rag", error = %e, "could not release old leases");
        }
        for n in 0..workers {
            let this = self.clone();
            // The lease owner names the process, for whoever reads the queue table.
            let name = format!("{}-worker-{n}", std::process::id());
            tokio::spawn(async move { this.work(name, lease).await });
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.record_gauges().await;
                tokio::time::sleep(GAUGES_EVERY).await;
            }
        });
    }

    /// Files by status, the ingestion queue's depth and chunks stored, read from the store
    /// (so they are right after a restart, and count work queued through any route).
    async fn record_gauges(&self) {
        match self.with_store(|s| s.stats()).await {
            Ok((files, chunks)) => {
                for (status, n) in [
                    ("in_progress", files.in_progress),
                    ("completed", files.completed),
                    ("failed", files.failed),
                    ("cancelled", files.cancelled),
                ] {
                    metrics::gauge!("keel_rag_files", "status" => status).set(n as f64);
                }
                metrics::gauge!("keel_rag_ingest_queue_depth").set(files.in_progress as f64);
                metrics::gauge!("keel_rag_chunks").set(chunks as f64);
            }
            Err(e) => {
                tracing::warn!(target: "keel::rag", error = %e, "reading store statistics failed")
            }
        }
    }

    async fn work(self: Arc<Self>, worker: String, lease: Duration) {
        loop {
            // Take nothing while the model cannot embed: the file would only wait leased.
            let Ok(model) = self.model() else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let id = worker.clone();
            match self.with_store(move |s| s.claim(&id, 1, lease)).await {
                Ok(jobs) if !jobs.is_empty() => {
                    for job in jobs {
                        self.ingest(&model, job).await;
                    }
                }
                Ok(_) => {
                    let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
                }
                Err(e) => {
                    tracing::error!(target: "keel::rag", error = %e, "claiming ingestion work failed");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn ingest(&self, model: &Arc<LoadedModel>, job: IngestJob) {
        let started = Instant::now();
        let result = self.prepare_and_embed(model, &job).await;
        let (chunks, tokens, bytes) = match &result {
            Ok((c, bytes)) => (
                c.len(),
                c.iter().map(|c| c.tokens as u64).sum::<u64>(),
                *bytes,
            ),
            Err(_) => (0, 0, 0),
        };
        let outcome = if result.is_ok() {
            "completed"
        } else {
            "failed"
        };
        let stored = match result {
            Ok((new_chunks, _)) => {
                let j = job.clone();
                self.with_store(move |s| s.complete(&j, &new_chunks)).await
            }
            Err(error) => {
                let (j, e) = (job.clone(), error.clone());
                let outcome = self.with_store(move |s| s.fail(&j, &e)).await;
                tracing::info!(target: "keel::rag", file = %job.file_id, store = %job.store_id,
                    code = %error.code, reason = %error.message, "file failed");
                outcome
            }
        };
        // Superseded: the file was re-attached, detached or cancelled while it ran.
        let status = match stored {
            Ok(true) => outcome,
            Ok(false) => "superseded",
            Err(e) => {
                tracing::error!(target: "keel::rag", file = %job.file_id, error = %e, "storing chunks failed");
                "error"
            }
        };
        metrics::counter!("keel_rag_ingest_files_total", "status" => status).increment(1);
        metrics::counter!("keel_rag_ingest_chunks_total").increment(chunks as u64);
        tracing::info!(target: "keel::rag", file = %job.file_id, store = %job.store_id, filename = %job.filename,
            bytes, chunks, tokens, ms = started.elapsed().as_millis() as u64, status, "file ingested");
    }

    /// The file's chunks with their embeddings, and the file's size; or why it cannot be used.
    async fn prepare_and_embed(
        &self,
        model: &Arc<LoadedModel>,
        job: &IngestJob,
    ) -> Result<(Vec<NewChunk>, usize), LastError> {
        let failed = |code: &str, message: String| LastError {
            code: code.into(),
            message,
        };
        let j = job.clone();
        let bytes = self
            .with_store(move |s| s.job_bytes(&j))
            .await
            .map_err(|e| failed("server_error", e.to_string()))?;
        let size = bytes.len();
        // A PDF's text comes from a separate process; everything else is read here.
        let (bytes, pdf_text) = match (is_pdf(&bytes), &self.pdf) {
            (true, Some(reader)) => (Vec::new(), Some(reader.extract(bytes).await?)),
            _ => (bytes, None),
        };
        let (m, j) = (model.clone(), job.clone());
        let pieces = tokio::task::spawn_blocking(move || {
            let doc = match pdf_text {
                Some(text) => from_pdf_text(&text),
                None => extract(&bytes, &j.filename),
            }
            .map_err(|e| failed(e.code(), e.to_string()))?;
            let tokenizer = m.text_tokenizer().ok_or_else(|| {
                failed(
                    "server_error",
                    "the embedding model has no tokenizer".into(),
                )
            })?;
            chunk(&doc, j.strategy, &Spans(tokenizer))
                .map_err(|e| failed("invalid_file", e.to_string()))
        })
        .await
        .map_err(|e| failed("server_error", format!("extraction failed: {e}")))??;
        if pieces.is_empty() {
            return Err(failed("invalid_file", "the file has no text".into()));
        }
        let mut out = Vec::with_capacity(pieces.len());
        for batch in pieces.chunks(EMBED_BATCH) {
            let inputs: Vec<String> = batch.iter().map(|c| c.embedding_input()).collect();
            let vectors = self.embed_with_retry(model, inputs).await?;
            out.extend(batch.iter().zip(vectors).map(|(c, v)| NewChunk {
                text: c.text.clone(),
                headings: c.headings.clone(),
                tokens: c.tokens,
                embedding: normalized(v),
            }));
        }
        Ok((out, size))
    }

    async fn embed_with_retry(
        &self,
        model: &Arc<LoadedModel>,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, LastError> {
        let mut attempt = 0;
        loop {
            let deadline = Instant::now() + Duration::from_secs(60);
            match model.embed(inputs.clone(), deadline).await {
                Ok(inference) => return Ok(inference.outputs),
                Err(e) if attempt < EMBED_RETRIES && is_overload(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
                }
                Err(e) => {
                    return Err(LastError {
                        code: "server_error".into(),
                        message: format!("embedding failed: {e}"),
                    })
                }
            }
        }
    }
}

fn is_overload(e: &keel_engine::EngineError) -> bool {
    use keel_engine::EngineError as E;
    matches!(
        e,
        E::QueueFull(_) | E::QueueTooSlow { .. } | E::DeadlineExceeded
    )
}
