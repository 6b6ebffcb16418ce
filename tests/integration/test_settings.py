"""Settings are validated at startup: a wrong one exits 2 with one line naming it."""

import subprocess

import pytest

from conftest import keel_bin


@pytest.mark.parametrize(
    "variable,value,accepted",
    [
        ("PORT", "eighty", "an integer from 0 to 65535"),
        ("PORT", "70000", "an integer from 0 to 65535"),
        ("MAX_BATCH_SIZE", "0", "an integer from 1 to"),
        ("MAX_BODY_BYTES", "-5", "an integer from 1 to"),
        ("TRUNCATE", "perhaps", "true or false"),
        ("LOG_FORMAT", "xml", "json or pretty"),
        ("LOG_LEVEL", "loud[", "error, warn, info"),
        ("HOST", "not-an-ip", "an IP address"),
        ("MODELS", "justaname", "name=path pairs"),
        ("KEEL_CONFIG", "/nonexistent/keel.toml", "a readable TOML file"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(variable, value, accepted):
    proc = subprocess.run([keel_bin(), "serve"], env={variable: value}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0] and repr(value).strip("'") in lines[0] and accepted in lines[0], lines[0]


def test_help_lists_every_setting_with_its_default():
    proc = subprocess.run([keel_bin(), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for name in ["PORT", "HOST", "MODEL_PATH", "MODELS", "KEEL_CONFIG", "MAX_BATCH_SIZE", "MAX_CLIENT_BATCH",
                 "MAX_BODY_BYTES", "MAX_INPUT_TOKENS", "TRUNCATE", "LOG_FORMAT", "LOG_LEVEL", "KEEL_FAIL_FAST"]:
        assert name in proc.stdout
    assert "[default: 8080]" in proc.stdout
    assert "serve" in proc.stdout


def test_gateway_settings_are_validated(tmp_path):
    bad = tmp_path / "keel.toml"
    bad.write_text('[gateway.providers.x]\nkind = "carrier-pigeon"\nbase_url = "http://127.0.0.1:1"\n')
    proc = subprocess.run([keel_bin()], env={"KEEL_CONFIG": str(bad)}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "KEEL_CONFIG" in proc.stderr and "gateway.providers.x.kind" in proc.stderr, proc.stderr
    proc = subprocess.run([keel_bin()], env={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "not a url"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "OPENAI_BASE_URL" in proc.stderr, proc.stderr
    assert "sk-x" not in proc.stderr
