//! Reading a checkpoint's tensors from `model.safetensors` as f32.
//!
//! The file is memory-mapped and each tensor converted (f16/bf16 widened) only when the graph
//! builder asks for it, so peak memory is the graph being built, not a second copy of the file.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// A memory-mapped safetensors file.
pub struct WeightFile {
    mmap: Mmap,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: mapped read-only; Keel never writes model folders while serving them, the
        // same assumption every mmap-based loader (candle's included) makes.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { mmap })
    }

    pub fn tensors(&self) -> Result<Weights<'_>, String> {
        SafeTensors::deserialize(&self.mmap)
            .map(|st| Weights {
                st,
                prefix: String::new(),
            })
            .map_err(|e| format!("model.safetensors: {e}"))
    }
}

/// The tensors of one checkpoint, looked up under a prefix (`bert.` in a
/// `BertForSequenceClassification` checkpoint, none in a bare `BertModel`).
pub struct Weights<'a> {
    st: SafeTensors<'a>,
    prefix: String,
}

/// A tensor as f32 with its shape.
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Weights<'_> {
    pub fn contains(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// Uses `prefix` for encoder tensors when the checkpoint has `{prefix}{probe}`.
    pub fn detect_prefix(&mut self, prefix: &str, probe: &str) {
        if self.contains(&format!("{prefix}{probe}")) {
            self.prefix = prefix.to_string();
        }
    }

    /// An encoder tensor: `name` under the detected prefix.
    pub fn encoder(&self, name: &str) -> Result<Tensor, String> {
        self.get(&format!("{}{name}", self.prefix))
    }

    /// The detected encoder prefix (`bert.` or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A LayerNorm's scale and shift by full name; older checkpoints call them gamma/beta.
    pub fn layer_norm(&self, p: &str) -> Result<(Tensor, Tensor), String> {
        if self.contains(&format!("{p}.weight")) {
            Ok((
                self.get(&format!("{p}.weight"))?,
                self.get(&format!("{p}.bias"))?,
            ))
        } else {
            Ok((
                self.get(&format!("{p}.gamma"))?,
                self.get(&format!("{p}.beta"))?,
            ))
        }
    }

    /// A tensor by its full name (classifier heads live outside the encoder prefix).
    pub fn get(&self, name: &str) -> Result<Tensor, String> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| format!("model.safetensors has no tensor \"{name}\""))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(format!("{name}: unsupported dtype {other:?}")),
        };
        Ok(Tensor {
            shape: view.shape().to_vec(),
            data,
        })
    }
}

impl Tensor {
    /// Checks the shape, so a config/checkpoint mismatch fails at load with the tensor's name.
    pub fn expect(self, name: &str, shape: &[usize]) -> Result<Self, String> {
        if self.shape == shape {
            Ok(self)
        } else {
            Err(format!(
                "{name}: expected shape {shape:?}, checkpoint has {:?}",
                self.shape
            ))
        }
    }

    /// The transpose of a 2-D tensor: PyTorch's `Linear` stores `[out, in]`, `MatMul` wants
    /// `[in, out]`.
    pub fn transposed(&self) -> Vec<f32> {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = self.data[r * cols + c];
            }
        }
        out
    }
}
