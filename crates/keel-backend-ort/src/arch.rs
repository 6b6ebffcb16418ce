//! What differs between BERT, DistilBERT and XLM-RoBERTa: `config.json` keys, tensor names,
//! position ids and classifier heads. The graph builder works from this description only.

use keel_engine::{Architecture, ModelSpec};
use serde_json::Value;

/// The feed-forward activation (`hidden_act` / `activation` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` through `Erf`: Hugging Face's `gelu`.
    Gelu,
    /// The tanh approximation: `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
}

/// How position ids are derived from the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// `0..seq_len` for every row (BERT, DistilBERT; padding is on the right).
    Absolute,
    /// RoBERTa: non-padding tokens count up from `pad_token_id + 1`, padding gets
    /// `pad_token_id`.
    AfterPadding { pad_token_id: i64 },
}

/// The classification head on top of the first token's hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `classifier(tanh(pooler.dense(h)))`
    BertPooler,
    /// `classifier(relu(pre_classifier(h)))`
    DistilBert,
    /// `classifier.out_proj(tanh(classifier.dense(h)))`
    Roberta,
}

/// Tensor names inside one encoder layer (relative to the layer's prefix, without
/// `.weight`/`.bias`).
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub prefix: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_out: &'static str,
    pub attention_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub output_norm: &'static str,
}

const BERT_LAYER: LayerNames = LayerNames {
    prefix: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    output_norm: "output.LayerNorm",
};

const DISTILBERT_LAYER: LayerNames = LayerNames {
    prefix: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// Everything the graph builder needs to know about an encoder.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub layer_norm_eps: f32,
    pub activation: Activation,
    pub positions: Positions,
    /// DistilBERT has no token type embeddings (and so no `token_type_ids` input).
    pub token_types: bool,
    /// Prefix of the encoder's tensors in a task checkpoint (`bert.`); probed, not assumed.
    pub checkpoint_prefix: &'static str,
    pub layer_names: LayerNames,
    pub head: Head,
}

fn usize_key(config: &Value, keys: &[&str]) -> Result<usize, String> {
    keys.iter()
        .find_map(|k| config.get(*k).and_then(Value::as_u64))
        .map(|v| v as usize)
        .ok_or_else(|| format!("config.json: missing \"{}\"", keys[0]))
}

fn activation(name: &str) -> Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(format!(
            "config.json: activation \"{other}\" is not supported"
        )),
    }
}

impl EncoderConfig {
    /// Reads `config.json` from the model folder.
    pub fn read(spec: &ModelSpec) -> Result<Self, String> {
        let path = spec.dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_json(spec.architecture, &config)
    }

    pub fn from_json(architecture: Architecture, config: &Value) -> Result<Self, String> {
        let str_key = |k: &str| config.get(k).and_then(Value::as_str);
        let f32_key = |k: &str| config.get(k).and_then(Value::as_f64).map(|v| v as f32);
        if let Some(kind) = str_key("position_embedding_type") {
            if kind != "absolute" {
                return Err(format!(
                    "config.json: position_embedding_type \"{kind}\" is not supported"
                ));
            }
        }
        let config = match architecture {
            Architecture::Bert | Architecture::XlmRoberta => {
                let roberta = architecture == Architecture::XlmRoberta;
                Self {
                    hidden: usize_key(config, &["hidden_size"])?,
                    heads: usize_key(config, &["num_attention_heads"])?,
                    layers: usize_key(config, &["num_hidden_layers"])?,
                    intermediate: usize_key(config, &["intermediate_size"])?,
                    layer_norm_eps: f32_key("layer_norm_eps").unwrap_or(1e-12),
                    activation: activation(str_key("hidden_act").unwrap_or("gelu"))?,
                    positions: if roberta {
                        Positions::AfterPadding {
                            pad_token_id: config
                                .get("pad_token_id")
                                .and_then(Value::as_i64)
                                .unwrap_or(1),
                        }
                    } else {
                        Positions::Absolute
                    },
                    token_types: true,
                    checkpoint_prefix: if roberta { "roberta." } else { "bert." },
                    layer_names: BERT_LAYER,
                    head: if roberta {
                        Head::Roberta
                    } else {
                        Head::BertPooler
                    },
                }
            }
            Architecture::DistilBert => Self {
                hidden: usize_key(config, &["dim", "hidden_size"])?,
                heads: usize_key(config, &["n_heads", "num_attention_heads"])?,
                layers: usize_key(config, &["n_layers", "num_hidden_layers"])?,
                intermediate: usize_key(config, &["hidden_dim", "intermediate_size"])?,
                // DistilBERT's LayerNorms are built with a fixed epsilon, not a config key.
                layer_norm_eps: 1e-12,
                activation: activation(str_key("activation").unwrap_or("gelu"))?,
                positions: Positions::Absolute,
                token_types: false,
                checkpoint_prefix: "distilbert.",
                layer_names: DISTILBERT_LAYER,
                head: Head::DistilBert,
            },
            Architecture::EfficientNetLite | Architecture::OnnxExport => {
                return Err("config.json: not a text encoder".into())
            }
        };
        if config.heads == 0 || config.hidden % config.heads != 0 {
            return Err(format!(
                "config.json: hidden size {} is not a multiple of {} heads",
                config.hidden, config.heads
            ));
        }
        Ok(config)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_each_architecture() {
        let bert = json!({"hidden_size": 384, "num_attention_heads": 12, "num_hidden_layers": 6,
                          "intermediate_size": 1536, "hidden_act": "gelu"});
        let c = EncoderConfig::from_json(Architecture::Bert, &bert).unwrap();
        assert_eq!((c.head_dim(), c.positions), (32, Positions::Absolute));

        let distil = json!({"dim": 768, "n_heads": 12, "n_layers": 6, "hidden_dim": 3072,
                            "activation": "gelu"});
        let c = EncoderConfig::from_json(Architecture::DistilBert, &distil).unwrap();
        assert!(!c.token_types);
        assert_eq!(c.head, Head::DistilBert);

        let xlmr = json!({"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12,
                          "intermediate_size": 3072, "layer_norm_eps": 1e-5, "pad_token_id": 1});
        let c = EncoderConfig::from_json(Architecture::XlmRoberta, &xlmr).unwrap();
        assert_eq!(c.positions, Positions::AfterPadding { pad_token_id: 1 });
        assert_eq!(c.layer_norm_eps, 1e-5);
    }

    #[test]
    fn rejects_what_the_graph_cannot_express() {
        let rel = json!({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                         "intermediate_size": 16, "position_embedding_type": "relative_key"});
        let err = EncoderConfig::from_json(Architecture::Bert, &rel).unwrap_err();
        assert!(err.contains("relative_key"), "{err}");
        let act = json!({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                         "intermediate_size": 16, "hidden_act": "swish"});
        let err = EncoderConfig::from_json(Architecture::Bert, &act).unwrap_err();
        assert!(err.contains("swish"), "{err}");
    }
}
