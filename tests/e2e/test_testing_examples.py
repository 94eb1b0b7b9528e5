"""The test-double examples run as their users would run them: examples/testing/python with
pytest (the omniserve fixture comes from the installed package) and examples/testing/node with
Node's test runner, npm's openai package and the Node helper that starts the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "testing"
NODE = shutil.which("node")
NPM = shutil.which("npm")


def test_python_example_suite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=EXAMPLES / "python",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout


def omniserve_command() -> str:
    script = Path(sys.executable).with_name("omniserve")
    return str(script) if script.exists() else f"{sys.executable} -m omniserve"


@pytest.mark.timeout(600)
def test_node_example_suite(tmp_path: Path) -> None:
    if NODE is None or NPM is None:
        pytest.fail("node and npm are needed for the Node.js examples: run scripts/bootstrap --dev")
    work = tmp_path / "node"
    shutil.copytree(EXAMPLES / "node", work, ignore=shutil.ignore_patterns("node_modules"))
    install = subprocess.run(
        [NPM, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    proc = subprocess.run(
        [NODE, "--test"],
        cwd=work,
        env={**os.environ, "OMNISERVE_COMMAND": omniserve_command()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# pass 4" in proc.stdout and "# fail 0" in proc.stdout


def test_node_helper_reports_a_server_that_cannot_start(tmp_path: Path) -> None:
    if NODE is None:
        pytest.fail("node is needed for the Node.js examples: run scripts/bootstrap --dev")
    script = tmp_path / "start.mjs"
    helper = (EXAMPLES / "node" / "omniserve.mjs").as_uri()
    script.write_text(
        f'import {{ startOmniserve }} from "{helper}";\n'
        "try {\n"
        '  await startOmniserve({ args: ["--engine", "nonsense"] });\n'
        '  console.log("started");\n'
        "} catch (err) {\n"
        "  console.log(String(err.message));\n"
        "}\n"
    )
    proc = subprocess.run(
        [NODE, str(script)],
        env={**os.environ, "OMNISERVE_COMMAND": omniserve_command()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "omniserve did not start (exit code 2)" in proc.stdout, proc.stdout + proc.stderr
    assert "engine" in proc.stdout
