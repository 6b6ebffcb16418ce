//! The ONNX Runtime backend: BERT, DistilBERT and XLM-RoBERTa encoders, and image
//! classifiers (EfficientNet-Lite built here, or any folder's own `model.onnx` export), on ONNX
//! Runtime's CPU execution provider.
//!
//! ONNX Runtime is not linked: `libonnxruntime.so` is opened at run time from
//! [`OrtOptions::dylib_path`] (`scripts/fetch-onnxruntime.sh` puts it in place), once per
//! process, into one environment that every session shares: its log level (warning) and its
//! one intra-op thread pool ([`OrtOptions::intra_threads`]) are set there, not per model.
//! A model folder's own `model.onnx` is used when present; otherwise the graph is
//! built in memory from `config.json` and `model.safetensors` ([`graph`]), optionally with
//! int8 weights ([`Precision::Int8`]). [`Backend::forward`] returns what the candle backend
//! returns: pooled, unnormalized embeddings, or logits.

mod arch;
pub mod efficientnet;
pub mod graph;
mod onnx_proto;
pub mod quantize;
mod weights;

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use keel_engine::{
    Architecture, Backend, BackendError, EncodedBatch, ImageBatch, ModelSpec, Pooling, Task,
};
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::logging::LogLevel;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

/// Numeric precision of the graph built from safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Weights as in the checkpoint (widened to f32).
    #[default]
    Fp32,
    /// Encoder projections with per-channel int8 weights and dynamically quantized
    /// activations (`DynamicQuantizeMatMul`): about 2x faster on CPU, cosine ~0.99 to fp32.
    /// Integer kernels that lack VNNI (pre-AVX512-VNNI x86) may saturate and lose more.
    Int8,
}

/// How to load a model. `dylib_path`, `intra_threads` and `intra_spinning` describe the
/// process-wide ONNX Runtime environment: the first successful load sets them, and a later load
/// that asks for different ones is refused (ONNX Runtime allows one environment per process).
#[derive(Debug, Clone)]
pub struct OrtOptions {
    /// Path of `libonnxruntime.so` (Keel's `ORT_DYLIB_PATH`).
    pub dylib_path: PathBuf,
    /// Size of the one intra-op thread pool that all sessions share (ONNX Runtime's global
    /// thread pool; the thread that calls `forward` counts as one of them).
    pub intra_threads: usize,
    /// Whether the pool's idle threads spin for a moment before sleeping. Spinning shortens
    /// the gaps between operators but burns the cores the HTTP runtime needs when the pool
    /// already takes every core; see [`spinning_default`].
    pub intra_spinning: bool,
    pub precision: Precision,
}

/// Spinning only when the pool leaves at least one core to the rest of the process: with a
/// pool as wide as the machine (Keel's default), idle pool threads spinning between batches
/// take the CPU the HTTP threads need to parse the next requests and form the next batch.
pub fn spinning_default(intra_threads: usize) -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    intra_threads < cpus
}

/// Loads the model in `spec.dir` on ONNX Runtime.
pub fn load(spec: &ModelSpec, options: &OrtOptions) -> Result<Box<dyn Backend>, BackendError> {
    let env = environment(&Runtime::of(options))?;
    OrtBackend::load(env, spec, options)
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| BackendError::load(&spec.dir, e))
}

/// Builds the ONNX model Keel would run for a folder without `model.onnx`, serialized; useful
/// to inspect the graph (e.g. in Netron) or to cache it.
pub fn build_onnx(spec: &ModelSpec, precision: Precision) -> Result<Vec<u8>, BackendError> {
    built_graph(spec, precision).map_err(|e| BackendError::load(&spec.dir, e))
}

