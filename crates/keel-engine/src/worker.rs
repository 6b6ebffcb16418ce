//! The thread that owns one model's backend, forms its batches and runs them.
//!
//! Requests wait on a bounded channel. Each round the worker takes the first request, then
//! whatever else is queued (waiting up to `max_batch_delay` for more only when that is
//! configured and the batch is not full), drops the requests that can no longer be answered
//! (client gone, deadline passed) before they cost compute, sorts the inputs by length so
//! padding stays small, and cuts them into batches bounded by `max_batch_size` inputs and
//! `max_batch_tokens` padded tokens. A request's inputs may span batches; it is answered as
//! soon as its last input is done. Inference never runs on the async runtime's threads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use keel_telemetry::metrics::names;
use tokio::sync::oneshot;

use crate::backend::{Backend, EncodedBatch};
use crate::error::EngineError;
use crate::tokenize::TokenizedInput;

/// What a job got back: one vector per input, and how it went.
#[derive(Debug)]
pub struct JobOutput {
    pub outputs: Vec<Vec<f32>>,
    /// From enqueueing to the start of the round that ran the job.
    pub queue_wait: Duration,
    /// Compute time of the batches the job's inputs ran in.
    pub compute: Duration,
    /// Inputs in the largest batch the job was part of.
    pub batch_size: usize,
}

pub type JobResult = Result<JobOutput, EngineError>;

pub struct Job {
    pub inputs: Vec<TokenizedInput>,
    pub tokens: usize,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
    /// The request's span: parent of this job's spans in the worker.
    pub span: tracing::Span,
    /// Open from enqueueing until the job's round starts, so traces show the queue wait.
    pub queue_span: tracing::Span,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub model: String,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_batch_delay: Duration,
    pub pad_id: u32,
}

/// The sending side: admission control in requests (channel bound), in tokens, and in the
/// time a new request would wait.
#[derive(Clone)]
pub struct JobQueue {
    sender: Sender<Job>,
    queued_tokens: Arc<AtomicUsize>,
    max_queued_tokens: usize,
    pace: Arc<Pace>,
    max_wait: Option<Duration>,
}

pub enum Admission {
    Full,
    /// The queue ahead would take longer than the wait bound to drain.
    TooSlow(Duration),
    Stopped,
}

/// How fast the worker drains its queue: a moving average of compute seconds per real token,
/// learned from the batches it runs (so it reflects the batch sizes the current load gives),
/// and the tokens of the round running now, which a new request also waits for.
#[derive(Default)]
struct Pace {
    seconds_per_token: AtomicU64,
    running_tokens: AtomicUsize,
}

impl Pace {
    fn seconds_per_token(&self) -> f64 {
        f64::from_bits(self.seconds_per_token.load(Ordering::Relaxed))
    }

    fn observe(&self, tokens: usize, compute: Duration) {
        if tokens == 0 {
            return;
        }
        let sample = compute.as_secs_f64() / tokens as f64;
        let old = self.seconds_per_token();
        let new = if old == 0.0 {
            sample
        } else {
            0.8 * old + 0.2 * sample
        };
        self.seconds_per_token
            .store(new.to_bits(), Ordering::Relaxed);
    }

    /// The predicted wait of a request that finds `queued` tokens ahead of it (None until
    /// the first batch has run).
    fn wait(&self, queued: usize) -> Option<Duration> {
        let spt = self.seconds_per_token();
        let ahead = queued + self.running_tokens.load(Ordering::Relaxed);
        (spt > 0.0).then(|| Duration::from_secs_f64(ahead as f64 * spt))
    }
}

