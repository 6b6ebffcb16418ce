//! The thread that owns one model's backend, forms its batches and runs them.
//!
//! Each round the worker takes the first request off its [`queue`](crate::queue), then
//! whatever else is queued (waiting up to `max_batch_delay` for more only when that is
//! configured and the batch is not full), drops the requests that can no longer be answered
//! (client gone, deadline passed) before they cost compute, sorts the inputs by length so
//! padding stays small, and cuts them into batches bounded by `max_batch_size` inputs and
//! `max_batch_tokens` padded tokens. A request's inputs may span batches; it is answered as
//! soon as its last input is done. Inference never runs on the async runtime's threads.
//!
//! A backend that panics fails the round's requests and the worker carries on; after
//! [`PANICS_BEFORE_FAILED`] panics in a row it reports its model failed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use keel_telemetry::metrics::names;
use tokio::sync::oneshot;

use crate::backend::{Backend, Batch, ModelInput};
use crate::error::EngineError;
use crate::queue::{self, Intake, Job, JobOutput, JobQueue, JobResult, Pace};

/// Backend panics in a row, with no successful batch between them, after which the worker
/// reports its model failed. One panic may be one odd input; several in a row mean the
/// backend is broken, and `/ready` should say so rather than keep accepting requests that
/// are bound to fail.
pub const PANICS_BEFORE_FAILED: u32 = 3;

/// Called at most once, on the worker thread, when the model should count as failed; gets
/// the reason.
pub type FailureHook = Box<dyn FnOnce(String) + Send>;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub model: String,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_batch_delay: Duration,
    pub pad_id: u32,
}

/// How many requests and tokens may wait, and how long a new request may expect to wait.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_requests: usize,
    pub max_tokens: usize,
    /// Refuse a request at once when its predicted wait is longer (None: its deadline).
    pub max_wait: Option<Duration>,
}

/// Starts the worker thread; it ends when every [`JobQueue`] clone is dropped.
pub fn spawn(
    config: WorkerConfig,
    backend: Box<dyn Backend>,
    limits: QueueLimits,
    on_failed: FailureHook,
) -> JobQueue {
    let (jobs, intake) = queue::bounded(limits.max_requests, limits.max_tokens, limits.max_wait);
    let worker = Worker {
        config,
        backend,
        health: Health {
            consecutive_panics: 0,
            on_failed: Some(on_failed),
        },
    };
    std::thread::Builder::new()
        .name(format!("keel-infer-{}", worker.config.model))
        .spawn(move || worker.run(intake))
        .expect("spawning an inference thread");
    jobs
}

struct Worker {
    config: WorkerConfig,
    backend: Box<dyn Backend>,
    health: Health,
}

/// Counts backend panics and reports the model failed when they keep coming.
struct Health {
    consecutive_panics: u32,
    on_failed: Option<FailureHook>,
}

impl Health {
    fn succeeded(&mut self) {
        self.consecutive_panics = 0;
    }

    fn panicked(&mut self, model: &str) {
        metrics::counter!(names::BACKEND_PANICS, "model" => model.to_string()).increment(1);
        self.consecutive_panics += 1;
        if self.consecutive_panics >= PANICS_BEFORE_FAILED {
            if let Some(on_failed) = self.on_failed.take() {
                on_failed(format!(
                    "the backend panicked in {} batches in a row; restart to reload the model",
                    self.consecutive_panics
                ));
            }
        }
    }

    /// The backend's forward pass, with a panic caught rather than ending the thread and
    /// counted.
    fn forward(
        &mut self,
        backend: &dyn Backend,
        model: &str,
        batch: &Batch,
    ) -> Result<Vec<Vec<f32>>, Failure> {
        // AssertUnwindSafe: after a panic the backend is used again only by this thread, and
        // a backend that keeps panicking gets the model marked failed (see `panicked`); its
        // own locks recover from poisoning by the workspace's policy.
        match catch_unwind(AssertUnwindSafe(|| backend.run(batch))) {
            Ok(Ok(vectors)) => {
                self.succeeded();
                Ok(vectors)
            }
            Ok(Err(e)) => Err(Failure::Error(e.to_string())),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                // Before the replies go out, so that a caller who sees the error also sees
                // the counter and, after repeated panics, the model's failed state.
                self.panicked(model);
                Err(Failure::Panic(message))
            }
        }
    }
}

