//! Local text generation from GGUF files on llama.cpp (through the `llama-cpp-2` crate),
//! behind keel-engine's [`TextGenerator`] trait: the rest of Keel never sees llama.cpp.
//!
//! [`load`] opens the file, builds one context with a sequence slot per concurrent request,
//! proves it with a warm-up decode, and starts the [`scheduler`] thread that batches every
//! running request into shared decode steps. The handle it returns tokenizes and admits
//! requests (refusing at once what cannot fit or has no room) and hands them to that thread.

mod sampler;
pub mod scheduler;
pub mod template;
pub mod text;

use std::io::Read;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use keel_engine::generate::{
    GenerateError, Generation, GenerationRequest, GeneratorFailureHook, Prompt, TextGenerator,
};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde_json::json;

use scheduler::{Job, Scheduler, SchedulerConfig, Shared};
use template::ChatTemplate;

/// Engine settings shared by every local model.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    /// Requests generated at once (llama.cpp's `n_seq_max`).
    pub slots: u32,
    /// Tokens (prompt and answer) one request may hold; the context has `slots` times this.
    pub context_per_slot: u32,
    pub threads: u32,
    /// Most tokens one decode step holds.
    pub step_tokens: u32,
    /// Requests that may wait for a slot; more are refused with a 429.
    pub max_waiting: usize,
    /// Reuse the KV cache of a prompt's longest cached prefix.
    pub prefix_cache: bool,
}

/// llama.cpp's process-wide state: initialised once, its logs sent to `tracing`.
fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| format!("cannot start llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A file that is not GGUF at all gets a plain reason before llama.cpp sees it.
fn check_file(path: &Path) -> Result<(), String> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| format!("{}: cannot read the model file: {e}", path.display()))?;
    if &magic != b"GGUF" {
        return Err(format!("{}: not a GGUF file", path.display()));
    }
    Ok(())
}

/// Loads the GGUF at `path` and starts its scheduler; returns once a warm-up decode worked.
pub fn load(
    name: &str,
    path: &Path,
    options: &LlamaOptions,
    on_failed: GeneratorFailureHook,
) -> Result<Arc<dyn TextGenerator>, String> {
    check_file(path)?;
    let backend = backend()?;
    let model =
        LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
            format!(
                "{}: llama.cpp cannot load it ({e}): a corrupt or truncated GGUF, or an \
                 architecture this llama.cpp does not know",
                path.display()
            )
        })?;
    let model = Arc::new(model);
    let trained = model.n_ctx_train().max(1);
    let context_per_slot = options.context_per_slot.min(trained).max(16);
    let slots = options.slots.max(1);
    let vocab = model.vocab();
    let special =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let (bos, eos) = (special(vocab.bos()), special(vocab.eos()));
    let template = match model.meta_val_str("tokenizer.chat_template") {
        Ok(source) => Some(ChatTemplate::new(&source, &bos, &eos).map_err(|e| e.to_string())?),
        Err(_) => None,
    };
    let quantization = model
        .meta_val_str("general.file_type")
        .ok()
        .and_then(|t| t.parse::<u32>().ok())
        .map_or("unknown", file_type_name);
    let info = json!({
        "engine": "llama.cpp",
        "architecture": model.meta_val_str("general.architecture").ok(),
        "parameters": model.n_params(),
        "quantization": quantization,
        "context_per_request": context_per_slot,
        "context_total": context_per_slot * slots,
        "context_trained": trained,
        "slots": slots,
        "threads": options.threads,
        "step_tokens": options.step_tokens,
        "max_waiting": options.max_waiting,
        "prefix_cache": options.prefix_cache,
        "chat_template": template.is_some(),
    });

    let config = SchedulerConfig {
        model: name.to_string(),
        slots,
        context_per_slot,
        step_tokens: options.step_tokens.max(slots),
        prefix_cache: options.prefix_cache,
    };
    let shared = Arc::new(Shared::default());
    let (jobs, queue) = mpsc::sync_channel::<Job>(options.max_waiting + slots as usize);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let thread_model = model.clone();
    let thread_shared = shared.clone();
    let threads = options.threads.max(1) as i32;
    std::thread::Builder::new()
        .name(format!("keel-llm-{name}"))
        .spawn(move || {
            let model = thread_model;
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(context_per_slot * slots))
                .with_n_batch(config.step_tokens)
                .with_n_ubatch(config.step_tokens.min(512))
                .with_n_seq_max(slots)
                .with_n_threads(threads)
                .with_n_threads_batch(threads)
                .with_kv_unified(false);
            let ctx = match model.new_context(backend, params) {
                Ok(ctx) => ctx,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot create the llama.cpp context: {e}")));
                    return;
                }
            };
            let mut ctx = ctx;
            if let Err(e) = warm_up(&model, &mut ctx) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            let model_name = config.model.clone();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Scheduler::new(config, &model, ctx, thread_shared).run(queue)
            }));
            if let Err(panic) = run {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(model = %model_name, panic = %what, "the generation loop panicked");
                on_failed(format!("the generation loop panicked: {what}"));
            }
        })
        .map_err(|e| format!("cannot start the generation thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the generation thread stopped while starting".to_string())??;

    Ok(Arc::new(LlamaGenerator {
        name: name.to_string(),
        model,
        template,
        bos,
        jobs: Mutex::new(jobs),
        shared,
        slots,
        context_per_slot,
        max_waiting: options.max_waiting,
        info,
    }))
}

