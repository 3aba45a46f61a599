"""The CLI's usage errors: one clear message, exit status 2, never a traceback (typer 0.29
vendors click, so the error handler must not import it)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args,words", [
    ([], "Usage"),
    (["bogus"], "No such command 'bogus'"),
    (["bench", "--preset", "nope"], "unknown preset 'nope'"),
    (["bench", "--bogus"], "No such option: --bogus"),
    (["report"], "Missing argument"),
    (["info", "--json", "extra"], "unexpected extra argument"),
    (["bench", "-b", "nosuch", "--preset", "tiny"], "unknown backend 'nosuch'"),
])
def test_usage_errors_exit_2_with_a_message(args, words):
    res = subprocess.run([sys.executable, "-m", "m2m_gpu.cli", *args], capture_output=True,
                         text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out
    assert words in out


def test_an_unavailable_backend_named_on_the_command_line_is_one_line():
    from m2m_gpu import backends

    missing = [i for i in backends.probe_all() if not i.available]
    if not missing:
        pytest.skip("every backend is available here")
    res = subprocess.run([sys.executable, "-m", "m2m_gpu.cli", "bench", "-b", missing[0].name,
                          "--preset", "tiny"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"m2m-gpu: error: backend {missing[0].name!r} is not available: {missing[0].reason}"]