/// Why a forward pass gave no vectors.
enum Failure {
    /// The backend returned an error.
    Error(String),
    /// The backend panicked; the panic's message.
    Panic(String),
}

impl Failure {
    /// The error each request of the failed round gets.
    fn to_engine_error(&self, model: &str) -> EngineError {
        match self {
            Failure::Error(e) => EngineError::Inference(e.clone()),
            Failure::Panic(_) => EngineError::BackendPanicked {
                model: model.to_string(),
            },
        }
    }
}

struct Pending {
    outputs: Vec<Option<Vec<f32>>>,
    remaining: usize,
    compute: Duration,
    batch_size: usize,
    queue_wait: Duration,
}

type Reply = Option<(oneshot::Sender<JobResult>, tracing::Span)>;

impl Worker {
    fn run(mut self, intake: Intake) {
        while let Ok(first) = intake.receiver.recv() {
            let jobs = collect(&self.config, first, &intake.receiver);
            intake.start_round(&jobs);
            metrics::gauge!(names::QUEUE_DEPTH, "model" => self.config.model.clone())
                .set(intake.receiver.len() as f64);
            let jobs = drop_unanswerable(&self.config, jobs);
            if !jobs.is_empty() {
                self.run_round(jobs, &intake.pace);
            }
            intake.end_round();
        }
    }

    fn run_round(&mut self, jobs: Vec<Job>, pace: &Pace) {
        let config = &self.config;
        let started = Instant::now();
        let mut pending: Vec<Pending> = jobs
            .iter()
            .map(|job| {
                let queue_wait = started.saturating_duration_since(job.enqueued);
                metrics::histogram!(names::QUEUE_WAIT, "model" => config.model.clone())
                    .record(queue_wait.as_secs_f64());
                Pending {
                    outputs: vec![None; job.inputs.len()],
                    remaining: job.inputs.len(),
                    compute: Duration::ZERO,
                    batch_size: 0,
                    queue_wait,
                }
            })
            .collect();
        let mut replies: Vec<Reply> = Vec::with_capacity(jobs.len());
        let mut inputs: Vec<Vec<ModelInput>> = Vec::with_capacity(jobs.len());
        let mut spans = Vec::with_capacity(jobs.len());
        for job in jobs {
            drop(job.queue_span);
            let inference =
                tracing::info_span!(parent: &job.span, "inference", model = %config.model);
            replies.push(Some((job.reply, inference)));
            spans.push(job.span);
            inputs.push(job.inputs);
        }

        for batch_items in plan(config, &inputs) {
            let rows: Vec<&ModelInput> = batch_items.iter().map(|&(j, i)| &inputs[j][i]).collect();
            let batch = Batch::of(&rows, config.pad_id);
            let batch_span = tracing::info_span!(
                parent: None,
                "batch",
                model = %config.model,
                batch_size = rows.len(),
                seq_len = batch.as_ref().map_or(0, Batch::seq_len)
            );
            for &(j, _) in &batch_items {
                batch_span.follows_from(&spans[j]);
            }
            let batch_started = Instant::now();
            let result = match &batch {
                Ok(batch) => batch_span.in_scope(|| {
                    self.health
                        .forward(self.backend.as_ref(), &config.model, batch)
                }),
                Err(e) => Err(Failure::Error(e.to_string())),
            };
            let compute = batch_started.elapsed();
            let failure = match (result, batch) {
                (Ok(vectors), Ok(batch)) => {
                    record_batch(config, &batch, compute);
                    pace.observe(batch.cost(), compute);
                    answer(
                        &batch_items,
                        vectors,
                        &batch,
                        compute,
                        &mut pending,
                        &mut replies,
                    );
                    continue;
                }
                (Err(failure), _) => failure,
                (Ok(_), Err(e)) => Failure::Error(e.to_string()),
            };
            match &failure {
                Failure::Error(e) => {
                    tracing::error!(model = %config.model, error = %e, "inference failed")
                }
                Failure::Panic(message) => {
                    tracing::error!(model = %config.model, panic = %message, "the backend panicked")
                }
            }
            // A failed or panicked batch fails every request of the round still waiting:
            // the backend just misbehaved, so the rest of the round is not fed to it.
            for (reply, _) in replies.iter_mut().filter_map(Option::take) {
                let _ = reply.send(Err(failure.to_engine_error(&config.model)));
            }
            return;
        }
    }
}

