//! The candle backend: BERT, DistilBERT and XLM-RoBERTa encoders, and EfficientNet-Lite
//! image classifiers ([`efficientnet`]), in pure Rust, on the CPU.
//!
//! The encoders come from `candle-transformers`; this crate adds what a server needs around
//! them: loading weights with or without the task prefix (`bert.`, `roberta.`, ...), the
//! sequence-classification heads, and pooling for embedding models.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::{bert, distilbert, xlm_roberta};
use keel_engine::{
    Architecture, Backend, BackendError, EncodedBatch, ImageBatch, ModelSpec, Pooling, Task,
};

pub mod efficientnet;

/// Loads the model in `spec.dir` for its task.
pub fn load(spec: &ModelSpec) -> std::result::Result<Box<dyn Backend>, BackendError> {
    match spec.architecture {
        Architecture::EfficientNetLite => efficientnet::EfficientNetLite::load(spec)
            .map(|m| Box::new(ImageBackend(m)) as Box<dyn Backend>)
            .map_err(|e| BackendError::load(&spec.dir, e)),
        Architecture::OnnxExport => Err(BackendError::load(
            &spec.dir,
            "a model.onnx export runs on ONNX Runtime only (BACKEND=ort)",
        )),
        Architecture::Bert | Architecture::DistilBert | Architecture::XlmRoberta => {
            CandleBackend::load(spec)
                .map(|b| Box::new(b) as Box<dyn Backend>)
                .map_err(|e| BackendError::load(&spec.dir, e))
        }
    }
}

/// An image classifier: takes image batches only.
struct ImageBackend(efficientnet::EfficientNetLite);

impl Backend for ImageBackend {
    fn forward(&self, _: &EncodedBatch) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        Err(BackendError::Inference(
            "an image model takes images, not text".into(),
        ))
    }

    fn forward_images(
        &self,
        batch: &ImageBatch,
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        self.0.forward_images(batch)
    }
}

enum Encoder {
    Bert(bert::BertModel),
    DistilBert(distilbert::DistilBertModel),
    XlmRoberta(xlm_roberta::XLMRobertaModel),
}

/// The layers between the encoder's first token and the logits.
enum ClassifierHead {
    /// BERT: tanh(pooler(h_cls)) -> classifier.
    Bert { pooler: Linear, classifier: Linear },
    /// DistilBERT: relu(pre_classifier(h_cls)) -> classifier.
    DistilBert {
        pre_classifier: Linear,
        classifier: Linear,
    },
    /// RoBERTa: out_proj(tanh(dense(h_cls))).
    Roberta { dense: Linear, out_proj: Linear },
}

struct CandleBackend {
    encoder: Encoder,
    head: Option<ClassifierHead>,
    pooling: Pooling,
    device: Device,
}

type Result<T> = candle_core::Result<T>;

fn read_config<T: serde::de::DeserializeOwned>(spec: &ModelSpec) -> Result<T> {
    let path = spec.dir.join("config.json");
    let text = std::fs::read_to_string(&path)?;
    serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("config.json: {e}")))
}

/// The prefix under which the encoder's weights live: `bert.` in a
/// `BertForSequenceClassification` checkpoint, none in a bare `BertModel`.
fn encoder_root<'a>(vb: &VarBuilder<'a>, prefix: &str, probe: &str) -> VarBuilder<'a> {
    if vb.contains_tensor(&format!("{prefix}.{probe}")) {
        vb.pp(prefix)
    } else {
        vb.clone()
    }
}

fn linear(vb: VarBuilder, input: usize, output: usize) -> Result<Linear> {
    candle_nn::linear(input, output, vb)
}

