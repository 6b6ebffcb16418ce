//! The thread that owns one model's backend and runs its batches.
//!
//! Requests arrive on a bounded channel; the worker takes what is queued, up to the batch
//! size, pads it into one batch and answers each request on its own oneshot channel.
//! Requests whose caller has gone away (client disconnected) are dropped before they cost
//! compute. Inference never runs on the async runtime's threads.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::backend::{Backend, EncodedBatch};
use crate::error::EngineError;
use crate::tokenize::TokenizedInput;

pub type JobResult = Result<Vec<Vec<f32>>, EngineError>;

pub struct Job {
    pub inputs: Vec<TokenizedInput>,
    pub reply: oneshot::Sender<JobResult>,
}

pub struct WorkerConfig {
    pub model: String,
    pub max_batch_size: usize,
    pub queue_capacity: usize,
    pub pad_id: u32,
}

/// Starts the worker thread; it ends when every sender is dropped.
pub fn spawn(config: WorkerConfig, backend: Box<dyn Backend>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    std::thread::Builder::new()
        .name(format!("keel-infer-{}", config.model))
        .spawn(move || run(config, backend, rx))
        .expect("spawning an inference thread");
    tx
}

fn run(config: WorkerConfig, backend: Box<dyn Backend>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut queued = jobs[0].inputs.len();
        while queued < config.max_batch_size {
            match rx.try_recv() {
                Ok(job) => {
                    queued += job.inputs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        jobs.retain(|job| !job.reply.is_closed());
        if !jobs.is_empty() {
            run_jobs(&config, backend.as_ref(), jobs);
        }
    }
}

fn run_jobs(config: &WorkerConfig, backend: &dyn Backend, jobs: Vec<Job>) {
    let inputs: Vec<&TokenizedInput> = jobs.iter().flat_map(|j| j.inputs.iter()).collect();
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut failure = None;
    for chunk in inputs.chunks(config.max_batch_size) {
        let batch = EncodedBatch::pad(chunk, config.pad_id);
        let started = Instant::now();
        match backend.forward(&batch) {
            Ok(out) => {
                tracing::debug!(
                    model = %config.model,
                    batch_size = batch.batch_size,
                    seq_len = batch.seq_len,
                    tokens = batch.real_tokens(),
                    compute_ms = started.elapsed().as_secs_f64() * 1e3,
                    "batch"
                );
                outputs.extend(out);
            }
            Err(e) => {
                tracing::error!(model = %config.model, error = %e, "inference failed");
                failure = Some(e.0);
                break;
            }
        }
    }
    let mut outputs = outputs.into_iter();
    for job in jobs {
        let result = match &failure {
            Some(message) => Err(EngineError::Inference(message.clone())),
            None => Ok(outputs.by_ref().take(job.inputs.len()).collect()),
        };
        // The caller may have left meanwhile; nothing to do then.
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    /// Echoes each input's length and the batch size, so tests can see how batches formed.
    struct ShapeBackend;

    impl Backend for ShapeBackend {
        fn forward(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>, BackendError> {
            Ok(batch
                .attention_mask
                .chunks(batch.seq_len)
                .map(|row| vec![row.iter().sum::<u32>() as f32, batch.batch_size as f32])
                .collect())
        }
    }

    fn input(len: usize) -> TokenizedInput {
        TokenizedInput {
            ids: vec![1; len],
            type_ids: vec![0; len],
        }
    }

    #[tokio::test]
    async fn answers_in_order_and_splits_large_requests() {
        let tx = spawn(
            WorkerConfig {
                model: "t".into(),
                max_batch_size: 2,
                queue_capacity: 4,
                pad_id: 0,
            },
            Box::new(ShapeBackend),
        );
        let (reply, rx) = oneshot::channel();
        tx.send(Job {
            inputs: vec![input(3), input(1), input(2)],
            reply,
        })
        .await
        .unwrap();
        let out = rx.await.unwrap().unwrap();
        let lens: Vec<f32> = out.iter().map(|v| v[0]).collect();
        assert_eq!(lens, [3.0, 1.0, 2.0]);
        assert!(out.iter().all(|v| v[1] <= 2.0), "{out:?}");
    }
}
