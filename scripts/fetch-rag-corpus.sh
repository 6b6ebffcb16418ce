#!/usr/bin/env bash
# Fetch the judged RAG set's corpus into .cache/rag-corpus/flask-3.1.3/docs (idempotent).
#
# The corpus is the reStructuredText documentation shipped in Flask's source distribution
# (scripts/rag-corpus-sdist.txt pins it by hash; BSD-3-Clause, Pallets). The questions and
# gold documents are tests/fixtures/rag/flask-questions.json. The sdist is downloaded (pip
# reads its metadata with flit_core), never installed; the folder appears atomically.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEST=.cache/rag-corpus/flask-3.1.3
SDISTS=.cache/sdists
[[ -f $DEST/docs/index.rst ]] && exit 0

PYTHON=${PYTHON:-python3}
log() { printf 'fetch-rag-corpus: %s\n' "$*" >&2; }

pip=("$PYTHON" -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
    venv=.cache/pip-venv
    [[ -x $venv/bin/pip ]] || "$PYTHON" -m venv "$venv"
    pip=("$venv/bin/python" -m pip)
fi

log "downloading the Flask 3.1.3 sdist"
mkdir -p "$SDISTS"
"${pip[@]}" download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
    --require-hashes -r scripts/rag-corpus-sdist.txt -d "$SDISTS"

log "extracting docs/ into $DEST"
"$PYTHON" - "$SDISTS/flask-3.1.3.tar.gz" "$DEST" <<'PY'
import os, shutil, sys, tarfile, tempfile

sdist, dest = sys.argv[1], sys.argv[2]
parent = os.path.dirname(os.path.abspath(dest))
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".tmp-", dir=parent)
with tarfile.open(sdist) as tar:
    members = [m for m in tar.getmembers()
               if m.isfile() and m.name.startswith("flask-3.1.3/docs/") and m.name.endswith(".rst")]
    tar.extractall(tmp, members=members, filter="data")
shutil.move(os.path.join(tmp, "flask-3.1.3"), dest)
shutil.rmtree(tmp)
print(f"{len(members)} documents", file=sys.stderr)
PY
