"""Settings are validated at startup: a wrong one exits 2 with one line naming it."""

import re
import subprocess

import pytest

from conftest import ROOT, keel_bin


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


def readme_settings_table():
    """(names, default) for each row of the README's settings table."""
    section = (ROOT / "README.md").read_text().split("\n## Settings\n", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    table = []
    for row in rows[2:]:
        if not row.startswith("| `"):
            break
        cells = row.split(" | ")
        table.append((re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]), cells[1].strip()))
    return table


def test_help_lists_every_variable_of_the_readme_with_its_default():
    proc = subprocess.run([keel_bin(), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    help_lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()}
    table = readme_settings_table()
    assert len(table) > 30
    for names, default in table:
        for name in names:
            assert name in help_lines, f"{name} is in the README but not in keel --help"
            assert help_lines[name].endswith(f"[default: {default}]"), help_lines[name]
    assert "KEEL_ALLOW_OPEN_GATEWAY" in help_lines and "REQUEST_TIMEOUT_MS" in help_lines
    assert "serve" in proc.stdout


def test_an_open_gateway_on_a_public_address_refuses_to_start():
    env = {"OPENAI_API_KEY": "sk-owner-secret", "HOST": "0.0.0.0", "PORT": "0"}
    proc = subprocess.run([keel_bin(), "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "KEEL_API_KEYS" in lines[0] and "KEEL_ALLOW_OPEN_GATEWAY" in lines[0], lines[0]
    assert "sk-owner-secret" not in proc.stderr


def test_gateway_settings_are_validated(tmp_path):
    bad = tmp_path / "keel.toml"
    bad.write_text('[gateway.providers.x]\nkind = "carrier-pigeon"\nbase_url = "http://127.0.0.1:1"\n')
    proc = subprocess.run([keel_bin()], env={"KEEL_CONFIG": str(bad)}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "KEEL_CONFIG" in proc.stderr and "gateway.providers.x.kind" in proc.stderr, proc.stderr
    proc = subprocess.run([keel_bin()], env={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "not a url"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "OPENAI_BASE_URL" in proc.stderr, proc.stderr
    assert "sk-x" not in proc.stderr