/// Files a batch's vectors under their jobs, and answers each job whose last input this was.
fn answer(
    batch_items: &[(usize, usize)],
    vectors: Vec<Vec<f32>>,
    batch: &Batch,
    compute: Duration,
    pending: &mut [Pending],
    replies: &mut [Reply],
) {
    for ((j, i), vector) in batch_items.iter().copied().zip(vectors) {
        let p = &mut pending[j];
        p.outputs[i] = Some(vector);
        p.remaining -= 1;
    }
    let mut seen = Vec::new();
    for &(j, _) in batch_items {
        if seen.contains(&j) {
            continue;
        }
        seen.push(j);
        let p = &mut pending[j];
        p.compute += compute;
        p.batch_size = p.batch_size.max(batch.batch_size());
        if p.remaining == 0 {
            if let Some((reply, _inference_span)) = replies[j].take() {
                let outputs = std::mem::take(&mut p.outputs)
                    .into_iter()
                    .map(|o| o.expect("every input of a finished job has an output"))
                    .collect();
                // The caller may have left meanwhile; nothing to do then.
                let _ = reply.send(Ok(JobOutput {
                    outputs,
                    queue_wait: p.queue_wait,
                    compute: p.compute,
                    batch_size: p.batch_size,
                }));
            }
        }
    }
}

/// The text a panic carried, when it was a string (as `panic!` and `expect` make it).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
/// The first job plus what is queued, up to one full batch of inputs.
fn collect(config: &WorkerConfig, first: Job, receiver: &Receiver<Job>) -> Vec<Job> {
    let wait_until = Instant::now() + config.max_batch_delay;
    let mut inputs = first.inputs.len();
    let mut jobs = vec![first];
    while inputs < config.max_batch_size {
        let next = match receiver.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if config.max_batch_delay.is_zero() => break,
            Err(TryRecvError::Empty) => match receiver.recv_deadline(wait_until) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            },
        };
        inputs += next.inputs.len();
        jobs.push(next);
    }
    jobs
}

fn drop_unanswerable(config: &WorkerConfig, jobs: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    let mut kept = Vec::with_capacity(jobs.len());
    for job in jobs {
        let reason = if job.reply.is_closed() {
            "client_left"
        } else if job.deadline <= now {
            "deadline"
        } else {
            kept.push(job);
            continue;
        };
        metrics::counter!(names::EXPIRED, "model" => config.model.clone(), "reason" => reason)
            .increment(1);
        let _ = job.reply.send(Err(EngineError::DeadlineExceeded));
    }
    kept
}