impl CandleBackend {
    fn load(spec: &ModelSpec) -> Result<Self> {
        let device = Device::Cpu;
        let weights = spec
            .weights_path()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let vb = if weights.extension().is_some_and(|e| e == "safetensors") {
            // SAFETY: the file is mapped read-only and Keel never writes model folders; a
            // concurrent writer replacing it is the same risk every mmap-based loader takes.
            unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? }
        } else {
            VarBuilder::from_pth(&weights, DType::F32, &device)?
        };
        let classes = spec.labels.len();
        let classify = spec.task == Task::Classification;
        let (encoder, head) = match spec.architecture {
            Architecture::Bert => {
                let config: bert::Config = read_config(spec)?;
                let h = config.hidden_size;
                let root = encoder_root(&vb, "bert", "embeddings.word_embeddings.weight");
                let encoder = Encoder::Bert(bert::BertModel::load(root.clone(), &config)?);
                let head = if classify {
                    Some(ClassifierHead::Bert {
                        pooler: linear(root.pp("pooler.dense"), h, h)?,
                        classifier: linear(vb.pp("classifier"), h, classes)?,
                    })
                } else {
                    None
                };
                (encoder, head)
            }
            Architecture::DistilBert => {
                let config: distilbert::Config = read_config(spec)?;
                let h = config.dim;
                let root = encoder_root(&vb, "distilbert", "embeddings.word_embeddings.weight");
                let encoder =
                    Encoder::DistilBert(distilbert::DistilBertModel::load(root, &config)?);
                let head = if classify {
                    Some(ClassifierHead::DistilBert {
                        pre_classifier: linear(vb.pp("pre_classifier"), h, h)?,
                        classifier: linear(vb.pp("classifier"), h, classes)?,
                    })
                } else {
                    None
                };
                (encoder, head)
            }
            Architecture::XlmRoberta => {
                let config: xlm_roberta::Config = read_config(spec)?;
                let h = config.hidden_size;
                let root = encoder_root(&vb, "roberta", "embeddings.word_embeddings.weight");
                let encoder =
                    Encoder::XlmRoberta(xlm_roberta::XLMRobertaModel::new(&config, root)?);
                let head = if classify {
                    Some(ClassifierHead::Roberta {
                        dense: linear(vb.pp("classifier.dense"), h, h)?,
                        out_proj: linear(vb.pp("classifier.out_proj"), h, classes)?,
                    })
                } else {
                    None
                };
                (encoder, head)
            }
            Architecture::EfficientNetLite | Architecture::OnnxExport => {
                return Err(candle_core::Error::Msg("not a text encoder".into()))
            }
        };
        Ok(Self {
            encoder,
            head,
            pooling: spec.pooling,
            device,
        })
    }

    fn run(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>> {
        let shape = (batch.batch_size, batch.seq_len);
        let ids = Tensor::from_slice(&batch.input_ids, shape, &self.device)?;
        let types = Tensor::from_slice(&batch.type_ids, shape, &self.device)?;
        let mask = Tensor::from_slice(&batch.attention_mask, shape, &self.device)?;
        let hidden = match &self.encoder {
            Encoder::Bert(m) => m.forward(&ids, &types, Some(&mask))?,
            Encoder::DistilBert(m) => {
                // candle's DistilBERT masks positions where the mask is non-zero.
                let padding = mask.eq(0u32)?.unsqueeze(1)?.unsqueeze(1)?;
                m.forward(&ids, &padding)?
            }
            Encoder::XlmRoberta(m) => m.forward(&ids, &mask, &types, None, None, None)?,
        };
        let out = match &self.head {
            Some(head) => {
                let first = hidden.i((.., 0))?;
                match head {
                    ClassifierHead::Bert { pooler, classifier } => {
                        classifier.forward(&pooler.forward(&first)?.tanh()?)?
                    }
                    ClassifierHead::DistilBert {
                        pre_classifier,
                        classifier,
                    } => classifier.forward(&pre_classifier.forward(&first)?.relu()?)?,
                    ClassifierHead::Roberta { dense, out_proj } => {
                        out_proj.forward(&dense.forward(&first)?.tanh()?)?
                    }
                }
            }
            None => pool(&hidden, &mask, self.pooling)?,
        };
        out.to_dtype(DType::F32)?.to_vec2()
    }
}

/// `[batch, seq, hidden]` to `[batch, hidden]`, ignoring padding.
fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Cls => hidden.i((.., 0)),
        Pooling::Mean => {
            let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            summed.broadcast_div(&counts)
        }
    }
}

impl Backend for CandleBackend {
    fn forward(&self, batch: &EncodedBatch) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        self.run(batch)
            .map_err(|e| BackendError::Inference(e.to_string()))
    }
}
