//! The ONNX Runtime backend: BERT, DistilBERT and XLM-RoBERTa encoders on ONNX Runtime's CPU
//! execution provider.
//!
//! ONNX Runtime is not linked: `libonnxruntime.so` is opened at run time from
//! [`OrtOptions::dylib_path`] (`scripts/fetch-onnxruntime.sh` puts it in place), once per
//! process. A model folder's own `model.onnx` is used when present; otherwise the graph is
//! built in memory from `config.json` and `model.safetensors` ([`graph`]), optionally with
//! int8 weights ([`Precision::Int8`]). [`Backend::forward`] returns what the candle backend
//! returns: pooled, unnormalized embeddings, or logits.

mod arch;
pub mod graph;
mod onnx_proto;
pub mod quantize;
mod weights;

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use keel_engine::{Backend, BackendError, EncodedBatch, ModelSpec, Pooling, Task};
use ort::environment::Environment;
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

#[derive(Debug, Clone)]
pub struct OrtOptions {
    /// Path of `libonnxruntime.so` (Keel's `ORT_DYLIB_PATH`). Only the first successful load
    /// in a process counts: ONNX Runtime cannot be loaded twice.
    pub dylib_path: PathBuf,
    /// Threads one forward pass may use (ONNX Runtime's intra-op pool).
    pub intra_threads: usize,
    pub precision: Precision,
}

/// Loads the model in `spec.dir` on ONNX Runtime.
pub fn load(spec: &ModelSpec, options: &OrtOptions) -> Result<Box<dyn Backend>, BackendError> {
    let env = environment(&options.dylib_path)?;
    OrtBackend::load(env, spec, options)
        .map(|b| Box::new(b) as Box<dyn Backend>)
        .map_err(|e| BackendError::load(&spec.dir, e))
}

/// Builds the ONNX model Keel would run for a folder without `model.onnx`, serialized; useful
/// to inspect the graph (e.g. in Netron) or to cache it.
pub fn build_onnx(spec: &ModelSpec, precision: Precision) -> Result<Vec<u8>, BackendError> {
    graph::build_model(spec, precision).map_err(|e| BackendError::load(&spec.dir, e))
}

/// The process-wide ONNX Runtime environment and the library it was loaded from.
static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();
/// Serializes first loads; a failed load leaves [`ENVIRONMENT`] empty so a later call (with a
/// corrected path) can try again.
static INIT: Mutex<()> = Mutex::new(());

fn environment(dylib: &Path) -> Result<&'static Environment, BackendError> {
    let check = |(loaded, env): &'static (PathBuf, Environment)| {
        let requested = dylib.canonicalize().unwrap_or_else(|_| dylib.to_path_buf());
        if *loaded == requested {
            Ok(env)
        } else {
            Err(BackendError::Runtime(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                loaded.display(),
                dylib.display()
            )))
        }
    };
    if let Some(entry) = ENVIRONMENT.get() {
        return check(entry);
    }
    let _guard = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = ENVIRONMENT.get() {
        return check(entry);
    }
    let path = dylib.canonicalize().map_err(|e| {
        BackendError::Runtime(format!(
            "ONNX Runtime library not found at {} ({e}); run scripts/fetch-onnxruntime.sh or set \
             ORT_DYLIB_PATH",
            dylib.display()
        ))
    })?;
    // ort panics on a few malformed-library paths (e.g. a null API table); keep those errors.
    let env = catch_unwind(AssertUnwindSafe(|| {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder.with_name("keel").build().map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|_| Err("ONNX Runtime panicked while loading".into()))
    .map_err(|e| {
        BackendError::Runtime(format!(
            "cannot load ONNX Runtime from {}: {e}",
            path.display()
        ))
    })?;
    Ok(&ENVIRONMENT.get_or_init(|| (path, env)).1)
}

/// A graph input Keel knows how to fill.
#[derive(Debug, Clone, Copy)]
enum Input {
    Ids,
    Mask,
    TypeIds,
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
        let mut builder = Session::builder(env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            .and_then(|b| Ok(b.with_intra_threads(options.intra_threads.max(1))?))
            .and_then(|b| Ok(b.with_inter_threads(1)?))
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
                let bytes = graph::build_model(spec, options.precision)?;
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
                    other => return Err(format!("model input \"{other}\" is not supported")),
                };
                Ok((i.name().to_string(), kind))
            })
            .collect::<Result<Vec<_>, String>>()?;
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
            };
            let tensor = Tensor::from_array(([rows, seq], data)).map_err(|e| e.to_string())?;
            values.push((Cow::Borrowed(name.as_str()), tensor.into()));
        }
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
                pool(data, &batch.attention_mask, shape[2], seq, pooling)
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
        Task::Classification => find("logits")
            .or_else(|| outputs.iter().find(|(_, rank)| *rank == 2).copied())
            .map(|(n, _)| (n, Output::Rows)),
        Task::Embedding => find("embedding")
            .map(|(n, _)| (n, Output::Rows))
            .or_else(|| {
                find("last_hidden_state")
                    .or_else(|| outputs.iter().find(|(_, rank)| *rank == 3).copied())
                    .map(|(n, _)| (n, Output::TokenStates(spec.pooling)))
            }),
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
        let err = environment(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert!(matches!(err, BackendError::Runtime(_)), "{err:?}");
        assert!(err.to_string().contains("not found"), "{err}");

        let fake = std::env::temp_dir().join(format!("keel-fake-ort-{}.so", std::process::id()));
        std::fs::write(&fake, b"not a shared library").unwrap();
        let err = environment(&fake).unwrap_err();
        std::fs::remove_file(&fake).unwrap();
        assert!(matches!(err, BackendError::Runtime(_)), "{err:?}");
        assert!(
            err.to_string().contains("cannot load ONNX Runtime"),
            "{err}"
        );
    }
}
