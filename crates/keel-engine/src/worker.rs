//! The thread that owns one model's backend and runs its batches.
//!
//! Requests arrive on a bounded channel; the worker takes what is queued, up to the batch
//! size, pads it into one batch and answers each request on its own oneshot channel.
//! Requests whose caller has gone away (client disconnected) are dropped before they cost
//! compute. Inference never runs on the async runtime's threads.

use std::time::{Duration, Instant};

use keel_telemetry::metrics::names;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Backend, EncodedBatch};
use crate::error::EngineError;
use crate::tokenize::TokenizedInput;

/// What a job got back: one vector per input, and how it went.
#[derive(Debug)]
pub struct JobOutput {
    pub outputs: Vec<Vec<f32>>,
    /// From enqueueing to the start of the job's first batch.
    pub queue_wait: Duration,
    /// Compute time of the batches the job was part of.
    pub compute: Duration,
    /// Inputs in the (largest) batch the job ran in.
    pub batch_size: usize,
}

pub type JobResult = Result<JobOutput, EngineError>;

pub struct Job {
    pub inputs: Vec<TokenizedInput>,
    pub enqueued: Instant,
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
        metrics::gauge!(names::QUEUE_DEPTH, "model" => config.model.clone()).set(rx.len() as f64);
        let before = jobs.len();
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.len() < before {
            metrics::counter!(names::EXPIRED, "model" => config.model.clone())
                .increment((before - jobs.len()) as u64);
        }
        if !jobs.is_empty() {
            run_jobs(&config, backend.as_ref(), jobs);
        }
    }
}

fn run_jobs(config: &WorkerConfig, backend: &dyn Backend, jobs: Vec<Job>) {
    let started = Instant::now();
    let inputs: Vec<&TokenizedInput> = jobs.iter().flat_map(|j| j.inputs.iter()).collect();
    let mut outputs = Vec::with_capacity(inputs.len());
    let mut failure = None;
    let mut largest_batch = 0;
    for chunk in inputs.chunks(config.max_batch_size) {
        let batch = EncodedBatch::pad(chunk, config.pad_id);
        let batch_started = Instant::now();
        match backend.forward(&batch) {
            Ok(out) => {
                let compute = batch_started.elapsed();
                largest_batch = largest_batch.max(batch.batch_size);
                let model = config.model.clone();
                metrics::histogram!(names::INFERENCE_DURATION, "model" => model.clone())
                    .record(compute.as_secs_f64());
                metrics::histogram!(names::BATCH_SIZE, "model" => model.clone())
                    .record(batch.batch_size as f64);
                metrics::counter!(names::INFERENCE_INPUTS, "model" => model)
                    .increment(batch.batch_size as u64);
                tracing::debug!(
                    model = %config.model,
                    batch_size = batch.batch_size,
                    seq_len = batch.seq_len,
                    tokens = batch.real_tokens(),
                    compute_ms = compute.as_secs_f64() * 1e3,
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
    let compute = started.elapsed();
    let mut outputs = outputs.into_iter();
    for job in jobs {
        let queue_wait = started.saturating_duration_since(job.enqueued);
        metrics::histogram!(names::QUEUE_WAIT, "model" => config.model.clone())
            .record(queue_wait.as_secs_f64());
        let result = match &failure {
            Some(message) => Err(EngineError::Inference(message.clone())),
            None => Ok(JobOutput {
                outputs: outputs.by_ref().take(job.inputs.len()).collect(),
                queue_wait,
                compute,
                batch_size: largest_batch,
            }),
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
            enqueued: Instant::now(),
            reply,
        })
        .await
        .unwrap();
        let out = rx.await.unwrap().unwrap().outputs;
        let lens: Vec<f32> = out.iter().map(|v| v[0]).collect();
        assert_eq!(lens, [3.0, 1.0, 2.0]);
        assert!(out.iter().all(|v| v[1] <= 2.0), "{out:?}");
    }
}
