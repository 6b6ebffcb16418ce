//! Continuous batching over one llama.cpp context with N sequence slots.
//!
//! One thread owns the context. Each step it takes new requests into free slots, then builds
//! one decode batch that holds the next token of every running sequence and as much of the
//! new prompts as the step budget allows (prefill chunks), decodes it once, and samples a
//! token for every sequence whose logits came out. A request that ends (stop, length,
//! deadline, or a client that left) frees its slot at once; the next one takes it at the
//! next step, without waiting for the others (iteration-level scheduling, as in Orca and
//! llama.cpp's server).
//!
//! Prefix reuse: a slot keeps the KV cache of its last request. A new request goes to the
//! free slot whose cached tokens share the longest prefix with its prompt, and only the rest
//! of the prompt is computed: under steady traffic with a shared system prompt, every slot
//! soon holds it.
//!
//! Each slot's KV cache is a stream of its own (`context_per_slot` cells; llama.cpp's
//! `kv_unified` off): attention then spans only the sequence's own cells. With one unified
//! cache, a prefix could be shared between slots without copying, but every token attends
//! over the cells of all slots (masked), which measured a third slower at one stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::generate::{
    FinishReason, GenerateError, GenerationEvent, GenerationSummary, Sampling,
};
use keel_telemetry::metrics::names;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use tokio::sync::mpsc::UnboundedSender;

use crate::sampler;
use crate::text::{Step, TextStream};

/// A request admitted by the handle, waiting for a slot.
pub struct Job {
    pub tokens: Vec<LlamaToken>,
    pub sampling: Sampling,
    /// Already capped by the slot's context.
    pub max_tokens: u32,
    pub stops: Vec<String>,
    pub ignore_eos: bool,
    pub deadline: Instant,
    pub request_id: String,
    pub events: UnboundedSender<GenerationEvent>,
    pub queued_at: Instant,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub model: String,
    pub slots: u32,
    pub context_per_slot: u32,
    /// Most tokens one decode step holds (running sequences first, then prefill chunks).
    pub step_tokens: u32,
    pub prefix_cache: bool,
}

/// Counters shared with the handle (admission reads them).
#[derive(Default)]
pub struct Shared {
    /// Requests sent to the scheduler and not yet in a slot.
    pub waiting: AtomicUsize,
    /// Slots holding a request.
    pub busy: AtomicUsize,
    /// Mean milliseconds a request holds a slot (a moving average), for Retry-After.
    pub mean_hold_ms: AtomicUsize,
}

struct Active {
    job: Job,
    sampler: LlamaSampler,
    text: TextStream,
    prompt_len: usize,
    reused: usize,
    generated: u32,
    /// The token sampled last step, fed to the model this step.
    next: Option<LlamaToken>,
    /// Where this slot's logits are in the current batch.
    logits_at: Option<i32>,
    started: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

struct Slot {
    seq: i32,
    /// Tokens whose keys and values are in this slot's sequence, in order.
    cached: Vec<LlamaToken>,
    last_used: u64,
    active: Option<Active>,
}

pub struct Scheduler<'m> {
    config: SchedulerConfig,
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    waiting: VecDeque<Job>,
    shared: Arc<Shared>,
    step: u64,
    /// Tokens per second over recent steps (an exponential moving average).
    rate: f64,
}

enum Ending {
    Finished(FinishReason),
    Cancelled,
    Failed(GenerateError),
}

impl<'m> Scheduler<'m> {
    pub fn new(
        config: SchedulerConfig,
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        shared: Arc<Shared>,
    ) -> Self {
        let slots = (0..config.slots as i32)
            .map(|seq| Slot {
                seq,
                cached: Vec::new(),
                last_used: 0,
                active: None,
            })
            .collect();
        let batch = LlamaBatch::new(config.step_tokens as usize, 1);
        Self {
            config,
            model,
            ctx,
            batch,
            slots,
            waiting: VecDeque::new(),
            shared,
            step: 0,
            rate: 0.0,
        }
    }

