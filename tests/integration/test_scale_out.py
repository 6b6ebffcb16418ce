"""Three replicas behind nginx, restarted one at a time under load: zero failed requests."""

import json
import subprocess
import sys

from conftest import MODELS, CLASSIFIER, ROOT, keel_bin


def test_rolling_restart_behind_nginx_fails_no_request(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "scale_out.py"), "--keel", keel_bin(), "--model", str(MODELS / CLASSIFIER),
         "--replicas", "3", "--clients", "6", "--seconds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["failed"] == 0, result["failures"]
    assert result["ok"] > 20
    assert [r["exit_status"] for r in result["restarts"]] == [0, 0, 0]
