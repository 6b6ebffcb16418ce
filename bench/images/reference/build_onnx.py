"""EfficientNet-Lite0 as an ONNX graph, for the Python reference service of the image benchmark.

    .cache/bench-images-venv/bin/python bench/images/reference/build_onnx.py \
        --model-dir models/efficientnet-lite0 --out .cache/bench-images/efficientnet-lite0.onnx

Reads the folder Keel serves (model.safetensors with efficientnet_pytorch's tensor names,
config.json with model_type efficientnet_lite and its "stages") and writes the network with
the `onnx` package alone: no PyTorch (a 6 GB install) to export it. What a Python team gets
from `torch.onnx.export` of the same network, written out by hand:

- batch norms folded into the convolution before them (weight x gamma / sqrt(var + eps),
  a bias of beta - mean x gamma / sqrt(var + eps)), as the exporter's constant folding and
  ONNX Runtime's optimiser do anyway;
- TensorFlow's SAME padding as explicit pads (the weights were trained in TensorFlow: an odd
  total pad puts the extra pixel at the bottom and right), computed for the fixed input size;
- ReLU6 as Clip(0, 6), which ONNX Runtime fuses into the convolution;
- no squeeze-excitation (the Lite models drop it), a residual add where a block keeps its
  stride 1 and its channel count.

Input `pixel_values` [N, 3, 224, 224] float32 (already normalised: (x - 127) / 128); output
`logits` [N, 1000]. Standard library, numpy, onnx and safetensors only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17


class GraphBuilder:
    """Nodes and initializers, with the spatial size tracked so that SAME pads can be exact."""

    def __init__(self, weights: dict[str, np.ndarray], eps: float, size: int):
        self.weights = weights
        self.used: set[str] = set()
        self.eps = eps
        self.size = size  # current height = width of the feature map
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
        self.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))

    def tensor(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise SystemExit(f"model.safetensors has no tensor {name}")
        self.used.add(name)
        return self.weights[name].astype(np.float64)

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def conv_bn(self, x: str, conv: str, bn: str, stride: int, groups: int = 1,
                relu6: bool = True) -> str:
        """Conv (TF SAME padding, no bias) + folded batch norm (+ ReLU6)."""
        w = self.tensor(f"{conv}.weight")
        gamma, beta = self.tensor(f"{bn}.weight"), self.tensor(f"{bn}.bias")
        mean, var = self.tensor(f"{bn}.running_mean"), self.tensor(f"{bn}.running_var")
        scale = gamma / np.sqrt(var + self.eps)
        w_folded = (w * scale[:, None, None, None]).astype(np.float32)
        b_folded = (beta - mean * scale).astype(np.float32)
        k = w.shape[2]
        out_size = math.ceil(self.size / stride)
        total = max((out_size - 1) * stride + k - self.size, 0)
        begin, end = total // 2, total - total // 2
        self.size = out_size
        wname, bname = f"{conv}.weight_folded", f"{conv}.bias_folded"
        self.inits.append(numpy_helper.from_array(w_folded, wname))
        self.inits.append(numpy_helper.from_array(b_folded, bname))
        y = self.fresh(conv.strip("_").replace(".", "_"))
        self.nodes.append(helper.make_node(
            "Conv", [x, wname, bname], [y], name=y, kernel_shape=[k, k],
            strides=[stride, stride], pads=[begin, begin, end, end], group=groups))
        if not relu6:
            return y
        z = self.fresh("relu6")
        self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [z], name=z))
        return z

    def block(self, x: str, index: int, kernel: int, stride: int, expand: int, cin: int,
              cout: int) -> str:
        b = f"_blocks.{index}"
        h = x
        if expand != 1:
            h = self.conv_bn(h, f"{b}._expand_conv", f"{b}._bn0", 1)
        hidden = cin * expand
        h = self.conv_bn(h, f"{b}._depthwise_conv", f"{b}._bn1", stride, groups=hidden)
        h = self.conv_bn(h, f"{b}._project_conv", f"{b}._bn2", 1, relu6=False)
        if stride == 1 and cin == cout:
            y = self.fresh(f"block{index}_add")
            self.nodes.append(helper.make_node("Add", [h, x], [y], name=y))
            h = y
        if self.tensor(f"{b}._depthwise_conv.weight").shape[2] != kernel:
            raise SystemExit(f"{b}: kernel size differs from config.json's stage")
        return h


def build(model_dir: Path, image_size: int | None = None) -> onnx.ModelProto:
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "efficientnet_lite":
        raise SystemExit(f"{model_dir}/config.json: model_type is {config.get('model_type')!r}, "
                         "expected efficientnet_lite")
    if image_size is None:
        pre = model_dir / "preprocessor_config.json"
        crop = json.loads(pre.read_text()).get("crop_size", {}) if pre.is_file() else {}
        image_size = int(crop.get("height", 224))
    weights = load_file(str(model_dir / "model.safetensors"))
    g = GraphBuilder(weights, float(config.get("batch_norm_eps", 1e-3)), image_size)

    x = g.conv_bn("pixel_values", "_conv_stem", "_bn0", 2)
    index = 0
    for stage in config["stages"]:
        for repeat in range(int(stage["repeats"])):
            cin = int(stage["in_channels"]) if repeat == 0 else int(stage["out_channels"])
            stride = int(stage["stride"]) if repeat == 0 else 1
            x = g.block(x, index, int(stage["kernel_size"]), stride, int(stage["expand_ratio"]),
                        cin, int(stage["out_channels"]))
            index += 1
    x = g.conv_bn(x, "_conv_head", "_bn1", 1)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    fc_w, fc_b = g.tensor("_fc.weight").astype(np.float32), g.tensor("_fc.bias").astype(np.float32)
    g.inits.append(numpy_helper.from_array(fc_w, "_fc.weight"))
    g.inits.append(numpy_helper.from_array(fc_b, "_fc.bias"))
    g.nodes.append(helper.make_node("Gemm", ["features", "_fc.weight", "_fc.bias"], ["logits"],
                                    name="fc", transB=1))

    unused = sorted(set(weights) - g.used)
    if unused:
        raise SystemExit(f"tensors in model.safetensors the network does not use: {unused[:8]}")
    labels = fc_w.shape[0]
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="keel-bench-images")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=Path("models/efficientnet-lite0"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--image-size", type=int, default=None,
                    help="input height = width (default: crop_size of preprocessor_config.json)")
    args = ap.parse_args(argv)
    model = build(args.model_dir, args.image_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=args.out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    print(f"wrote {args.out}: {len(model.graph.node)} nodes ({convs} convolutions)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
