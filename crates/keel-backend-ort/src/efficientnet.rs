//! Builds the ONNX graph of an EfficientNet-Lite image classifier from `config.json` and
//! `model.safetensors`, batch norm folded into the convolutions.
//!
//! Input `pixel_values` `[batch, 3, height, width]` (the preprocessed image, at the size
//! `preprocessor_config.json` crops to); output `logits` `[batch, labels]`: the names
//! `optimum` gives its image-classifier exports, so both kinds of folder run the same way.
//! The input size is fixed per model, so TensorFlow's "SAME" padding is written as explicit
//! `pads` computed here layer by layer (the odd pixel bottom/right), which also keeps the
//! graph to attributes every runtime reads.

use keel_engine::efficientnet::{same_padding, Block, EfficientNetLiteConfig};
use keel_engine::ModelSpec;

use crate::graph::{Builder, OPSET};
use crate::onnx_proto::{
    AttributeProto, DataType, Dim, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    ValueInfoProto, IR_VERSION,
};
use crate::weights::{Tensor, WeightFile, Weights};

pub const PIXEL_VALUES: &str = "pixel_values";

/// Builds the serialized ONNX model for the EfficientNet-Lite folder in `spec`.
pub fn build_model(spec: &ModelSpec) -> Result<Vec<u8>, String> {
    let image = spec
        .image
        .as_ref()
        .ok_or("an EfficientNet-Lite folder needs preprocessor_config.json")?;
    let path = spec.dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = EfficientNetLiteConfig::from_json(&json)?;
    let weights_path = spec.dir.join("model.safetensors");
    let file = WeightFile::open(&weights_path)?;
    let weights = file.tensors()?;
    let mut graph = LiteGraph {
        config: &config,
        weights: &weights,
        b: Builder::default(),
        size: (image.height, image.width),
    };
    let model = graph.build(spec.labels.len())?;
    Ok(prost::Message::encode_to_vec(&model))
}

struct LiteGraph<'a> {
    config: &'a EfficientNetLiteConfig,
    weights: &'a Weights<'a>,
    b: Builder,
    /// Spatial size of the value being built, for the next convolution's padding.
    size: (usize, usize),
}

/// One convolution as the checkpoint stores it.
struct Conv<'n> {
    weight: &'n str,
    batch_norm: &'n str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    /// Depthwise: one filter per channel (`group` = channels).
    depthwise: bool,
}

