"""schemathesis (property-based, from PyPI) against the running server's /openapi.json: no
5xx, every answer's status, content type, headers and body as documented, schema-valid
requests accepted and schema-invalid ones refused, and, with API keys, no path that ignores
them. The document is built from the running server (its model names, dimensions, limits),
so the checks hold it to what this server really accepts."""

import pathlib
import subprocess
import sys

import requests

SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"


def run_schemathesis(keel, tmp_path, *extra, examples=150):
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", keel.url("/openapi.json"), "--checks", "all",
         "--max-examples", str(examples), "--seed", "20261126", "--workers", "1",
         "--no-color", "--report", "junit", "--report-dir", str(tmp_path),
         "--report-junit-path", str(report), *extra],
        capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "No issues found" in output, output[-8000:]
    return output


def server_errors(keel):
    metrics = requests.get(keel.url("/metrics"), timeout=5,
                           headers={"authorization": "Bearer sk-schema"}).text
    return [line for line in metrics.splitlines()
            if line.startswith("keel_http_requests_total") and 'status="5' in line
            and 'status="503"' not in line]


def test_default_server_conforms_to_its_document(keel, tmp_path):
    output = run_schemathesis(keel, tmp_path)
    assert " passed" in output
    assert server_errors(keel) == []


def test_keyed_and_rate_limited_server_conforms_to_its_document(start_keel, tmp_path):
    keel = start_keel({"KEEL_API_KEYS": "sk-schema", "RATE_LIMIT_RPM": "600",
                       "CORS_ALLOW_ORIGINS": "https://app.example"}).wait_ready()
    doc = requests.get(keel.url("/openapi.json"), headers={"x-api-key": "sk-schema"}).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/health"]["get"]["security"] == []
    # schemathesis loads the document itself, so it must present the key for it too.
    run_schemathesis(keel, tmp_path, "--header", "Authorization: Bearer sk-schema", examples=60)
    assert server_errors(keel) == []
