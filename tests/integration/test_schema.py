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


def run_schemathesis(keel, tmp_path, *extra, examples=150, checks="all"):
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", keel.url("/openapi.json"), "--checks", checks,
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


# The RAG routes' bodies carry rules OpenAPI 3.0 cannot state (an overlap at most half the
# chunk size, at least one search weight above 0), so exact acceptance is checked on the
# other routes, and the RAG routes are held to everything else.
RAG_PATHS = "^/v1/(files|vector_stores|responses)"
RAG_CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_default_server_conforms_to_its_document(keel, tmp_path):
    output = run_schemathesis(keel, tmp_path, "--exclude-path-regex", RAG_PATHS)
    assert " passed" in output
    assert server_errors(keel) == []


def test_rag_routes_never_fail_and_answer_as_documented(keel, tmp_path):
    doc = requests.get(keel.url("/openapi.json"), timeout=5).json()
    assert "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel" in doc["paths"]
    # Warnings off: most generated ids name nothing (404), which is what they should do.
    output = run_schemathesis(keel, tmp_path, "--include-path-regex", RAG_PATHS,
                              "--warnings", "off", checks=RAG_CHECKS, examples=40)
    assert " passed" in output
    assert server_errors(keel) == []


def test_keyed_and_rate_limited_server_conforms_to_its_document(start_keel, tmp_path):
    keel = start_keel({"KEEL_API_KEYS": "sk-schema", "RATE_LIMIT_RPM": "600",
                       "CORS_ALLOW_ORIGINS": "https://app.example"}).wait_ready()
    doc = requests.get(keel.url("/openapi.json"), headers={"x-api-key": "sk-schema"}).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/health"]["get"]["security"] == []
    # schemathesis loads the document itself, so it must present the key for it too.
    run_schemathesis(keel, tmp_path, "--header", "Authorization: Bearer sk-schema",
                     "--exclude-path-regex", RAG_PATHS, examples=60)
    assert server_errors(keel) == []
