//! What a model folder is, decided once from the files in it.
//!
//! Hugging Face layout: `config.json` names the architecture and, for classifiers, the labels;
//! sentence-transformers folders add `modules.json` (is there a Normalize step?),
//! `1_Pooling/config.json` (how token vectors become one) and `sentence_bert_config.json`
//! (the maximum sequence length the model was trained with). Image classifiers add
//! `preprocessor_config.json` (resize, crop, rescale, normalisation), read once here so a
//! folder that cannot be served says why before any weights load.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classification,
    Embedding,
    /// A generative language model (a GGUF file, served by a generation backend).
    #[serde(rename = "text-generation")]
    TextGeneration,
    #[serde(rename = "image-classification")]
    ImageClassification,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Embedding => "embedding",
            Task::TextGeneration => "text-generation",
            Task::ImageClassification => "image-classification",
        }
    }

    /// Tasks whose answers are label scores (`/predict`).
    pub fn is_classifier(self) -> bool {
        matches!(self, Task::Classification | Task::ImageClassification)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Bert,
    DistilBert,
    XlmRoberta,
    /// EfficientNet-Lite image classifiers, built from safetensors ([`crate::efficientnet`]).
    EfficientNetLite,
    /// A folder's own `model.onnx` (e.g. an `optimum` export of ViT, ResNet, ConvNeXt),
    /// run as it is; only a backend that reads ONNX serves it.
    OnnxExport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Cls,
    Mean,
}

/// How classifier scores are computed from logits, as `problem_type` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreFunction {
    Softmax,
    Sigmoid,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub dir: PathBuf,
    pub task: Task,
    pub architecture: Architecture,
    /// Labels in output order; empty for embedding models.
    pub labels: Vec<String>,
    pub score_function: ScoreFunction,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Output width: hidden size for embeddings, label count for classifiers.
    pub dimensions: usize,
    /// Longest input, in tokens including special tokens, the model accepts (text models).
    pub max_input_tokens: usize,
    /// How images become the model's input (image models only).
    pub image: Option<ImageInput>,
}