impl JobQueue {
    /// Enqueues without waiting; refuses at once when the queue is full.
    pub fn try_push(&self, job: Job) -> Result<(), Admission> {
        let tokens = job.tokens;
        let before = self.queued_tokens.fetch_add(tokens, Ordering::SeqCst);
        // A single request larger than the whole budget is still admitted into an empty
        // queue, or it could never run.
        if before > 0 && before + tokens > self.max_queued_tokens {
            self.queued_tokens.fetch_sub(tokens, Ordering::SeqCst);
            return Err(Admission::Full);
        }
        // Refusing now, when the wait is predicted too long, keeps the admitted requests'
        // latency bounded under overload and tells the client at once (429 + Retry-After)
        // rather than after the wait.
        if let Some(wait) = self.too_slow(before, job.deadline) {
            self.queued_tokens.fetch_sub(tokens, Ordering::SeqCst);
            return Err(Admission::TooSlow(wait));
        }
        self.sender.try_send(job).map_err(|e| {
            self.queued_tokens.fetch_sub(tokens, Ordering::SeqCst);
            match e {
                crossbeam_channel::TrySendError::Full(_) => Admission::Full,
                crossbeam_channel::TrySendError::Disconnected(_) => Admission::Stopped,
            }
        })
    }

    /// The predicted wait behind `queued` tokens, when it is longer than the bound: the
    /// request's own deadline, or `max_wait` when that is shorter.
    fn too_slow(&self, queued: usize, deadline: Instant) -> Option<Duration> {
        let wait = self.pace.wait(queued)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let bound = self.max_wait.map_or(left, |max| max.min(left));
        (queued > 0 && wait > bound).then_some(wait)
    }

    /// Whether the queue as it stands is already predicted to take longer than the bound: a
    /// cheap check before the caller spends work (tokenization) on a request.
    pub fn over_bound(&self, deadline: Instant) -> Option<Duration> {
        self.too_slow(self.queued_tokens.load(Ordering::SeqCst), deadline)
    }

    pub fn depth(&self) -> usize {
        self.sender.len()
    }
}

/// Starts the worker thread; it ends when every [`JobQueue`] clone is dropped.
pub fn spawn(
    config: WorkerConfig,
    backend: Box<dyn Backend>,
    max_queued_requests: usize,
    max_queued_tokens: usize,
    max_wait: Option<Duration>,
) -> JobQueue {
    let (sender, receiver) = crossbeam_channel::bounded(max_queued_requests);
    let queued_tokens = Arc::new(AtomicUsize::new(0));
    let pace = Arc::new(Pace::default());
    let (counter, worker_pace) = (queued_tokens.clone(), pace.clone());
    std::thread::Builder::new()
        .name(format!("keel-infer-{}", config.model))
        .spawn(move || run(config, backend, receiver, counter, worker_pace))
        .expect("spawning an inference thread");
    JobQueue {
        sender,
        queued_tokens,
        max_queued_tokens,
        pace,
        max_wait,
    }
}

