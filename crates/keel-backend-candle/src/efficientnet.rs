//! EfficientNet-Lite image classifiers in candle, the fallback to the ONNX Runtime graph.
//!
//! `candle-transformers`' EfficientNet is the B0-B7 family (squeeze-excitation, swish,
//! symmetric padding), which does not fit the Lite checkpoints; the network is written here
//! from [`keel_engine::efficientnet`]'s description. Batch norm is folded into each
//! convolution at load, and TensorFlow's "SAME" padding (the odd pixel bottom/right) is an
//! explicit pad before each convolution, since candle's own padding is symmetric.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use keel_engine::efficientnet::{same_padding, EfficientNetLiteConfig};
use keel_engine::{BackendError, ImageBatch, ModelSpec};

/// A convolution with batch norm folded in, and the stride its padding depends on.
struct ConvBn {
    conv: Conv2d,
    kernel: usize,
    stride: usize,
}

impl ConvBn {
    /// Loads `{weight}` and the batch norm `{batch_norm}.*` and folds them.
    fn load(
        vb: &VarBuilder,
        weight: &str,
        batch_norm: &str,
        (in_channels, out_channels, kernel, stride, groups): (usize, usize, usize, usize, usize),
        eps: f64,
    ) -> Result<Self> {
        let w = vb.get((out_channels, in_channels / groups, kernel, kernel), weight)?;
        let bn = vb.pp(batch_norm);
        let gamma = bn.get(out_channels, "weight")?;
        let beta = bn.get(out_channels, "bias")?;
        let mean = bn.get(out_channels, "running_mean")?;
        let var = bn.get(out_channels, "running_var")?;
        let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
        let w = w.broadcast_mul(&scale.reshape((out_channels, 1, 1, 1))?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        let config = Conv2dConfig {
            padding: 0,
            stride,
            dilation: 1,
            groups,
            cudnn_fwd_algo: None,
        };
        Ok(Self {
            conv: Conv2d::new(w, Some(bias), config),
            kernel,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let x = x
            .pad_with_zeros(D::Minus2, top, bottom)?
            .pad_with_zeros(D::Minus1, left, right)?;
        self.conv.forward(&x)
    }
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

pub struct EfficientNetLite {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    classifier: Linear,
    device: Device,
}

impl EfficientNetLite {
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        let text = std::fs::read_to_string(spec.dir.join("config.json"))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::Msg(format!("config.json: {e}")))?;
        let config = EfficientNetLiteConfig::from_json(&json).map_err(candle_core::Error::Msg)?;
        let device = Device::Cpu;
        let weights = spec.dir.join("model.safetensors");
        // SAFETY: mapped read-only; Keel never writes model folders while serving them.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
        let eps = f64::from(config.batch_norm_eps);
        let stem = ConvBn::load(
            &vb,
            "_conv_stem.weight",
            "_bn0",
            (config.num_channels, config.stem_channels, 3, 2, 1),
            eps,
        )?;
        let mut blocks = Vec::new();
        for b in config.blocks() {
            let p = format!("_blocks.{}", b.index);
            let expand = if b.expands() {
                Some(ConvBn::load(
                    &vb,
                    &format!("{p}._expand_conv.weight"),
                    &format!("{p}._bn0"),
                    (b.in_channels, b.expanded, 1, 1, 1),
                    eps,
                )?)
            } else {
                None
            };
            let depthwise = ConvBn::load(
                &vb,
                &format!("{p}._depthwise_conv.weight"),
                &format!("{p}._bn1"),
                (b.expanded, b.expanded, b.kernel_size, b.stride, b.expanded),
                eps,
            )?;
            let project = ConvBn::load(
                &vb,
                &format!("{p}._project_conv.weight"),
                &format!("{p}._bn2"),
                (b.expanded, b.out_channels, 1, 1, 1),
                eps,
            )?;
            blocks.push(Block {
                expand,
                depthwise,
                project,
                residual: b.residual(),
            });
        }
        let head = ConvBn::load(
            &vb,
            "_conv_head.weight",
            "_bn1",
            (config.last_channels(), config.head_channels, 1, 1, 1),
            eps,
        )?;
        let classifier = candle_nn::linear(config.head_channels, spec.labels.len(), vb.pp("_fc"))?;
        Ok(Self {
            stem,
            blocks,
            head,
            classifier,
            device,
        })
    }

    fn logits(&self, batch: &ImageBatch) -> Result<Vec<Vec<f32>>> {
        let x = Tensor::from_slice(
            &batch.pixels,
            (batch.batch_size, 3, batch.height, batch.width),
            &self.device,
        )?;
        let mut x = relu6(&self.stem.forward(&x)?)?;
        for block in &self.blocks {
            let input = x.clone();
            if let Some(expand) = &block.expand {
                x = relu6(&expand.forward(&x)?)?;
            }
            x = relu6(&block.depthwise.forward(&x)?)?;
            x = block.project.forward(&x)?;
            if block.residual {
                x = (x + input)?;
            }
        }
        let x = relu6(&self.head.forward(&x)?)?;
        let pooled = x.mean((2, 3))?;
        self.classifier.forward(&pooled)?.to_vec2::<f32>()
    }

    pub fn forward_images(
        &self,
        batch: &ImageBatch,
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        self.logits(batch)
            .map_err(|e| BackendError::Inference(e.to_string()))
    }
}