    /// Runs until every sender of `jobs` is gone and no request is left.
    pub fn run(mut self, jobs: Receiver<Job>) {
        loop {
            let busy = !self.waiting.is_empty() || self.slots.iter().any(|s| s.active.is_some());
            if !busy {
                match jobs.recv_timeout(Duration::from_millis(500)) {
                    Ok(job) => self.waiting.push_back(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.waiting.push_back(job);
            }
            self.step += 1;
            self.expire();
            self.admit();
            self.report();
            if self.slots.iter().any(|s| s.active.is_some()) {
                self.decode_step();
            }
        }
    }

    /// Drops waiting requests whose client left or whose deadline passed; ends running ones
    /// likewise.
    fn expire(&mut self) {
        let now = Instant::now();
        let before = self.waiting.len();
        self.waiting.retain(|job| {
            if job.events.is_closed() {
                count_request(&self.config.model, "cancelled");
                return false;
            }
            if now >= job.deadline {
                let _ = job
                    .events
                    .send(GenerationEvent::Failed(GenerateError::DeadlineExceeded));
                count_request(&self.config.model, "deadline");
                return false;
            }
            true
        });
        self.shared
            .waiting
            .fetch_sub(before - self.waiting.len(), Ordering::Relaxed);
        for i in 0..self.slots.len() {
            let ending = match &self.slots[i].active {
                Some(a) if a.job.events.is_closed() => Ending::Cancelled,
                Some(a) if now >= a.job.deadline => Ending::Failed(GenerateError::DeadlineExceeded),
                _ => continue,
            };
            self.end(i, ending);
        }
    }

    /// Moves waiting requests into free slots, reusing cached prefixes.
    fn admit(&mut self) {
        while let Some(free) = self.pick_slot() {
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            self.start(free, job);
        }
    }

    /// The free slot for the next waiting request: the longest cached prefix of its prompt,
    /// then the least recently used.
    fn pick_slot(&self) -> Option<usize> {
        let job = self.waiting.front()?;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .max_by_key(|(_, s)| {
                let common = if self.config.prefix_cache {
                    common_prefix(&s.cached, &job.tokens)
                } else {
                    0
                };
                (common, std::cmp::Reverse(s.last_used))
            })
            .map(|(i, _)| i)
    }

    fn start(&mut self, index: usize, job: Job) {
        let prompt_len = job.tokens.len();
        // At least the last prompt token is computed: its logits give the first token.
        let usable = prompt_len - 1;
        let seq = self.slots[index].seq;
        let reused = if self.config.prefix_cache {
            common_prefix(&self.slots[index].cached, &job.tokens).min(usable)
        } else {
            0
        };
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(reused as u32), None);
        self.slots[index].cached.truncate(reused);
        let sampler = sampler::chain(
            &job.sampling,
            self.model.n_vocab(),
            self.config.context_per_slot as i32,
        );
        let text = TextStream::new(job.stops.clone());
        self.slots[index].last_used = self.step;
        self.shared.busy.fetch_add(1, Ordering::Relaxed);
        self.slots[index].active = Some(Active {
            job,
            sampler,
            text,
            prompt_len,
            reused,
            generated: 0,
            next: None,
            logits_at: None,
            started: Instant::now(),
            first_token_at: None,
            last_token_at: None,
        });
    }

    /// One decode: every running sequence's next token, then prefill chunks in admission
    /// order, within the step budget.
    fn decode_step(&mut self) {
        self.batch.clear();
        let budget = self.config.step_tokens as usize;
        // What each slot puts in the batch: (slot, tokens appended to its cache).
        let mut fed: Vec<(usize, Vec<LlamaToken>)> = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(active) = slot.active.as_mut() else {
                continue;
            };
            active.logits_at = None;
            if let Some(token) = active.next {
                let at = self.batch.n_tokens();
                let pos = slot.cached.len() as i32;
                if self.batch.add(token, pos, &[slot.seq], true).is_ok() {
                    active.logits_at = Some(at);
                    fed.push((i, vec![token]));
                }
            }
        }
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .active
                    .as_ref()
                    .is_some_and(|a| a.next.is_none())
            })
            .collect();
        order.sort_by_key(|&i| self.slots[i].active.as_ref().map(|a| a.job.queued_at));
        for i in order {
            let room = budget.saturating_sub(self.batch.n_tokens() as usize);
            if room == 0 {
                break;
            }
            let slot = &mut self.slots[i];
            let active = slot.active.as_mut().expect("filtered on active");
            let done = slot.cached.len();
            let chunk: Vec<LlamaToken> = active.job.tokens[done..]
                .iter()
                .take(room)
                .copied()
                .collect();
            let last = done + chunk.len() == active.prompt_len;
            for (k, &token) in chunk.iter().enumerate() {
                let is_last = last && k + 1 == chunk.len();
                let at = self.batch.n_tokens();
                let _ = self
                    .batch
                    .add(token, (done + k) as i32, &[slot.seq], is_last);
                if is_last {
                    active.logits_at = Some(at);
                }
            }
            fed.push((i, chunk));
        }
        if self.batch.n_tokens() == 0 {
            return;
        }

        let started = Instant::now();
        let mut result = self.ctx.decode(&mut self.batch);
        if matches!(result, Err(DecodeError::NoKvCacheSlot)) && self.evict_idle() {
            result = self.ctx.decode(&mut self.batch);
        }
        if let Err(e) = result {
            tracing::error!(target: "keel::generation", model = %self.config.model, error = %e, "decode failed");
            for (i, _) in fed {
                self.end(i, Ending::Failed(GenerateError::Failed(e.to_string())));
                let seq = self.slots[i].seq as u32;
                let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
                self.slots[i].cached.clear();
            }
            return;
        }
        for (i, tokens) in &fed {
            self.slots[*i].cached.extend_from_slice(tokens);
        }
        let mut produced = 0usize;
        for i in 0..self.slots.len() {
            let Some(at) = self.slots[i].active.as_ref().and_then(|a| a.logits_at) else {
                continue;
            };
            produced += 1;
            if let Some(ending) = self.sample(i, at) {
                self.end(i, ending);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 && produced > 0 {
            let now = produced as f64 / secs;
            self.rate = if self.rate == 0.0 {
                now
            } else {
                0.9 * self.rate + 0.1 * now
            };
            metrics::gauge!(names::LLM_TOKENS_PER_SECOND, "model" => self.config.model.clone())
                .set(self.rate);
        }
    }

    /// Samples slot `i`'s next token and sends its text; Some when the request ends.
    fn sample(&mut self, i: usize, at: i32) -> Option<Ending> {
        let model = self.model;
        let context_limit = self.config.context_per_slot as usize;
        let cached = self.slots[i].cached.len();
        let active = self.slots[i].active.as_mut()?;
        let token = active.sampler.sample(&self.ctx, at);
        let now = Instant::now();
        let name = &self.config.model;
        match active.last_token_at {
            None => metrics::histogram!(names::LLM_TIME_TO_FIRST_TOKEN, "model" => name.clone())
                .record((now - active.started).as_secs_f64()),
            Some(last) => metrics::histogram!(names::LLM_INTER_TOKEN, "model" => name.clone())
                .record((now - last).as_secs_f64()),
        }
        active.first_token_at.get_or_insert(now);
        active.last_token_at = Some(now);
        active.next = None;
        if !active.job.ignore_eos && model.vocab().is_eog(token) {
            return Some(Ending::Finished(FinishReason::Stop));
        }
        active.generated += 1;
        let piece = model.vocab().token_to_piece(token, false, None);
        match active.text.push(&piece) {
            Step::Stopped(text) => {
                send_text(&active.job.events, text);
                return Some(Ending::Finished(FinishReason::Stop));
            }
            Step::Send(text) => send_text(&active.job.events, text),
        }
        if active.generated >= active.job.max_tokens || cached + 1 >= context_limit {
            return Some(Ending::Finished(FinishReason::Length));
        }
        active.next = Some(token);
        None
    }

    /// Ends slot `i`'s request and frees the slot (its cache stays for prefix reuse).
    fn end(&mut self, i: usize, ending: Ending) {
        let Some(mut active) = self.slots[i].active.take() else {
            return;
        };
        self.shared.busy.fetch_sub(1, Ordering::Relaxed);
        self.slots[i].last_used = self.step;
        let model = &self.config.model;
        let prompt_tokens = active.prompt_len as u32;
        let outcome = match ending {
            Ending::Finished(finish) => {
                send_text(&active.job.events, active.text.finish());
                let _ = active
                    .job
                    .events
                    .send(GenerationEvent::Done(GenerationSummary {
                        finish,
                        prompt_tokens,
                        completion_tokens: active.generated,
                        cached_tokens: active.reused as u32,
                    }));
                match finish {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                }
            }
            Ending::Cancelled => "cancelled",
            Ending::Failed(e) => {
                let outcome = if e == GenerateError::DeadlineExceeded {
                    "deadline"
                } else {
                    "error"
                };
                let _ = active.job.events.send(GenerationEvent::Failed(e));
                outcome
            }
        };
        count_request(model, outcome);
        metrics::counter!(names::LLM_PROMPT_TOKENS, "model" => model.clone())
            .increment(u64::from(prompt_tokens));
        metrics::counter!(names::LLM_CACHED_PROMPT_TOKENS, "model" => model.clone())
            .increment(active.reused as u64);
        metrics::counter!(names::LLM_GENERATED_TOKENS, "model" => model.clone())
            .increment(u64::from(active.generated));
        let elapsed = active.started.elapsed();
        let ttft_ms = active
            .first_token_at
            .map(|t| (t - active.started).as_secs_f64() * 1e3);
        let decode_secs = match (active.first_token_at, active.last_token_at) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        let tokens_per_s = if decode_secs > 0.0 {
            f64::from(active.generated.saturating_sub(1)) / decode_secs
        } else {
            0.0
        };
        tracing::info!(
            target: "keel::generation",
            request_id = %active.job.request_id,
            model = %model,
            slot = self.slots[i].seq,
            prompt_tokens,
            prefix_tokens_reused = active.reused,
            completion_tokens = active.generated,
            ttft_ms,
            tokens_per_s,
            queue_ms = (active.started - active.job.queued_at).as_secs_f64() * 1e3,
            total_ms = elapsed.as_secs_f64() * 1e3,
            finish_reason = outcome,
            "generation"
        );
        let hold = elapsed.as_millis() as usize;
        let mean = self.shared.mean_hold_ms.load(Ordering::Relaxed);
        let mean = if mean == 0 {
            hold
        } else {
            (mean * 7 + hold) / 8
        };
        self.shared.mean_hold_ms.store(mean, Ordering::Relaxed);
        if !self.config.prefix_cache {
            let seq = self.slots[i].seq as u32;
            let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
            self.slots[i].cached.clear();
        }
    }

    /// Frees the caches of idle slots; true if any was freed.
    fn evict_idle(&mut self) -> bool {
        let mut freed = false;
        for slot in self.slots.iter_mut().filter(|s| s.active.is_none()) {
            if !slot.cached.is_empty() {
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                slot.cached.clear();
                freed = true;
            }
        }
        freed
    }

    fn report(&self) {
        let model = self.config.model.clone();
        let busy = self.slots.iter().filter(|s| s.active.is_some()).count();
        let cells: usize = self.slots.iter().map(|s| s.cached.len()).sum();
        metrics::gauge!(names::LLM_SLOTS_IN_USE, "model" => model.clone()).set(busy as f64);
        metrics::gauge!(names::LLM_WAITING, "model" => model.clone())
            .set(self.shared.waiting.load(Ordering::Relaxed) as f64);
        metrics::gauge!(names::LLM_KV_CELLS, "model" => model).set(cells as f64);
    }
}

fn send_text(events: &UnboundedSender<GenerationEvent>, text: String) {
    if !text.is_empty() {
        let _ = events.send(GenerationEvent::Text(text));
    }
}

fn count_request(model: &str, outcome: &'static str) {
    metrics::counter!(names::LLM_REQUESTS, "model" => model.to_string(), "outcome" => outcome)
        .increment(1);
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
