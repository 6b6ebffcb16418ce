#!/usr/bin/env bash
# Fetch the photos the image tests classify into .cache/test-images/ (run by `make test`
# through `make test-images`; idempotent).
#
# They come from scikit-image's hash-pinned wheel (scripts/test-images-wheel.txt), which is
# downloaded into .cache/wheels and never installed. Licences, from the docstrings of
# skimage/data/_fetchers.py: coffee.png (Rachel Michetti), chelsea.png (Stefan van der Walt)
# and camera.png (Lav Varshney) are CC0 by their photographers; rocket.jpg (SpaceX, the DSCOVR
# launch) is in the public domain; motorcycle_left.png is the left view of the Middlebury 2014
# stereo benchmark's "Motorcycle" scene (Scharstein et al., GCPR 2014), down-sampled 4x, which
# scikit-image redistributes without stating a licence for it.
#
# Needs python3 with pip (or venv) and pip access to the package index configured for pip.
# The folder appears atomically (temp folder + rename).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEST=.cache/test-images
WHEELS=.cache/wheels
PHOTOS=(coffee.png chelsea.png camera.png motorcycle_left.png rocket.jpg)

missing=0
for photo in "${PHOTOS[@]}"; do
    [[ -f $DEST/$photo ]] || missing=1
done
[[ $missing -eq 0 ]] && exit 0

PYTHON=${PYTHON:-python3}
log() { printf 'fetch-test-images: %s\n' "$*" >&2; }

# Only pip's download is needed: the system pip when there is one, else a bare venv's.
pip=("$PYTHON" -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
    venv=.cache/pip-venv
    if [[ ! -x $venv/bin/pip ]]; then
        log "creating $venv"
        "$PYTHON" -m venv "$venv" || {
            log "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
            exit 1
        }
    fi
    pip=("$venv/bin/python" -m pip)
fi

log "downloading the scikit-image wheel"
mkdir -p "$WHEELS"
"${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
    --require-hashes -r scripts/test-images-wheel.txt -d "$WHEELS"
wheel=$(ls "$WHEELS"/scikit_image-0.26.0-cp311-cp311-*.whl)

log "extracting ${PHOTOS[*]} into $DEST"
"$PYTHON" - "$wheel" "$DEST" "${PHOTOS[@]}" <<'PY'
import os, shutil, sys, tempfile, zipfile

wheel, dest, photos = sys.argv[1], sys.argv[2], sys.argv[3:]
parent = os.path.dirname(os.path.abspath(dest))
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".tmp-", dir=parent)
try:
    with zipfile.ZipFile(wheel) as zf:
        for photo in photos:
            target = os.path.join(tmp, photo)
            with zf.open("skimage/data/" + photo) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(target, 0o644)
    os.chmod(tmp, 0o755)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.rename(tmp, dest)
except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
PY