impl LiteGraph<'_> {
    fn build(&mut self, labels: usize) -> Result<ModelProto, String> {
        let (height, width) = self.size;
        let c = self.config;
        let mut x = self.conv_bn(
            PIXEL_VALUES,
            &Conv {
                weight: "_conv_stem.weight",
                batch_norm: "_bn0",
                in_channels: c.num_channels,
                out_channels: c.stem_channels,
                kernel: 3,
                stride: 2,
                depthwise: false,
            },
        )?;
        x = self.relu6(&x);
        for block in c.blocks() {
            x = self.block(&x, &block)?;
        }
        x = self.conv_bn(
            &x,
            &Conv {
                weight: "_conv_head.weight",
                batch_norm: "_bn1",
                in_channels: c.last_channels(),
                out_channels: c.head_channels,
                kernel: 1,
                stride: 1,
                depthwise: false,
            },
        )?;
        x = self.relu6(&x);
        let pooled = self.b.op("GlobalAveragePool", &[&x], vec![]);
        let flat = self
            .b
            .op("Flatten", &[&pooled], vec![AttributeProto::int("axis", 1)]);
        let fc = self
            .weights
            .get("_fc.weight")?
            .expect("_fc.weight", &[labels, c.head_channels])?;
        let bias = self
            .weights
            .get("_fc.bias")?
            .expect("_fc.bias", &[labels])?;
        let fc = self.b.f32_tensor("fc_weight", &fc.shape, &fc.data);
        let bias = self.b.f32_tensor("fc_bias", &bias.shape, &bias.data);
        let logits = self.b.op(
            "Gemm",
            &[&flat, &fc, &bias],
            vec![AttributeProto::int("transB", 1)],
        );
        let mut b = std::mem::take(&mut self.b);
        b.nodes.push(NodeProto {
            input: vec![logits],
            output: vec!["logits".into()],
            name: "output".into(),
            op_type: "Identity".into(),
            ..Default::default()
        });
        Ok(ModelProto {
            ir_version: IR_VERSION,
            producer_name: "keel-backend-ort".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                node: b.nodes,
                name: "efficientnet_lite".into(),
                initializer: b.initializers,
                input: vec![ValueInfoProto::tensor(
                    PIXEL_VALUES,
                    DataType::Float,
                    &[
                        Dim::Symbolic("batch"),
                        Dim::Fixed(c.num_channels),
                        Dim::Fixed(height),
                        Dim::Fixed(width),
                    ],
                )],
                output: vec![ValueInfoProto::tensor(
                    "logits",
                    DataType::Float,
                    &[Dim::Symbolic("batch"), Dim::Fixed(labels)],
                )],
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
        })
    }

    /// Expand (1x1) -> depthwise (kxk) -> project (1x1), ReLU6 after the first two, and the
    /// input added back where the shape allows.
    fn block(&mut self, input: &str, block: &Block) -> Result<String, String> {
        let p = format!("_blocks.{}", block.index);
        let mut x = input.to_string();
        if block.expands() {
            x = self.conv_bn(
                &x,
                &Conv {
                    weight: &format!("{p}._expand_conv.weight"),
                    batch_norm: &format!("{p}._bn0"),
                    in_channels: block.in_channels,
                    out_channels: block.expanded,
                    kernel: 1,
                    stride: 1,
                    depthwise: false,
                },
            )?;
            x = self.relu6(&x);
        }
        x = self.conv_bn(
            &x,
            &Conv {
                weight: &format!("{p}._depthwise_conv.weight"),
                batch_norm: &format!("{p}._bn1"),
                in_channels: block.expanded,
                out_channels: block.expanded,
                kernel: block.kernel_size,
                stride: block.stride,
                depthwise: true,
            },
        )?;
        x = self.relu6(&x);
        x = self.conv_bn(
            &x,
            &Conv {
                weight: &format!("{p}._project_conv.weight"),
                batch_norm: &format!("{p}._bn2"),
                in_channels: block.expanded,
                out_channels: block.out_channels,
                kernel: 1,
                stride: 1,
                depthwise: false,
            },
        )?;
        if block.residual() {
            x = self.b.op("Add", &[&x, input], vec![]);
        }
        Ok(x)
    }

    /// A bias-free convolution followed by batch norm, folded into one `Conv` with a bias.
    fn conv_bn(&mut self, x: &str, conv: &Conv<'_>) -> Result<String, String> {
        let per_group = if conv.depthwise { 1 } else { conv.in_channels };
        let shape = [conv.out_channels, per_group, conv.kernel, conv.kernel];
        let w = self.weights.get(conv.weight)?.expect(conv.weight, &shape)?;
        let (w, bias) = fold_batch_norm(w, &self.batch_norm(conv.batch_norm, conv.out_channels)?);
        let w = self.b.f32_tensor("conv_weight", &shape, &w);
        let bias = self.b.f32_tensor("conv_bias", &[conv.out_channels], &bias);

        let (h, wd) = self.size;
        let (top, bottom) = same_padding(h, conv.kernel, conv.stride);
        let (left, right) = same_padding(wd, conv.kernel, conv.stride);
        self.size = (h.div_ceil(conv.stride), wd.div_ceil(conv.stride));
        let k = conv.kernel as i64;
        let s = conv.stride as i64;
        let group = if conv.depthwise { conv.in_channels } else { 1 };
        Ok(self.b.op(
            "Conv",
            &[x, &w, &bias],
            vec![
                AttributeProto::ints("kernel_shape", &[k, k]),
                AttributeProto::ints("strides", &[s, s]),
                AttributeProto::ints(
                    "pads",
                    &[top as i64, left as i64, bottom as i64, right as i64],
                ),
                AttributeProto::int("group", group as i64),
            ],
        ))
    }

    fn batch_norm(&self, name: &str, channels: usize) -> Result<BatchNorm, String> {
        let get = |part: &str| -> Result<Tensor, String> {
            let full = format!("{name}.{part}");
            self.weights.get(&full)?.expect(&full, &[channels])
        };
        Ok(BatchNorm {
            gamma: get("weight")?.data,
            beta: get("bias")?.data,
            mean: get("running_mean")?.data,
            var: get("running_var")?.data,
            eps: self.config.batch_norm_eps,
        })
    }

    /// ReLU6 as `Clip(x, 0, 6)`, which ONNX Runtime fuses into the preceding `Conv`.
    fn relu6(&mut self, x: &str) -> String {
        let zero = self.b.scalar(0.0);
        let six = self.b.scalar(6.0);
        self.b.op("Clip", &[x, &zero, &six], vec![])
    }
}

struct BatchNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    eps: f32,
}

/// `bn(conv(x, w))` = `conv(x, w * s) + (beta - mean * s)` with `s = gamma / sqrt(var + eps)`
/// per output channel; computed in f64 so folding adds no error of its own.
fn fold_batch_norm(w: Tensor, bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let out_channels = bn.gamma.len();
    let per_channel = w.data.len() / out_channels;
    let mut folded = w.data;
    let mut bias = Vec::with_capacity(out_channels);
    for (o, chunk) in folded.chunks_exact_mut(per_channel).enumerate() {
        let scale = f64::from(bn.gamma[o]) / (f64::from(bn.var[o]) + f64::from(bn.eps)).sqrt();
        chunk
            .iter_mut()
            .for_each(|v| *v = (f64::from(*v) * scale) as f32);
        bias.push((f64::from(bn.beta[o]) - f64::from(bn.mean[o]) * scale) as f32);
    }
    (folded, bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_batch_norm_after_the_convolution() {
        // Two output channels of a 1x1 conv over one input channel.
        let w = Tensor {
            shape: vec![2, 1, 1, 1],
            data: vec![2.0, -1.0],
        };
        let bn = BatchNorm {
            gamma: vec![1.5, 0.5],
            beta: vec![0.1, -0.2],
            mean: vec![0.3, 0.4],
            var: vec![4.0, 0.25],
            eps: 1e-3,
        };
        let (folded, bias) = fold_batch_norm(w, &bn);
        let x = 0.7f64;
        for (o, &raw) in [2.0f64, -1.0].iter().enumerate() {
            let conv = raw * x;
            let expected = (conv - f64::from(bn.mean[o])) / (f64::from(bn.var[o]) + 1e-3).sqrt()
                * f64::from(bn.gamma[o])
                + f64::from(bn.beta[o]);
            let got = f64::from(folded[o]) * x + f64::from(bias[o]);
            assert!((got - expected).abs() < 1e-6, "{o}: {got} vs {expected}");
        }
    }
}
