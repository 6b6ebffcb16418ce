"""schemathesis against a gateway-serving Keel's /openapi.json: the chat route is documented
from the configured routes and providers, and every answer (JSON or event stream) has a
documented status and shape, with no 5xx.

Keel relays message contents for the upstream to judge (the fake here accepts anything), so
the check that schema-invalid requests are refused is left out for this route; the local
routes' suite (tests/integration/test_schema.py) runs every check."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import start_gateway, stop

SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"

CONFIG = """
[gateway]
max_attempts = 1

[gateway.providers.fake]
kind = "openai"
base_url = "{base}/v1"
api_key_env = "FAKE_KEY"
allow_any_model = true

[gateway.routes.chat]
targets = ["fake/st-chat"]
"""


@pytest.fixture(scope="module")
def documented(fake_server, tmp_path_factory):
    proc, gw = start_gateway(fake_server, tmp_path_factory.mktemp("schema"), config_text=CONFIG)
    yield gw
    stop(proc)


def test_chat_route_conforms_to_its_document(documented, fake, tmp_path):
    import httpx
    doc = httpx.get(documented.url + "/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    model = chat["requestBody"]["content"]["application/json"]["schema"]["properties"]["model"]
    assert model["anyOf"][0]["enum"] == ["chat"] and model["anyOf"][1]["pattern"] == "^(fake)/.+$"
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", documented.url + "/openapi.json",
         "--include-path", "/v1/chat/completions",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_headers_conformance,response_schema_conformance,"
                     "positive_data_acceptance",
         "--max-examples", os.environ.get("ST_EXAMPLES", "60"), "--seed", "20261126", "--workers", "1", "--no-color",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "No issues found" in output, output[-8000:]
    assert len(fake.requests()) > 0, "requests reached the upstream"