/// An image model's input: the preprocessing from `preprocessor_config.json`, and the
/// tensor it produces, `[3, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    pub preprocessing: keel_vision::Preprocessing,
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(path: &Path, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, SpecError> {
    let text = fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, SpecError> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

impl ModelSpec {
    /// Inspects `dir`. Fails with a reason a person can act on when the folder is not a model
    /// Keel can serve.
    pub fn inspect(dir: &Path) -> Result<Self, SpecError> {
        if !dir.is_dir() {
            return Err(invalid(dir, "no such model folder"));
        }
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&config_path, "missing \"model_type\""))?;
        let preprocessor = dir.join("preprocessor_config.json");
        if preprocessor.exists() || model_type == "efficientnet_lite" {
            return Self::inspect_image_model(dir, &config, model_type);
        }
        let architecture = match model_type {
            "bert" => Architecture::Bert,
            "distilbert" => Architecture::DistilBert,
            "roberta" | "xlm-roberta" | "camembert" => Architecture::XlmRoberta,
            other => {
                return Err(invalid(
                    &config_path,
                    format!(
                        "model_type \"{other}\" is not supported (bert, distilbert, roberta, xlm-roberta)"
                    ),
                ))
            }
        };
        let is_classifier = config
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .any(|s| s.ends_with("ForSequenceClassification"))
            });
        let hidden = config
            .get("hidden_size")
            .or_else(|| config.get("dim"))
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid(&config_path, "missing \"hidden_size\""))?
            as usize;

        let max_input_tokens = max_input_tokens(dir, &config, architecture)?;
        let modules = read_optional_json(&dir.join("modules.json"))?;
        let normalize = modules.as_ref().and_then(Value::as_array).is_some_and(|m| {
            m.iter().any(|module| {
                module
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with(".Normalize"))
            })
        });
        let pooling = pooling(dir, is_classifier)?;

        let (task, labels, dimensions) = if is_classifier {
            let labels = labels(&config).map_err(|r| invalid(&config_path, r))?;
            let n = labels.len();
            (Task::Classification, labels, n)
        } else {
            (Task::Embedding, Vec::new(), hidden)
        };
        let score_function = match config.get("problem_type").and_then(Value::as_str) {
            Some("multi_label_classification") => ScoreFunction::Sigmoid,
            _ if task == Task::Classification && labels.len() == 1 => ScoreFunction::Sigmoid,
            _ => ScoreFunction::Softmax,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            task,
            architecture,
            labels,
            score_function,
            pooling,
            normalize,
            dimensions,
            max_input_tokens,
            image: None,
        })
    }

    /// An image classifier: EfficientNet-Lite weights Keel builds itself, or any folder
    /// with its own `model.onnx` and Hugging Face's two config files.
    fn inspect_image_model(
        dir: &Path,
        config: &Value,
        model_type: &str,
    ) -> Result<Self, SpecError> {
        let config_path = dir.join("config.json");
        let architecture = if model_type == "efficientnet_lite" {
            crate::efficientnet::EfficientNetLiteConfig::from_json(config)
                .map_err(|r| invalid(&config_path, r))?;
            Architecture::EfficientNetLite
        } else if dir.join("model.onnx").is_file() {
            Architecture::OnnxExport
        } else {
            return Err(invalid(
                dir,
                format!(
                    "image model_type \"{model_type}\" needs its own model.onnx (export it \
                     with optimum); Keel builds only efficientnet_lite from safetensors"
                ),
            ));
        };
        let preprocessor = dir.join("preprocessor_config.json");
        if !preprocessor.exists() {
            return Err(invalid(
                dir,
                "an image model needs preprocessor_config.json",
            ));
        }
        let preprocessing = keel_vision::Preprocessing::from_hf_config(&preprocessor)
            .map_err(|r| invalid(&preprocessor, r))?;
        let (height, width) = preprocessing.input_size();
        let labels = labels(config).map_err(|r| invalid(&config_path, r))?;
        let score_function = match config.get("problem_type").and_then(Value::as_str) {
            Some("multi_label_classification") => ScoreFunction::Sigmoid,
            _ => ScoreFunction::Softmax,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            task: Task::ImageClassification,
            architecture,
            dimensions: labels.len(),
            labels,
            score_function,
            pooling: Pooling::Cls,
            normalize: false,
            max_input_tokens: 0,
            image: Some(ImageInput {
                preprocessing,
                height: height as usize,
                width: width as usize,
            }),
        })
    }

    /// Path of the weights: safetensors preferred, PyTorch pickle as a fallback.
    pub fn weights_path(&self) -> Result<PathBuf, SpecError> {
        ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|f| self.dir.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| invalid(&self.dir, "no model.safetensors or pytorch_model.bin"))
    }
}