/// The round's inputs as (job, input) pairs, sorted by length so padding stays small, cut
/// into batches bounded by input count and padded tokens.
fn plan(config: &WorkerConfig, inputs: &[Vec<ModelInput>]) -> Vec<Vec<(usize, usize)>> {
    let mut items: Vec<(usize, usize, usize)> = inputs
        .iter()
        .enumerate()
        .flat_map(|(j, xs)| xs.iter().enumerate().map(move |(i, x)| (j, i, x.cost())))
        .collect();
    items.sort_by_key(|&(_, _, len)| len);
    let mut batches = Vec::new();
    let mut current: Vec<(usize, usize)> = Vec::new();
    for (j, i, len) in items {
        // Sorted ascending, so `len` is the longest input of the batch if this one joins.
        let padded = (current.len() + 1) * len;
        if !current.is_empty()
            && (current.len() == config.max_batch_size || padded > config.max_batch_tokens)
        {
            batches.push(std::mem::take(&mut current));
        }
        current.push((j, i));
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn record_batch(config: &WorkerConfig, batch: &Batch, compute: Duration) {
    let model = config.model.clone();
    let size = batch.batch_size();
    metrics::histogram!(names::INFERENCE_DURATION, "model" => model.clone())
        .record(compute.as_secs_f64());
    metrics::histogram!(names::BATCH_SIZE, "model" => model.clone()).record(size as f64);
    metrics::counter!(names::INFERENCE_INPUTS, "model" => model).increment(size as u64);
    tracing::debug!(
        model = %config.model,
        batch_size = size,
        seq_len = batch.seq_len(),
        cost = batch.cost(),
        compute_ms = compute.as_secs_f64() * 1e3,
        "batch"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    use super::*;
    use crate::queue::tests::job;
    use crate::testing::{self, ScriptedBackend};

    fn input(len: usize) -> ModelInput {
        ModelInput::Text(crate::tokenize::TokenizedInput {
            ids: vec![1; len],
            type_ids: vec![0; len],
        })
    }

    fn config(max_batch_size: usize, max_batch_tokens: usize) -> WorkerConfig {
        WorkerConfig {
            model: "test".into(),
            max_batch_size,
            max_batch_tokens,
            max_batch_delay: Duration::ZERO,
            pad_id: 0,
        }
    }

    fn limits() -> QueueLimits {
        QueueLimits {
            max_requests: 8,
            max_tokens: 10_000,
            max_wait: None,
        }
    }

    /// A hook that reports the failure reason on a channel.
    fn failure_hook() -> (FailureHook, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        (
            Box::new(move |reason| {
                let _ = tx.send(reason);
            }),
            rx,
        )
    }

    #[test]
    fn batches_group_by_length_and_respect_both_bounds() {
        let inputs = vec![
            vec![input(100), input(3)],
            vec![input(4), input(90), input(5)],
        ];
        let batches = plan(&config(2, 1000), &inputs);
        let lens: Vec<Vec<usize>> = batches
            .iter()
            .map(|b| b.iter().map(|&(j, i)| inputs[j][i].cost()).collect())
            .collect();
        assert_eq!(lens, [vec![3, 4], vec![5, 90], vec![100]]);
        // A token budget of 150 padded tokens keeps 90 and 100 apart.
        let batches = plan(&config(8, 150), &inputs);
        assert!(batches.iter().all(|b| {
            let longest = b.iter().map(|&(j, i)| inputs[j][i].cost()).max().unwrap();
            b.len() == 1 || b.len() * longest <= 150
        }));
    }

    #[tokio::test]
    async fn answers_in_input_order_across_batches() {
        let (hook, _) = failure_hook();
        let queue = spawn(
            config(2, 10_000),
            Box::new(ScriptedBackend::new(3)),
            limits(),
            hook,
        );
        let (job, rx) = job(&[30, 1, 20, 2, 10], Duration::from_secs(10));
        assert!(queue.try_push(job).is_ok());
        let out = rx.await.unwrap().unwrap();
        let lens: Vec<f32> = out.outputs.iter().map(|v| v[0]).collect();
        assert_eq!(lens, [30.0, 1.0, 20.0, 2.0, 10.0]);
        assert!(out.outputs.iter().all(|v| v[1] <= 2.0));
        assert_eq!(out.batch_size, 2);
    }

    #[tokio::test]
    async fn expired_and_abandoned_requests_cost_no_compute() {
        let backend = ScriptedBackend::new(3);
        let rows = backend.rows.clone();
        let (hook, _) = failure_hook();
        let queue = spawn(config(4, 10_000), Box::new(backend), limits(), hook);
        let (expired, expired_rx) = job(&[3], Duration::ZERO);
        let (abandoned, abandoned_rx) = job(&[3], Duration::from_secs(10));
        drop(abandoned_rx);
        // Queued behind the other two, so its answer means they have been dealt with.
        let (live, live_rx) = job(&[5], Duration::from_secs(10));
        for job in [expired, abandoned, live] {
            assert!(queue.try_push(job).is_ok());
        }
        assert!(matches!(
            expired_rx.await.unwrap(),
            Err(EngineError::DeadlineExceeded)
        ));
        let out = live_rx.await.unwrap().unwrap();
        assert_eq!(out.outputs, [vec![5.0, 1.0, 5.0]]);
        assert_eq!(
            rows.load(Ordering::SeqCst),
            1,
            "only the live request's input reaches the backend"
        );
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_requests_and_the_worker_keeps_serving() {
        let model = "panics-on-the-first-batch";
        let before = testing::counter(names::BACKEND_PANICS, model);
        let backend = ScriptedBackend::panicking_on(3, |call| call == 0);
        let (hook, failed) = failure_hook();
        let config = WorkerConfig {
            model: model.into(),
            ..config(4, 10_000)
        };
        let queue = spawn(config, Box::new(backend), limits(), hook);

        let (first, first_rx) = job(&[3, 4], Duration::from_secs(10));
        assert!(queue.try_push(first).is_ok());
        match first_rx.await.unwrap() {
            Err(e @ EngineError::BackendPanicked { .. }) => {
                assert!(e.to_string().contains(model), "{e}")
            }
            other => panic!("expected the panic's error, got {other:?}"),
        }
        assert_eq!(testing::counter(names::BACKEND_PANICS, model), before + 1);

        let (next, next_rx) = job(&[2], Duration::from_secs(10));
        assert!(queue.try_push(next).is_ok());
        let out = next_rx
            .await
            .unwrap()
            .expect("the worker survived the panic");
        assert_eq!(out.outputs, [vec![2.0, 1.0, 2.0]]);
        assert!(
            failed.try_recv().is_err(),
            "one panic does not fail the model"
        );
    }

    #[tokio::test]
    async fn panics_in_a_row_report_the_model_failed_and_a_success_resets_the_count() {
        let model = "keeps-panicking";
        let before = testing::counter(names::BACKEND_PANICS, model);
        let n = PANICS_BEFORE_FAILED as usize;
        // Panics on every call but call n - 1: n - 1 panics, a success, then panics.
        let backend = ScriptedBackend::panicking_on(3, move |call| call != n - 1);
        let (hook, failed) = failure_hook();
        let config = WorkerConfig {
            model: model.into(),
            ..config(4, 10_000)
        };
        let queue = spawn(config, Box::new(backend), limits(), hook);
        let run = |lens: &[usize]| {
            let (job, rx) = job(lens, Duration::from_secs(10));
            assert!(queue.try_push(job).is_ok());
            rx
        };
        for _ in 0..n - 1 {
            assert!(matches!(
                run(&[3]).await.unwrap(),
                Err(EngineError::BackendPanicked { .. })
            ));
        }
        assert!(run(&[3]).await.unwrap().is_ok());
        for k in 0..n {
            assert!(
                failed.try_recv().is_err(),
                "failed after {k} panics in a row"
            );
            assert!(matches!(
                run(&[3]).await.unwrap(),
                Err(EngineError::BackendPanicked { .. })
            ));
        }
        let reason = failed.try_recv().expect("the model is reported failed");
        assert!(reason.contains("panicked"), "{reason}");
        assert_eq!(
            testing::counter(names::BACKEND_PANICS, model),
            before + 2 * n as u64 - 1
        );
    }
}
