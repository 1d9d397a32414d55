"""The command line: help that teaches, the demo end to end, errors as one line."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from steersman.cli import main


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    assert "demo" in top.output
    demo = runner.invoke(main, ["demo", "--help"])
    assert demo.exit_code == 0
    assert "--budget" in demo.output and "Example:" in demo.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "steersman" in result.output


def test_bad_option_is_one_clear_line_and_non_zero_exit():
    done = subprocess.run(
        [sys.executable, "-m", "steersman.cli", "demo", "--budget", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "needs at least 12 simulations" in done.stderr


def test_demo_runs_end_to_end_with_a_summary():
    done = subprocess.run(
        [sys.executable, "-m", "steersman.cli", "demo", "--budget", "20", "--candidates", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Active-learning demo" in done.stdout
    assert "simulations run" in done.stdout
    assert "20 of 2,000 candidates" in done.stdout


def _cli(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "steersman.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_errors_a_user_can_make_are_one_line_and_a_non_zero_exit(tmp_path):
    from conftest import free_port

    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    bad_module = tmp_path / "broken_tasks.py"
    bad_module.write_text("def f(:\n")
    bad_config = tmp_path / "worker.toml"
    bad_config.write_text("worker = 5\n")
    cases = [
        (("status", "--redis", nowhere), "is redis-server running there"),
        (("failed", "--redis", nowhere), "is redis-server running there"),
        (
            ("worker", "--redis", nowhere, "--queues", "sim", "--method", "broken_tasks:f"),
            "cannot import 'broken_tasks': SyntaxError",
        ),
        (("worker", "--config", str(bad_config)), "'worker' must be a table"),
        (("status", "--redis", nowhere, "--watch", "0"), "not in the range x>=0.1"),
    ]
    for args, message in cases:
        done = _cli(*args, env={"PYTHONPATH": str(tmp_path)})
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr.replace("\n", " "), (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