fn labels(config: &Value) -> Result<Vec<String>, String> {
    let Some(map) = config.get("id2label").and_then(Value::as_object) else {
        let n = config
            .get("num_labels")
            .and_then(Value::as_u64)
            .unwrap_or(2) as usize;
        return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
    };
    let mut pairs = map
        .iter()
        .map(|(k, v)| {
            let id: usize = k
                .parse()
                .map_err(|_| format!("id2label key \"{k}\" is not an index"))?;
            let label = v.as_str().ok_or("id2label values must be strings")?;
            Ok((id, label.to_string()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    pairs.sort();
    if pairs.iter().enumerate().any(|(i, (id, _))| i != *id) {
        return Err("id2label must map 0..n-1".into());
    }
    if pairs.is_empty() {
        return Err("id2label is empty".into());
    }
    Ok(pairs.into_iter().map(|(_, l)| l).collect())
}

fn pooling(dir: &Path, is_classifier: bool) -> Result<Pooling, SpecError> {
    let path = dir.join("1_Pooling/config.json");
    let Some(value) = read_optional_json(&path)? else {
        // Classifiers pool through their own head; bare encoders default to mean pooling,
        // as sentence-transformers does for a plain transformer folder.
        return Ok(if is_classifier {
            Pooling::Cls
        } else {
            Pooling::Mean
        });
    };
    let cfg: PoolingConfig =
        serde_json::from_value(value).map_err(|e| invalid(&path, e.to_string()))?;
    match (
        cfg.pooling_mode_cls_token,
        cfg.pooling_mode_mean_tokens,
        cfg.pooling_mode_max_tokens || cfg.pooling_mode_mean_sqrt_len_tokens,
    ) {
        (true, false, false) => Ok(Pooling::Cls),
        (false, true, false) => Ok(Pooling::Mean),
        _ => Err(invalid(
            &path,
            "only a single cls or mean pooling mode is supported",
        )),
    }
}

fn max_input_tokens(dir: &Path, config: &Value, arch: Architecture) -> Result<usize, SpecError> {
    let positions = config
        .get("max_position_embeddings")
        .and_then(Value::as_u64)
        .unwrap_or(512) as usize;
    // RoBERTa-style position ids start after the padding index.
    let mut max = match arch {
        Architecture::XlmRoberta => {
            let pad = config
                .get("pad_token_id")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize;
            positions.saturating_sub(pad + 1)
        }
        _ => positions,
    };
    if let Some(st) = read_optional_json(&dir.join("sentence_bert_config.json"))? {
        if let Some(n) = st.get("max_seq_length").and_then(Value::as_u64) {
            max = max.min(n as usize);
        }
    } else if let Some(tc) = read_optional_json(&dir.join("tokenizer_config.json"))? {
        // Tokenizers without a real limit store a huge sentinel here; ignore those.
        if let Some(n) = tc.get("model_max_length").and_then(Value::as_u64) {
            if n < 1_000_000 {
                max = max.min(n as usize);
            }
        }
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> crate::testing::TempFolder {
        let dir = crate::testing::TempFolder::new();
        for (name, body) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        dir
    }

    #[test]
    fn sentence_transformers_folder_is_an_embedding_model() {
        let dir = folder(&[
            (
                "config.json",
                r#"{"model_type":"bert","architectures":["BertModel"],"hidden_size":384,"max_position_embeddings":512}"#,
            ),
            (
                "modules.json",
                r#"[{"type":"sentence_transformers.models.Transformer"},{"type":"sentence_transformers.models.Pooling"},{"type":"sentence_transformers.models.Normalize"}]"#,
            ),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens":true}"#,
            ),
            ("sentence_bert_config.json", r#"{"max_seq_length":256}"#),
        ]);
        let spec = ModelSpec::inspect(dir.path()).unwrap();
        assert_eq!(spec.task, Task::Embedding);
        assert_eq!(spec.pooling, Pooling::Mean);
        assert!(spec.normalize);
        assert_eq!(spec.dimensions, 384);
        assert_eq!(spec.max_input_tokens, 256);
    }

    #[test]
    fn classifier_labels_come_from_id2label_in_index_order() {
        let dir = folder(&[(
            "config.json",
            r#"{"model_type":"bert","architectures":["BertForSequenceClassification"],"hidden_size":8,
               "id2label":{"1":"POSITIVE","0":"NEGATIVE"}}"#,
        )]);
        let spec = ModelSpec::inspect(dir.path()).unwrap();
        assert_eq!(spec.task, Task::Classification);
        assert_eq!(spec.labels, ["NEGATIVE", "POSITIVE"]);
        assert_eq!(spec.score_function, ScoreFunction::Softmax);
        assert_eq!(spec.max_input_tokens, 512);
    }

    #[test]
    fn roberta_positions_are_offset_by_the_padding_index() {
        let dir = folder(&[(
            "config.json",
            r#"{"model_type":"xlm-roberta","hidden_size":8,"max_position_embeddings":514,"pad_token_id":1}"#,
        )]);
        assert_eq!(
            ModelSpec::inspect(dir.path()).unwrap().max_input_tokens,
            512
        );
    }

    #[test]
    fn unsupported_and_missing_folders_say_why() {
        let dir = folder(&[("config.json", r#"{"model_type":"gpt2"}"#)]);
        let err = ModelSpec::inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("gpt2"), "{err}");
        let err = ModelSpec::inspect(Path::new("/nonexistent/keel"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such model folder"), "{err}");
    }
}