/// The graph Keel builds from the folder's safetensors, by architecture.
fn built_graph(spec: &ModelSpec, precision: Precision) -> Result<Vec<u8>, String> {
    match spec.architecture {
        Architecture::EfficientNetLite => {
            if precision == Precision::Int8 {
                tracing::warn!(
                    model = %spec.dir.display(),
                    "int8 precision applies to text encoders; building the image model in fp32"
                );
            }
            efficientnet::build_model(spec)
        }
        Architecture::OnnxExport => Err("the folder has no model.onnx".into()),
        Architecture::Bert | Architecture::DistilBert | Architecture::XlmRoberta => {
            graph::build_model(spec, precision)
        }
    }
}

/// What the process-wide environment was built with; a later load must ask for the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Runtime {
    dylib: PathBuf,
    intra_threads: usize,
    intra_spinning: bool,
}

impl Runtime {
    fn of(options: &OrtOptions) -> Self {
        Self {
            dylib: options.dylib_path.clone(),
            intra_threads: options.intra_threads.max(1),
            intra_spinning: options.intra_spinning,
        }
    }
}

/// The process-wide ONNX Runtime environment and what it was built with (`dylib` canonical).
static ENVIRONMENT: OnceLock<(Runtime, Environment)> = OnceLock::new();
/// Serializes first loads; a failed load leaves [`ENVIRONMENT`] empty so a later call (with a
/// corrected path) can try again.
static INIT: Mutex<()> = Mutex::new(());

fn environment(wanted: &Runtime) -> Result<&'static Environment, BackendError> {
    let check = |(built, env): &'static (Runtime, Environment)| {
        let dylib = &wanted.dylib;
        let requested = dylib.canonicalize().unwrap_or_else(|_| dylib.to_path_buf());
        if built.dylib != requested {
            return Err(BackendError::Runtime(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                built.dylib.display(),
                dylib.display()
            )));
        }
        if (built.intra_threads, built.intra_spinning)
            != (wanted.intra_threads, wanted.intra_spinning)
        {
            return Err(BackendError::Runtime(format!(
                "ONNX Runtime's shared thread pool already has {} threads (spinning: {}) in \
                 this process; cannot also use {} (spinning: {})",
                built.intra_threads,
                built.intra_spinning,
                wanted.intra_threads,
                wanted.intra_spinning
            )));
        }
        Ok(env)
    };
    if let Some(entry) = ENVIRONMENT.get() {
        return check(entry);
    }
    let _guard = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = ENVIRONMENT.get() {
        return check(entry);
    }
    let path = wanted.dylib.canonicalize().map_err(|e| {
        BackendError::Runtime(format!(
            "ONNX Runtime library not found at {} ({e}); run scripts/fetch-onnxruntime.sh or set \
             ORT_DYLIB_PATH",
            wanted.dylib.display()
        ))
    })?;
    // ort panics on a few malformed-library paths (e.g. a null API table); keep those errors.
    let env = catch_unwind(AssertUnwindSafe(|| build_environment(&path, wanted)))
        .unwrap_or_else(|_| Err("ONNX Runtime panicked while loading".into()))
        .map_err(|e| {
            BackendError::Runtime(format!(
                "cannot load ONNX Runtime from {}: {e}",
                path.display()
            ))
        })?;
    tracing::info!(
        library = %path.display(),
        intra_threads = wanted.intra_threads,
        intra_spinning = wanted.intra_spinning,
        "ONNX Runtime loaded"
    );
    let built = Runtime {
        dylib: path,
        ..wanted.clone()
    };
    Ok(&ENVIRONMENT.get_or_init(|| (built, env)).1)
}

