"""Every numeric and choice option of every `fedsign-landscape` probe, given an invalid value (property-based,
with hypothesis): exit code 2, exactly one line on stderr naming the option, no output file written.

The CLI's main(argv) runs in-process (fast); two subprocess runs confirm the same end to end."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsign.checkpoint import checkpoint_metadata, save_checkpoint
from fedsign.data.specs import dataset_spec
from fedsign.models import build_model, exchanged_state
from landscape.cli import MAX_POINTS, MAX_SEED, main
from tests.conftest import cli, cli_env

EXAMPLES = 400  # invalid command lines tried per run


def integer(low: int, high: int | None = None):
    return ("int", low, high)


def number(low=None, high=None, strict=False):
    return ("float", low, high, strict)


def choice(*accepted: str):
    return ("choice", accepted)


COMMON = {"--images": integer(0), "--train-images": integer(0), "--seed": integer(0, MAX_SEED),
          "--batch-size": integer(1), "--chunk": integer(0), "--scaling": choice("ns", "filter", "none"),
          "--filter-1d": choice("element", "vector", "zero"), "--dtype": choice("float32", "float64"),
          "--device": choice("auto", "cpu", *(["cuda", "cuda:0"] if torch.cuda.is_available() else []))}
PROBES = {
    "valley": {"--sign": choice("both", "yes", "no"), "--scales": ("list", number(0.0, strict=True)),
               "--lambdas": ("span", True), "--loss-delta": number(0.0, strict=True)},
    "sign-sweep": {"--ratios": ("list", number(0.0, 1.0)), "--lambdas": ("span", True),
                   "--scale": number(0.0, strict=True)},
    "interp": {"--lambdas": ("span", False)},
    "signs": {},
    "surface": {"--sign": choice("yes", "no"), "--x": ("span", False), "--y": ("span", False)},
    "hessian": {"--data": choice("train", "test"), "--k": integer(1), "--trace-samples": integer(2),
                "--trace-rtol": number(0.0), "--trace-probe": choice("gaussian", "rademacher"),
                "--slq-runs": integer(0), "--slq-steps": integer(1), "--maxiter": integer(1)},
    "mine": {"--algorithm": choice("wpeak", "vvv"), "--epochs": integer(1), "--lr": number(0.0, strict=True),
             "--mine-batch": integer(1), "--gamma": number(0.0), "--alpha": number(0.0, 0.5),
             "--lambdas": ("span", False)},
}
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


def _parses(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return None


def invalid(spec) -> st.SearchStrategy[str]:
    """Values the option must refuse, by construction (never a value it accepts)."""
    kind = spec[0]
    if kind == "int":
        _, low, high = spec
        bad = [st.integers(max_value=low - 1)] + ([st.integers(min_value=high + 1)] if high is not None else [])
        not_int = TEXT.filter(lambda t: _parses(t, int) is None)
        return st.one_of(*[b.map(str) for b in bad], not_int)
    if kind == "float":
        _, low, high, strict = spec
        bad = [st.sampled_from(["nan", "inf", "-inf", "NaN"]), TEXT.filter(lambda t: _parses(t, float) is None)]
        if low is not None:
            below = st.floats(max_value=low, allow_nan=False)
            bad.append(below.filter(lambda v: v <= low if strict else v < low).map(repr))
        if high is not None:
            bad.append(st.floats(min_value=high, exclude_min=True, allow_nan=False).map(repr))
        return st.one_of(*bad)
    if kind == "choice":
        return TEXT.filter(lambda t: t not in spec[1] and not (torch.cuda.is_available() and t.startswith("cuda")))
    if kind == "list":  # at least one refused item among accepted-looking ones, or no item at all
        item = invalid(spec[1]).filter(lambda t: t.strip() and "," not in t)  # one item, not a blank
        return st.one_of(st.sampled_from(["", ",", " , "]),
                         st.tuples(st.lists(st.sampled_from(["0.5", "1"]), max_size=2), item).map(
                             lambda p: ",".join(p[0] + [p[1]])).filter(lambda t: "," in t or t.strip()))
    both_sides = spec[1]  # span: START,STOP,NUM
    finite = st.floats(-10, 10, allow_nan=False).map(repr)
    bad_num = st.one_of(st.integers(max_value=1), st.integers(min_value=MAX_POINTS + 1)).map(str)
    cases = [
        st.lists(finite, min_size=0, max_size=5).filter(lambda v: len(v) != 3).map(",".join),  # not 3 parts
        st.tuples(finite, finite, st.one_of(bad_num, st.sampled_from(["2.5", "nan", "x"]))).map(",".join),
        finite.map(lambda v: f"{v},{v},11"),  # START == STOP
        st.tuples(st.sampled_from(["nan", "inf", "-inf"]), finite).map(lambda p: f"{p[0]},{p[1]},5"),
    ]
    if both_sides:  # both ends on one side of 0
        side = st.floats(0, 10, allow_nan=False)
        cases.append(st.tuples(side, side, st.booleans()).filter(lambda p: p[0] != p[1]).map(
            lambda p: f"{-p[0] if p[2] else p[0]!r},{-p[1] if p[2] else p[1]!r},5"))
    return st.one_of(*cases)


OPTIONS = [(probe, option, spec) for probe, own in PROBES.items() for option, spec in {**COMMON, **own}.items()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real (untrained) logreg checkpoint: a value wrongly accepted would run the probe and exit 0."""
    path = tmp_path_factory.mktemp("opts") / "logreg.safetensors"
    meta = checkpoint_metadata(model="logreg", dataset="digits", round=0, role="server", method="fedavg", seed=0)
    return str(save_checkpoint(path, exchanged_state(build_model("logreg", dataset_spec("digits"))), meta))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_invalid_option_value_is_one_line_and_exit_code_2(checkpoint, tmp_path, data):
    probe, option, spec = data.draw(st.sampled_from(OPTIONS), label="option")
    value = data.draw(invalid(spec), label="value")
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    argv = [probe, checkpoint] + [checkpoint] * (probe == "interp") + [
        f"{option}={value}", "--json", str(out_json), "--plot", str(out_png), "--images", "20",
        "--train-images", "20"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(argv)
    lines = err.getvalue().splitlines()
    assert exc.value.code == 2, (argv, lines)
    assert len(lines) == 1 and lines[0].startswith("fedsign-landscape: error:"), (argv, lines)
    assert option in lines[0], (argv, lines)
    assert not out_json.exists() and not out_png.exists()


@pytest.mark.slow  # real processes
@pytest.mark.parametrize("args", [["valley", "CKPT", "--lambdas=0,1,11"], ["valley", "CORRUPTED"]])
def test_end_to_end_exit_code_2_one_line_no_output(checkpoint, tmp_path, args):
    """A bad option value (refused while parsing) and a corrupted checkpoint (refused while loading)."""
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(open(checkpoint, "rb").read()[:100])
    out = tmp_path / "out.json"
    names = {"CKPT": checkpoint, "CORRUPTED": str(corrupted)}
    done = subprocess.run(cli("landscape.cli") + [names.get(a, a) for a in args] + ["--json", str(out)],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists(), done.stderr


def test_a_valid_command_line_of_the_same_shape_runs(checkpoint, tmp_path):
    """The harness itself: the same argv with valid values writes both files."""
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    assert main(["valley", checkpoint, "--lambdas=-1,1,3", "--sign", "no", "--json", str(out_json),
                 "--plot", str(out_png), "--images", "20", "--train-images", "20"]) == 0
    assert json.loads(out_json.read_text())["probe"] == "valley" and out_png.stat().st_size > 0
    assert math.isfinite(json.loads(out_json.read_text())["curves"][0]["loss"][1])
