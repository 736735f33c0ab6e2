"""landscape never imports Flower: the probes run on checkpoints alone (torch, scipy, matplotlib and fedsign's
model, data and checkpoint code), so they work where Flower is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import cli_env

pytestmark = pytest.mark.slow  # a new Python process


def test_landscape_imports_no_flwr():
    code = ("import sys, landscape, landscape.cli, landscape.bench, landscape.train, landscape.plots\n"
            "bad = sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.'))\n"
            "assert not bad, bad\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