fn build_environment(path: &Path, wanted: &Runtime) -> Result<Environment, String> {
    // One intra-op pool for every session: with a pool per session, each model brought its
    // own `intra_threads` busy threads, so two models meant twice the cores' worth of threads
    // competing with each other and with the HTTP runtime. Sessions built in an environment
    // with a global pool use it (ort calls `DisablePerSessionThreads`). Sessions run
    // sequentially, so the inter-op pool is never used: one thread.
    // `init_from` opens the library: it comes first, as every other ort call needs it.
    let builder = ort::init_from(path).map_err(|e| e.to_string())?;
    let pool = GlobalThreadPoolOptions::default()
        .with_intra_threads(wanted.intra_threads)
        .and_then(|p| p.with_inter_threads(1))
        .and_then(|p| p.with_spin_control(wanted.intra_spinning))
        .map_err(|e| format!("thread pool options: {e}"))?;
    let created = Arc::new(AtomicBool::new(false));
    let env = builder
        .with_name("keel")
        .with_global_thread_pool(pool)
        .with_logger(ort_logger(created.clone()))
        .build()
        .map_err(|e| e.to_string())?;
    // ort creates the environment at VERBOSE, so ONNX Runtime would format and log an INFO
    // line per arena extension (hundreds at start-up, more per long input). At WARNING those
    // messages are never produced; sessions created from here on take this level as theirs.
    env.set_log_level(LogLevel::Warning);
    created.store(true, Ordering::Release);
    Ok(env)
}

/// ONNX Runtime's messages into Keel's log (target `ort::logging`, as ort's own logger) at
/// their own level. Until `created` is set, the environment is still at VERBOSE and reports
/// the hardware it finds: those lines below WARNING are dropped. After, whatever ONNX Runtime
/// produces is passed on, so a level set too low would show rather than be hidden.
fn ort_logger(created: Arc<AtomicBool>) -> ort::logging::LoggerFunction {
    Arc::new(move |level, category, id, location, message| {
        if level < LogLevel::Warning && !created.load(Ordering::Acquire) {
            return;
        }
        match level {
            LogLevel::Verbose => {
                tracing::trace!(target: "ort::logging", category, id, location, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "ort::logging", category, id, location, "{message}")
            }
            LogLevel::Warning => {
                tracing::warn!(target: "ort::logging", category, id, location, "{message}")
            }
            LogLevel::Error | LogLevel::Fatal => {
                tracing::error!(target: "ort::logging", category, id, location, "{message}")
            }
        }
    })
}

/// A graph input Keel knows how to fill.
#[derive(Debug, Clone, Copy)]
enum Input {
    Ids,
    Mask,
    TypeIds,
    /// `[batch, 3, height, width]` preprocessed images.
    Pixels,
}

/// What the chosen output holds.
#[derive(Debug, Clone, Copy)]
enum Output {
    /// `[batch, width]`: already pooled embeddings, or logits.
    Rows,
    /// `[batch, seq, hidden]`: token states of a folder's own ONNX export, pooled here.
    TokenStates(Pooling),
}

struct OrtBackend {
    /// `Session::run` needs `&mut`; the engine calls `forward` from one worker thread.
    session: Mutex<Session>,
    inputs: Vec<(String, Input)>,
    output_name: String,
    output: Output,
    width: usize,
}

