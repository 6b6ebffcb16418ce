//! EfficientNet-Lite as `config.json` describes it, shared by the backends that build it.
//!
//! The Lite variants are EfficientNet-B0..B4 made friendly to integer and mobile runtimes:
//! no squeeze-excitation, ReLU6 instead of swish, the stem and head kept at fixed widths.
//! The checkpoints come from TensorFlow, so convolutions pad as TensorFlow's "SAME" does
//! (the odd pixel goes bottom/right) and batch norm uses eps 1e-3. `config.json` lists the
//! stages; [`EfficientNetLiteConfig::blocks`] expands them into the blocks the weights name
//! (`_blocks.{index}.*`, the naming of the widely used `efficientnet_pytorch` checkpoints).

use serde::Deserialize;

/// One stage: `repeats` blocks, the first with `stride` and `in_channels`, the rest with
/// stride 1 and `out_channels` in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stage {
    pub repeats: usize,
    pub kernel_size: usize,
    pub stride: usize,
    pub expand_ratio: usize,
    pub in_channels: usize,
    pub out_channels: usize,
}

/// One inverted-residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub index: usize,
    pub kernel_size: usize,
    pub stride: usize,
    pub in_channels: usize,
    /// Channels of the depthwise convolution (`in_channels * expand_ratio`).
    pub expanded: usize,
    pub out_channels: usize,
}

impl Block {
    /// Blocks with an expand ratio of 1 have no 1x1 expansion convolution.
    pub fn expands(&self) -> bool {
        self.expanded != self.in_channels
    }

    /// The residual connection exists only where the shape is unchanged.
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EfficientNetLiteConfig {
    #[serde(default = "three")]
    pub num_channels: usize,
    pub stem_channels: usize,
    pub head_channels: usize,
    pub stages: Vec<Stage>,
    #[serde(default = "tf_eps")]
    pub batch_norm_eps: f32,
}

fn three() -> usize {
    3
}

fn tf_eps() -> f32 {
    1e-3
}

impl EfficientNetLiteConfig {
    pub fn from_json(config: &serde_json::Value) -> Result<Self, String> {
        if let Some(act) = config.get("hidden_act").and_then(|v| v.as_str()) {
            if act != "relu6" {
                return Err(format!(
                    "config.json: EfficientNet-Lite uses relu6, not \"{act}\""
                ));
            }
        }
        let parsed: Self =
            serde_json::from_value(config.clone()).map_err(|e| format!("config.json: {e}"))?;
        if parsed.stages.is_empty() {
            return Err("config.json: \"stages\" is empty".into());
        }
        let bad = parsed.stages.iter().position(|s| {
            s.repeats == 0
                || s.kernel_size % 2 == 0
                || s.stride == 0
                || s.expand_ratio == 0
                || s.in_channels == 0
                || s.out_channels == 0
        });
        if let Some(i) = bad {
            return Err(format!(
                "config.json: stage {i} needs positive sizes and an odd kernel"
            ));
        }
        Ok(parsed)
    }

    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        for stage in &self.stages {
            for repeat in 0..stage.repeats {
                let in_channels = if repeat == 0 {
                    stage.in_channels
                } else {
                    stage.out_channels
                };
                blocks.push(Block {
                    index: blocks.len(),
                    kernel_size: stage.kernel_size,
                    stride: if repeat == 0 { stage.stride } else { 1 },
                    in_channels,
                    expanded: in_channels * stage.expand_ratio,
                    out_channels: stage.out_channels,
                });
            }
        }
        blocks
    }

    /// Channels entering the head convolution.
    pub fn last_channels(&self) -> usize {
        self.stages.last().map_or(0, |s| s.out_channels)
    }
}

/// TensorFlow "SAME" padding for one spatial axis: (before, after), the odd pixel after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lite0() -> serde_json::Value {
        serde_json::json!({
            "model_type": "efficientnet_lite", "hidden_act": "relu6",
            "stem_channels": 32, "head_channels": 1280,
            "stages": [
                {"repeats": 1, "kernel_size": 3, "stride": 1, "expand_ratio": 1, "in_channels": 32, "out_channels": 16},
                {"repeats": 2, "kernel_size": 3, "stride": 2, "expand_ratio": 6, "in_channels": 16, "out_channels": 24},
                {"repeats": 2, "kernel_size": 5, "stride": 2, "expand_ratio": 6, "in_channels": 24, "out_channels": 40},
                {"repeats": 3, "kernel_size": 3, "stride": 2, "expand_ratio": 6, "in_channels": 40, "out_channels": 80},
                {"repeats": 3, "kernel_size": 5, "stride": 1, "expand_ratio": 6, "in_channels": 80, "out_channels": 112},
                {"repeats": 4, "kernel_size": 5, "stride": 2, "expand_ratio": 6, "in_channels": 112, "out_channels": 192},
                {"repeats": 1, "kernel_size": 3, "stride": 1, "expand_ratio": 6, "in_channels": 192, "out_channels": 320}
            ]
        })
    }

    #[test]
    fn lite0_expands_into_sixteen_blocks_with_residuals_where_shapes_match() {
        let config = EfficientNetLiteConfig::from_json(&lite0()).unwrap();
        let blocks = config.blocks();
        assert_eq!(blocks.len(), 16);
        assert!(!blocks[0].expands() && !blocks[0].residual());
        assert_eq!((blocks[1].stride, blocks[1].expanded), (2, 96));
        assert!(blocks[2].residual() && blocks[2].in_channels == 24);
        assert_eq!(blocks.iter().filter(|b| b.residual()).count(), 9);
        assert_eq!(config.last_channels(), 320);
        assert_eq!(config.batch_norm_eps, 1e-3);
    }

    #[test]
    fn other_activations_and_even_kernels_are_refused() {
        let mut c = lite0();
        c["hidden_act"] = "swish".into();
        assert!(EfficientNetLiteConfig::from_json(&c)
            .unwrap_err()
            .contains("relu6"));
        let mut c = lite0();
        c["stages"][0]["kernel_size"] = 4.into();
        assert!(EfficientNetLiteConfig::from_json(&c)
            .unwrap_err()
            .contains("odd kernel"));
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
    }
}
