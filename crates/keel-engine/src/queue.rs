//! A model's queue: the requests waiting for its worker, and admission control in front of
//! it.
//!
//! A request becomes a [`Job`] (its tokenized texts or preprocessed images, deadline and reply channel) and is
//! pushed onto a bounded channel by [`JobQueue::try_push`], which refuses at once, as an
//! [`Admission`], when the queue is full in requests or tokens or when the wait it predicts
//! from the worker's [`Pace`] is longer than the request can afford. The worker
//! ([`crate::worker`]) drains the other end, the [`Intake`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::backend::ModelInput;
use crate::error::EngineError;

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
    pub inputs: Vec<ModelInput>,
    /// The inputs' cost in the queue's unit ([`ModelInput::cost`]): tokens, or images.
    pub tokens: usize,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
    /// The request's span: parent of this job's spans in the worker.
    pub span: tracing::Span,
    /// Open from enqueueing until the job's round starts, so traces show the queue wait.
    pub queue_span: tracing::Span,
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

/// Why a job was not admitted.
#[derive(Debug)]
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
pub(crate) struct Pace {
    seconds_per_token: AtomicU64,
    running_tokens: AtomicUsize,
}

impl Pace {
    fn seconds_per_token(&self) -> f64 {
        f64::from_bits(self.seconds_per_token.load(Ordering::Relaxed))
    }

    pub(crate) fn observe(&self, tokens: usize, compute: Duration) {
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

/// The worker's end of a [`JobQueue`]: the jobs, and the bookkeeping admission reads.
pub(crate) struct Intake {
    pub(crate) receiver: Receiver<Job>,
    queued_tokens: Arc<AtomicUsize>,
    pub(crate) pace: Arc<Pace>,
}

impl Intake {
    /// A round took `jobs` off the queue: their tokens now count as running, not queued.
    pub(crate) fn start_round(&self, jobs: &[Job]) {
        let taken: usize = jobs.iter().map(|j| j.tokens).sum();
        self.pace.running_tokens.store(taken, Ordering::Relaxed);
        self.queued_tokens.fetch_sub(taken, Ordering::SeqCst);
    }

    pub(crate) fn end_round(&self) {
        self.pace.running_tokens.store(0, Ordering::Relaxed);
    }
}

/// A queue of at most `max_requests` jobs and (but for a single oversized job) `max_tokens`
/// tokens, refusing jobs predicted to wait longer than `max_wait`.
pub(crate) fn bounded(
    max_requests: usize,
    max_tokens: usize,
    max_wait: Option<Duration>,
) -> (JobQueue, Intake) {
    let (sender, receiver) = crossbeam_channel::bounded(max_requests);
    let queued_tokens = Arc::new(AtomicUsize::new(0));
    let pace = Arc::new(Pace::default());
    let queue = JobQueue {
        sender,
        queued_tokens: queued_tokens.clone(),
        max_queued_tokens: max_tokens,
        pace: pace.clone(),
        max_wait,
    };
    let intake = Intake {
        receiver,
        queued_tokens,
        pace,
    };
    (queue, intake)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn input(len: usize) -> ModelInput {
        ModelInput::Text(crate::tokenize::TokenizedInput {
            ids: vec![1; len],
            type_ids: vec![0; len],
        })
    }

    /// A job of inputs of the given lengths, and the receiver of its answer.
    pub(crate) fn job(lens: &[usize], deadline: Duration) -> (Job, oneshot::Receiver<JobResult>) {
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
    fn a_full_queue_refuses_at_once() {
        // No worker drains these queues (the intake is kept to keep them open), so they fill.
        let (queue, _intake) = bounded(1, 10, None);
        assert!(queue.try_push(job(&[4], Duration::from_secs(1)).0).is_ok());
        assert!(matches!(
            queue.try_push(job(&[4], Duration::from_secs(1)).0),
            Err(Admission::Full)
        ));
        // The token budget refuses too, before the channel bound.
        let (queue, _intake) = bounded(10, 10, None);
        assert!(queue.try_push(job(&[8], Duration::from_secs(1)).0).is_ok());
        assert!(matches!(
            queue.try_push(job(&[8], Duration::from_secs(1)).0),
            Err(Admission::Full)
        ));
    }

    #[test]
    fn a_queue_whose_worker_is_gone_says_stopped() {
        let (queue, intake) = bounded(1, 10, None);
        drop(intake);
        assert!(matches!(
            queue.try_push(job(&[4], Duration::from_secs(1)).0),
            Err(Admission::Stopped)
        ));
    }

    /// A queue no worker drains (the intake is returned to keep it open), whose pace is
    /// what a worker would have learned: 1 ms per token.
    fn paced_queue(max_wait: Option<Duration>) -> (JobQueue, Intake) {
        let (queue, intake) = bounded(100, 100_000, max_wait);
        intake.pace.observe(10, Duration::from_millis(10));
        (queue, intake)
    }

    #[test]
    fn a_queue_predicted_to_drain_too_slowly_refuses_at_once() {
        let (queue, intake) = paced_queue(Some(Duration::from_millis(50)));
        // Up to 40 tokens ahead (40 ms) a request is admitted; 50 + 20 running (70 ms) not.
        for _ in 0..5 {
            assert!(queue.try_push(job(&[10], Duration::from_secs(1)).0).is_ok());
        }
        intake.pace.running_tokens.store(20, Ordering::Relaxed);
        match queue.try_push(job(&[10], Duration::from_secs(1)).0) {
            Err(Admission::TooSlow(wait)) => assert_eq!(wait.as_millis(), 70),
            other => panic!("a 70 ms wait exceeds the 50 ms bound, got {other:?}"),
        }
    }

    #[test]
    fn without_a_bound_a_request_that_would_miss_its_deadline_is_refused() {
        let (queue, _intake) = paced_queue(None);
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