/// The folder's own ONNX export, if it has one.
fn folder_onnx(dir: &Path) -> Option<PathBuf> {
    ["model.onnx", "onnx/model.onnx"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

impl OrtBackend {
    fn load(env: &Environment, spec: &ModelSpec, options: &OrtOptions) -> Result<Self, String> {
        // No thread settings here: the session runs on the environment's shared pool.
        let mut builder = Session::builder(env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            .map_err(|e| format!("session options: {e}"))?;
        let session = match folder_onnx(&spec.dir) {
            Some(path) => {
                if options.precision == Precision::Int8 {
                    tracing::warn!(
                        model = %path.display(),
                        "int8 precision applies to graphs built from safetensors; running the \
                         folder's ONNX export as it is"
                    );
                }
                builder
                    .commit_from_file(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => {
                let bytes = built_graph(spec, options.precision)?;
                builder
                    .commit_from_memory(&bytes)
                    .map_err(|e| format!("cannot create the ONNX Runtime session: {e}"))?
            }
        };

        let inputs = session
            .inputs()
            .iter()
            .map(|i| {
                let kind = match i.name() {
                    graph::INPUT_IDS => Input::Ids,
                    graph::ATTENTION_MASK => Input::Mask,
                    graph::TOKEN_TYPE_IDS => Input::TypeIds,
                    efficientnet::PIXEL_VALUES => Input::Pixels,
                    other => return Err(format!("model input \"{other}\" is not supported")),
                };
                Ok((i.name().to_string(), kind))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let images = inputs.iter().any(|(_, kind)| matches!(kind, Input::Pixels));
        if images != spec.image.is_some() || (images && inputs.len() != 1) {
            return Err(format!(
                "the graph's inputs {:?} do not fit a {} model",
                inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                spec.task.as_str()
            ));
        }
        let (output_name, output) = choose_output(&session, spec)?;
        let width = spec.dimensions;
        Ok(Self {
            session: Mutex::new(session),
            inputs,
            output_name,
            output,
            width,
        })
    }

    fn run(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>, String> {
        let (rows, seq) = (batch.batch_size, batch.seq_len);
        if rows == 0 {
            return Ok(Vec::new());
        }
        let n = rows * seq;
        if [&batch.input_ids, &batch.type_ids, &batch.attention_mask]
            .iter()
            .any(|v| v.len() != n)
        {
            return Err(format!("batch is not {rows}x{seq}"));
        }
        let widen = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
        for (name, kind) in &self.inputs {
            let data = match kind {
                Input::Ids => widen(&batch.input_ids),
                Input::Mask => widen(&batch.attention_mask),
                Input::TypeIds => widen(&batch.type_ids),
                Input::Pixels => return Err("an image model takes images, not text".into()),
            };
            let tensor = Tensor::from_array(([rows, seq], data)).map_err(|e| e.to_string())?;
            values.push((Cow::Borrowed(name.as_str()), tensor.into()));
        }
        self.execute(values, rows, seq, &batch.attention_mask)
    }

    fn run_images(&self, batch: &ImageBatch) -> Result<Vec<Vec<f32>>, String> {
        let rows = batch.batch_size;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let shape = [rows, 3, batch.height, batch.width];
        if batch.pixels.len() != shape.iter().product::<usize>() {
            return Err(format!("image batch is not {shape:?}"));
        }
        let name = match self.inputs.as_slice() {
            [(name, Input::Pixels)] => name,
            _ => return Err("a text model takes tokens, not images".into()),
        };
        // ort takes the data by value; the worker keeps its own batch for nothing after this,
        // but the trait lends it, so one copy of `3 x h x w x batch` floats (600 KB per 224
        // image) is made here.
        let tensor =
            Tensor::from_array((shape, batch.pixels.clone())).map_err(|e| e.to_string())?;
        let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            vec![(Cow::Borrowed(name.as_str()), tensor.into())];
        self.execute(values, rows, 0, &[])
    }

    /// Runs the session and turns the chosen output into one vector per row.
    fn execute(
        &self,
        values: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        rows: usize,
        seq: usize,
        attention_mask: &[u32],
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs = session.run(values).map_err(|e| e.to_string())?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| format!("model produced no \"{}\"", self.output_name))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| format!("{}: {e}", self.output_name))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let out = match self.output {
            Output::Rows => {
                if shape.len() != 2 || shape[0] != rows {
                    return Err(format!("expected [{rows}, width] output, got {shape:?}"));
                }
                data.chunks_exact(shape[1]).map(<[f32]>::to_vec).collect()
            }
            Output::TokenStates(pooling) => {
                if shape.len() != 3 || shape[0] != rows || shape[1] != seq {
                    return Err(format!(
                        "expected [{rows}, {seq}, hidden] output, got {shape:?}"
                    ));
                }
                pool(data, attention_mask, shape[2], seq, pooling)
            }
        };
        if let Some(row) = out.first() {
            if row.len() != self.width {
                return Err(format!(
                    "model output width {} != expected {}",
                    row.len(),
                    self.width
                ));
            }
        }
        Ok(out)
    }
}

/// Picks the output that answers the task: `logits` for classifiers; for embedding models the
/// graph's pooled `embedding`, or token states (`last_hidden_state`) from a folder's export,
/// pooled in Rust so the result matches the spec's pooling rather than the exporter's.
fn choose_output(session: &Session, spec: &ModelSpec) -> Result<(String, Output), String> {
    let outputs: Vec<(&str, usize)> = session
        .outputs()
        .iter()
        .map(|o| (o.name(), o.dtype().tensor_shape().map_or(0, |s| s.len())))
        .collect();
    let find = |name: &str| outputs.iter().find(|(n, _)| *n == name).copied();
    let picked = match spec.task {
        Task::Classification | Task::ImageClassification => find("logits")
            .or_else(|| outputs.iter().find(|(_, rank)| *rank == 2).copied())
            .map(|(n, _)| (n, Output::Rows)),
        Task::Embedding => find("embedding")
            .map(|(n, _)| (n, Output::Rows))
            .or_else(|| {
                find("last_hidden_state")
                    .or_else(|| outputs.iter().find(|(_, rank)| *rank == 3).copied())
                    .map(|(n, _)| (n, Output::TokenStates(spec.pooling)))
            }),
        Task::TextGeneration => None,
    };
    picked.map(|(n, o)| (n.to_string(), o)).ok_or_else(|| {
        let names: Vec<_> = outputs.iter().map(|(n, _)| *n).collect();
        format!(
            "no usable output for {} among {names:?}",
            spec.task.as_str()
        )
    })
}

/// `[batch, seq, hidden]` token states to one vector per row over non-padding tokens, as the
/// candle backend pools.
fn pool(data: &[f32], mask: &[u32], hidden: usize, seq: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    data.chunks_exact(seq * hidden)
        .zip(mask.chunks_exact(seq))
        .map(|(tokens, mask)| match pooling {
            Pooling::Cls => tokens[..hidden].to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f32; hidden];
                for (token, _) in tokens
                    .chunks_exact(hidden)
                    .zip(mask)
                    .filter(|(_, &m)| m != 0)
                {
                    sum.iter_mut().zip(token).for_each(|(s, t)| *s += t);
                }
                let count = (mask.iter().filter(|&&m| m != 0).count() as f32).max(1e-9);
                sum.iter().map(|s| s / count).collect()
            }
        })
        .collect()
}

impl Backend for OrtBackend {
    fn forward(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>, BackendError> {
        self.run(batch).map_err(BackendError::Inference)
    }

    fn forward_images(&self, batch: &ImageBatch) -> Result<Vec<Vec<f32>>, BackendError> {
        self.run_images(batch).map_err(BackendError::Inference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_skips_padding() {
        // Two rows, seq 2, hidden 2; the second row's second token is padding.
        let data = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 99.0, 99.0];
        let pooled = pool(&data, &[1, 1, 1, 0], 2, 2, Pooling::Mean);
        assert_eq!(pooled, [vec![2.0, 3.0], vec![10.0, 20.0]]);
        let cls = pool(&data, &[1, 1, 1, 0], 2, 2, Pooling::Cls);
        assert_eq!(cls, [vec![1.0, 2.0], vec![10.0, 20.0]]);
    }

    #[test]
    fn a_missing_or_broken_library_is_an_error_not_a_panic() {
        let runtime = |dylib: &Path| Runtime {
            dylib: dylib.to_path_buf(),
            intra_threads: 1,
            intra_spinning: false,
        };
        let err = environment(&runtime(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(matches!(err, BackendError::Runtime(_)), "{err:?}");
        assert!(err.to_string().contains("not found"), "{err}");

        let fake = std::env::temp_dir().join(format!("keel-fake-ort-{}.so", std::process::id()));
        std::fs::write(&fake, b"not a shared library").unwrap();
        let err = environment(&runtime(&fake)).unwrap_err();
        std::fs::remove_file(&fake).unwrap();
        assert!(matches!(err, BackendError::Runtime(_)), "{err:?}");
        assert!(
            err.to_string().contains("cannot load ONNX Runtime"),
            "{err}"
        );
    }
}
