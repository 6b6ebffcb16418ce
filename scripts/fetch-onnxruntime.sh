#!/usr/bin/env bash
# Puts ONNX Runtime's shared library at models/onnxruntime/libonnxruntime.so (relative to the
# repository root), taken from the `onnxruntime` wheel on PyPI through pip: the ort crate is
# built with `load-dynamic`, so nothing is downloaded at build time and the library is loaded
# from this path at run time (Keel's ORT_DYLIB_PATH).
#
# Idempotent: does nothing when the library for this version is already there. The library is
# written next to its final path and renamed into place, so a reader never sees half a file.
set -euo pipefail

VERSION="${ORT_VERSION:-1.31.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="$ROOT/models/onnxruntime"
DEST="$DEST_DIR/libonnxruntime.so"
STAMP="$DEST_DIR/VERSION"

if [[ -f "$DEST" && -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION" ]]; then
    echo "onnxruntime $VERSION already at $DEST"
    exit 0
fi

PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    "onnxruntime==$VERSION" -d "$WORK/wheel"
WHEEL="$(ls "$WORK"/wheel/onnxruntime-*.whl | head -n1)"

# A wheel is a zip; Python's zipfile avoids depending on `unzip` being installed.
"$PYTHON" - "$WHEEL" "$WORK/lib" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit(f"{wheel}: no onnxruntime/capi/libonnxruntime.so* inside")
    # Prefer the fully versioned file (libonnxruntime.so.1.x.y) when several are shipped.
    name = max(names, key=len)
    with z.open(name) as src, open(f"{out}", "wb") as dst:
        dst.write(src.read())
PY

mkdir -p "$DEST_DIR"
TMP="$(mktemp "$DEST_DIR/.libonnxruntime.so.XXXXXX")"
mv "$WORK/lib" "$TMP"
chmod 0644 "$TMP"
mv -f "$TMP" "$DEST"
echo "$VERSION" > "$STAMP.tmp" && mv -f "$STAMP.tmp" "$STAMP"
echo "onnxruntime $VERSION installed at $DEST"