fn run(
    config: WorkerConfig,
    backend: Box<dyn Backend>,
    receiver: Receiver<Job>,
    queued_tokens: Arc<AtomicUsize>,
    pace: Arc<Pace>,
) {
    while let Ok(first) = receiver.recv() {
        let jobs = collect(&config, first, &receiver);
        let taken: usize = jobs.iter().map(|j| j.tokens).sum();
        pace.running_tokens.store(taken, Ordering::Relaxed);
        queued_tokens.fetch_sub(taken, Ordering::SeqCst);
        metrics::gauge!(names::QUEUE_DEPTH, "model" => config.model.clone())
            .set(receiver.len() as f64);
        let jobs = drop_unanswerable(&config, jobs);
        if !jobs.is_empty() {
            run_round(&config, backend.as_ref(), jobs, &pace);
        }
        pace.running_tokens.store(0, Ordering::Relaxed);
    }
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

struct Pending {
    outputs: Vec<Option<Vec<f32>>>,
    remaining: usize,
    compute: Duration,
    batch_size: usize,
    queue_wait: Duration,
}

fn run_round(config: &WorkerConfig, backend: &dyn Backend, jobs: Vec<Job>, pace: &Pace) {
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
    let mut replies: Vec<Option<(oneshot::Sender<JobResult>, tracing::Span)>> =
        Vec::with_capacity(jobs.len());
    let mut inputs: Vec<Vec<TokenizedInput>> = Vec::with_capacity(jobs.len());
    let mut spans = Vec::with_capacity(jobs.len());
    for job in jobs {
        drop(job.queue_span);
        let inference = tracing::info_span!(parent: &job.span, "inference", model = %config.model);
        replies.push(Some((job.reply, inference)));
        spans.push(job.span);
        inputs.push(job.inputs);
    }
    let batches = plan(config, &inputs);

    for batch_items in batches {
        let rows: Vec<&TokenizedInput> = batch_items.iter().map(|&(j, i)| &inputs[j][i]).collect();
        let batch = EncodedBatch::pad(&rows, config.pad_id);
        let batch_span = tracing::info_span!(
            parent: None,
            "batch",
            model = %config.model,
            batch_size = batch.batch_size,
            seq_len = batch.seq_len
        );
        for &(j, _) in &batch_items {
            batch_span.follows_from(&spans[j]);
        }
        let batch_started = Instant::now();
        let result = batch_span.in_scope(|| backend.forward(&batch));
        let compute = batch_started.elapsed();
        match result {
            Ok(vectors) => {
                record_batch(config, &batch, compute);
                pace.observe(batch.real_tokens(), compute);
                for ((j, i), vector) in batch_items.iter().copied().zip(vectors) {
                    let p = &mut pending[j];
                    p.outputs[i] = Some(vector);
                    p.remaining -= 1;
                }
                let mut seen = Vec::new();
                for &(j, _) in &batch_items {
                    if seen.contains(&j) {
                        continue;
                    }
                    seen.push(j);
                    let p = &mut pending[j];
                    p.compute += compute;
                    p.batch_size = p.batch_size.max(batch.batch_size);
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
            Err(e) => {
                tracing::error!(model = %config.model, error = %e, "inference failed");
                for (reply, _) in replies.iter_mut().filter_map(Option::take) {
                    let _ = reply.send(Err(EngineError::Inference(e.0.clone())));
                }
                return;
            }
        }
    }
}

/// The round's inputs as (job, input) pairs, sorted by length so padding stays small, cut
/// into batches bounded by input count and padded tokens.
fn plan(config: &WorkerConfig, inputs: &[Vec<TokenizedInput>]) -> Vec<Vec<(usize, usize)>> {
    let mut items: Vec<(usize, usize, usize)> = inputs
        .iter()
        .enumerate()
        .flat_map(|(j, xs)| xs.iter().enumerate().map(move |(i, x)| (j, i, x.len())))
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

fn record_batch(config: &WorkerConfig, batch: &EncodedBatch, compute: Duration) {
    let model = config.model.clone();
    metrics::histogram!(names::INFERENCE_DURATION, "model" => model.clone())
        .record(compute.as_secs_f64());
    metrics::histogram!(names::BATCH_SIZE, "model" => model.clone())
        .record(batch.batch_size as f64);
    metrics::counter!(names::INFERENCE_INPUTS, "model" => model).increment(batch.batch_size as u64);
    tracing::debug!(
        model = %config.model,
        batch_size = batch.batch_size,
        seq_len = batch.seq_len,
        tokens = batch.real_tokens(),
        compute_ms = compute.as_secs_f64() * 1e3,
        "batch"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    /// Echoes each input's length and its batch's size, so tests see how batches formed.
    struct ShapeBackend;

    impl Backend for ShapeBackend {
        fn forward(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>, BackendError> {
            Ok(batch
                .attention_mask
                .chunks(batch.seq_len)
                .map(|row| {
                    vec![
                        row.iter().sum::<u32>() as f32,
                        batch.batch_size as f32,
                        batch.seq_len as f32,
                    ]
                })
                .collect())
        }
    }

    fn input(len: usize) -> TokenizedInput {
        TokenizedInput {
            ids: vec![1; len],
            type_ids: vec![0; len],
        }
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

    fn job(lens: &[usize], deadline: Duration) -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, rx) = oneshot::channel();
        let inputs: Vec<_> = lens.iter().map(|&n| input(n)).collect();
        let now = Instant::now();
        let job = Job {
            tokens: lens.iter().sum(),
            inputs,
            enqueued: now,
            deadline: now + deadline,
            reply,
            span: tracing::Span::none(),
            queue_span: tracing::Span::none(),
        };
        (job, rx)
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
            .map(|b| b.iter().map(|&(j, i)| inputs[j][i].len()).collect())
            .collect();
        assert_eq!(lens, [vec![3, 4], vec![5, 90], vec![100]]);
        // A token budget of 150 padded tokens keeps 90 and 100 apart.
        let batches = plan(&config(8, 150), &inputs);
        assert!(batches.iter().all(|b| {
            let longest = b.iter().map(|&(j, i)| inputs[j][i].len()).max().unwrap();
            b.len() == 1 || b.len() * longest <= 150
        }));
    }

    #[tokio::test]
    async fn answers_in_input_order_across_batches() {
        let queue = spawn(config(2, 10_000), Box::new(ShapeBackend), 8, 10_000, None);
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
        let queue = spawn(config(4, 10_000), Box::new(ShapeBackend), 8, 10_000, None);
        let (expired, expired_rx) = job(&[3], Duration::ZERO);
        let (abandoned, abandoned_rx) = job(&[3], Duration::from_secs(10));
        drop(abandoned_rx);
        assert!(queue.try_push(expired).is_ok());
        assert!(queue.try_push(abandoned).is_ok());
        assert!(matches!(
            expired_rx.await.unwrap(),
            Err(EngineError::DeadlineExceeded)
        ));
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        // No worker drains this channel, so it fills.
        let (sender, _receiver) = crossbeam_channel::bounded(1);
        let queue = JobQueue {
            sender,
            queued_tokens: Arc::new(AtomicUsize::new(0)),
            max_queued_tokens: 10,
            pace: Arc::new(Pace::default()),
            max_wait: None,
        };
        assert!(queue.try_push(job(&[4], Duration::from_secs(1)).0).is_ok());
        assert!(matches!(
            queue.try_push(job(&[4], Duration::from_secs(1)).0),
            Err(Admission::Full)
        ));
        // The token budget refuses too, before the channel bound.
        let (sender, _receiver) = crossbeam_channel::bounded(10);
        let queue = JobQueue {
            sender,
            queued_tokens: Arc::new(AtomicUsize::new(0)),
            max_queued_tokens: 10,
            pace: Arc::new(Pace::default()),
            max_wait: None,
        };
        assert!(queue.try_push(job(&[8], Duration::from_secs(1)).0).is_ok());
        assert!(matches!(
            queue.try_push(job(&[8], Duration::from_secs(1)).0),
            Err(Admission::Full)
        ));
    }

    /// A queue no worker drains (the receiver is returned to keep it open), whose pace is
    /// what a worker would have learned: 1 ms per token.
    fn paced_queue(max_wait: Option<Duration>) -> (JobQueue, Receiver<Job>) {
        let (sender, receiver) = crossbeam_channel::bounded(100);
        let pace = Arc::new(Pace::default());
        pace.observe(10, Duration::from_millis(10));
        let queue = JobQueue {
            sender,
            queued_tokens: Arc::new(AtomicUsize::new(0)),
            max_queued_tokens: 100_000,
            pace,
            max_wait,
        };
        (queue, receiver)
    }

    #[test]
    fn a_queue_predicted_to_drain_too_slowly_refuses_at_once() {
        let (queue, _receiver) = paced_queue(Some(Duration::from_millis(50)));
        let pace = queue.pace.clone();
        // Up to 40 tokens ahead (40 ms) a request is admitted; 50 + 20 running (70 ms) not.
        for _ in 0..5 {
            assert!(queue.try_push(job(&[10], Duration::from_secs(1)).0).is_ok());
        }
        pace.running_tokens.store(20, Ordering::Relaxed);
        match queue.try_push(job(&[10], Duration::from_secs(1)).0) {
            Err(Admission::TooSlow(wait)) => assert_eq!(wait.as_millis(), 70),
            _ => panic!("a 70 ms wait exceeds the 50 ms bound"),
        }
    }

    #[test]
    fn without_a_bound_a_request_that_would_miss_its_deadline_is_refused() {
        let (queue, _receiver) = paced_queue(None);
        for _ in 0..10 {
            assert!(queue
                .try_push(job(&[10], Duration::from_secs(10)).0)
                .is_ok());
        }
        // 100 ms of work ahead: a 50 ms deadline cannot be met, a 1 s one can.
        assert!(matches!(
            queue.try_push(job(&[10], Duration::from_millis(50)).0),
            Err(Admission::TooSlow(_))
        ));
        assert!(queue.try_push(job(&[10], Duration::from_secs(1)).0).is_ok());
    }
}