/// One real decode proves the weights and the context before the model counts as ready.
fn warm_up(
    model: &LlamaModel,
    ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
) -> Result<(), String> {
    let tokens = model.vocab().tokenize(b"Hello", true, false);
    let mut batch = LlamaBatch::new(tokens.len().max(1), 1);
    batch
        .add_sequence(&tokens, 0, false)
        .map_err(|e| format!("warm-up: {e}"))?;
    ctx.decode(&mut batch)
        .map_err(|e| format!("warm-up decode failed: {e}"))?;
    if ctx
        .get_logits_ith(batch.n_tokens() - 1)
        .iter()
        .any(|x| !x.is_finite())
    {
        return Err("warm-up decode gave non-finite logits".into());
    }
    let _ = ctx.clear_kv_cache_seq(Some(0), None, None);
    Ok(())
}

struct LlamaGenerator {
    name: String,
    model: Arc<LlamaModel>,
    template: Option<ChatTemplate>,
    /// The BOS token's text, read once at load.
    bos: String,
    jobs: Mutex<SyncSender<Job>>,
    shared: Arc<Shared>,
    slots: u32,
    context_per_slot: u32,
    max_waiting: usize,
    info: serde_json::Value,
}

impl LlamaGenerator {
    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, GenerateError> {
        let text = match prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => {
                let template = self
                    .template
                    .as_ref()
                    .ok_or_else(|| GenerateError::Invalid {
                        field: "messages",
                        message: format!(
                            "model '{}' has no chat template in its GGUF: use /v1/completions",
                            self.name
                        ),
                    })?;
                template
                    .render(messages, true)
                    .map_err(|e| GenerateError::Invalid {
                        field: "messages",
                        message: e.to_string(),
                    })?
            }
        };
        let vocab = self.model.vocab();
        // BOS as the model's metadata says, unless the template already wrote it.
        let bos = &self.bos;
        let add_bos = vocab.should_add_bos() && (bos.is_empty() || !text.starts_with(bos.as_str()));
        let tokens = vocab.tokenize(text.as_bytes(), add_bos, true);
        if tokens.is_empty() {
            return Err(GenerateError::Invalid {
                field: "prompt",
                message: "the prompt is empty".into(),
            });
        }
        Ok(tokens)
    }

    fn retry_after(&self, waiting: usize) -> Duration {
        let hold = self.shared.mean_hold_ms.load(Ordering::Relaxed) as u64;
        let rounds = waiting as u64 / u64::from(self.slots) + 1;
        Duration::from_millis((hold * rounds).max(1000))
    }
}

impl TextGenerator for LlamaGenerator {
    fn describe(&self) -> serde_json::Value {
        self.info.clone()
    }

    fn context_per_request(&self) -> u32 {
        self.context_per_slot
    }

    fn generate(&self, request: GenerationRequest) -> Result<Generation, GenerateError> {
        if Instant::now() >= request.deadline {
            return Err(GenerateError::DeadlineExceeded);
        }
        let tokens = self.tokenize(&request.prompt)?;
        let prompt_tokens = tokens.len() as u32;
        if prompt_tokens >= self.context_per_slot {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens,
                context: self.context_per_slot,
            });
        }
        let room = self.context_per_slot - prompt_tokens;
        let max_tokens = request.max_tokens.unwrap_or(room).min(room);
        // Room: the free slots, then the waiting queue.
        let busy = self.shared.busy.load(Ordering::Relaxed);
        let free = (self.slots as usize).saturating_sub(busy);
        let waiting = self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.max_waiting + free {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(GenerateError::Busy {
                model: self.name.clone(),
                waiting,
                retry_after: self.retry_after(waiting),
            });
        }
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            tokens,
            sampling: request.sampling,
            max_tokens,
            stops: request.stop,
            ignore_eos: request.ignore_eos,
            deadline: request.deadline,
            request_id: request.request_id,
            events,
            queued_at: Instant::now(),
        };
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_send(job);
        if let Err(e) = sent {
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                TrySendError::Full(_) => GenerateError::Busy {
                    model: self.name.clone(),
                    waiting,
                    retry_after: self.retry_after(waiting),
                },
                TrySendError::Disconnected(_) => GenerateError::Failed(format!(
                    "the generation loop of model '{}' is not running",
                    self.name
                )),
            });
        }
        Ok(Generation {
            prompt_tokens,
            events: receiver,
        })
    }
}

/// llama.cpp's `general.file_type` codes (enum llama_ftype) for the common quantisations.
fn file_type_name(code: u32) -> &'static str {
    match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => "other",
    }
}
