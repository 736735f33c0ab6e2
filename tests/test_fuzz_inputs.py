"""Property-based tests (hypothesis) of every input a user types: any value of any run-config key,
given as a `fedsign-sim` override or in `flwr run --run-config`, and any value of fedsign-bench's
options, either is accepted or is refused with one FedsignError line, before anything is written.
Nothing else may escape (no traceback, no stray exception type), and no run directory appears.

The drivers are called in-process at the point where a real run would start (sim.main.main parses
with compose_config, then prepare_run checks data, model and partitions; fedsign-bench runs
check_inputs): that is where every check lives, and it keeps hundreds of inputs fast.
tests/test_bad_input.py runs real subprocesses for the exit code and the one line on stderr."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from click import ClickException
from flwr.common.config import fuse_dicts, parse_config_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsign.config import RunConfig, method_keys
from fedsign.errors import FedsignError
from fedsign.server_app import prepare_run
from sim.bench import check_inputs, parse_args
from fedsign.workspace import active_clients
from sim.flower_engine import client_resources
from sim.main import compose_config
from strategies.registry import METHOD_NAMES, METHODS
from strategies.sampling import client_seed, sample_clients
from tests.conftest import ROOT

RUN_KEYS = sorted(k for k in RunConfig().to_flat() if k not in ("out", "resume")) + method_keys()[1:]
TRIED = {"edges": 0, "fedsign-sim": 0, "flwr run": 0, "fedsign-bench": 0}
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# text a user could type for a value: edge cases of every type, numbers of every kind, words, names
EDGES = ["-3", "-1", "0", "1", "0.0", "-0.5", "0.5", "2.5", "1e-300", "1e30", "nan", "inf", "-inf",
         str(2**63), "true", "false", "", "abc"]
NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(EDGES))
WORDS = st.one_of(st.sampled_from(["true", "false", "yes", "", "none", "null", "abc", "cuda", "cpu", "cuda:7",
                                   "fedsign", "digits", "cifar10", "vgg8", "logreg", "smallcnn_bn", "authors",
                                   "iid", "cohort", "sum", "smooth_l1", "add", "fedrepo"]),
                  st.text(st.characters(codec="ascii", exclude_characters="\n\r'\"\\= ,[]{}()$"), max_size=8))
VALUES = st.one_of(NUMBERS.map(str), WORDS)
pytestmark = [pytest.mark.slow,  # about a thousand inputs
              pytest.mark.filterwarnings("ignore::UserWarning")]  # flwr-datasets' resampling notes at odd alphas


def assert_refused_cleanly(exc: BaseException) -> None:
    assert isinstance(exc, FedsignError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


def start_of_run(cfg: RunConfig) -> None:
    """What a run does with its config before its first round: the checks of prepare_run, the Ray
    resources of engine=flower, the first round's client draws and their seeds."""
    cfg = prepare_run(cfg)
    if cfg.engine.name == "flower":
        client_resources(cfg)
    for cid in sample_clients(active_clients(cfg), cfg.clients_per_round, cfg.seed, 1):
        client_seed(cfg.seed, 1, cid)


def check_run(cfg_or_error, out) -> None:
    """A parsed config must start a run or be refused with one FedsignError line; nothing is written."""
    if isinstance(cfg_or_error, BaseException):
        assert_refused_cleanly(cfg_or_error)
    else:
        try:
            start_of_run(cfg_or_error)
        except Exception as exc:  # noqa: BLE001 (the assertion says which type escaped)
            assert_refused_cleanly(exc)
    assert not out.exists()


def attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return exc


@SETTINGS
@given(method=st.sampled_from(METHOD_NAMES), key=st.sampled_from(RUN_KEYS), value=VALUES,
       second=st.tuples(st.sampled_from(RUN_KEYS), VALUES))
def test_any_fedsign_sim_override_is_accepted_or_one_error_line(tmp_path_factory, method, key, value, second):
    out = tmp_path_factory.getbasetemp() / "never-created"
    args = [f"method={method}", f"{key}={value}", f"{second[0]}={second[1]}", f"out={out}"]
    TRIED["fedsign-sim"] += 1
    check_run(attempt(compose_config, args), out)


def _key_cases():
    """Every run-config key (a method's keys with that method) x every edge value."""
    for key in RUN_KEYS:
        owners = [m for m in METHOD_NAMES if key in RunConfig.from_flat({"method.name": m}).to_flat()]
        for value in EDGES:
            yield (owners[0] if key.startswith("method.") else "fedavg"), key, value


def test_every_key_at_every_edge_value_is_accepted_or_one_error_line(tmp_path):
    """Exhaustive over keys x edge values, through Flower's flat run_config (Hydra's path is the
    same from_flat, fuzzed below)."""
    out = tmp_path / "never-created"
    cases = list(_key_cases())
    for method, key, value in cases:
        check_run(attempt(RunConfig.from_flat, {"method.name": method, key: value, "out": str(out)}), out)
    TRIED["edges"] = len(cases)


def _toml(value: str) -> str:
    """How a user writes a value in --run-config: numbers and booleans bare, text quoted."""
    bare = value in ("true", "false") or value.lstrip("-").replace(".", "", 1).isdigit()
    return value if bare else f"'{value}'"


@SETTINGS
@given(method=st.sampled_from(METHOD_NAMES), key=st.sampled_from(RUN_KEYS), value=VALUES)
def test_any_flwr_run_config_is_accepted_or_one_error_line(tmp_path_factory, method, key, value):
    out = tmp_path_factory.getbasetemp() / "never-created"
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    try:  # Flower's own parsing: a value that is not TOML is refused by `flwr run` itself
        overrides = parse_config_args([f"method.name='{method}' {key}={_toml(value)} out='{out}'"])
    except ClickException:
        return
    TRIED["flwr run"] += 1
    check_run(attempt(RunConfig.from_flat, fuse_dicts(defaults, overrides)), out)


BENCH_FLAGS = {"--dataset": st.sampled_from(["digits", "cifar10", "mnist"]), "--clients": VALUES,
               "--per-round": VALUES, "--epochs": VALUES, "--batch": VALUES, "--lr": VALUES, "--alpha": VALUES,
               "--scheme": VALUES, "--rounds": VALUES, "--engines": st.sampled_from(["reference", "cohort,limit", "ray", ""]),
               "--limit-batch": VALUES, "--limit-steps": VALUES, "--device": VALUES, "--threads": VALUES,
               "--seed": VALUES, "--model": VALUES}


@SETTINGS
@given(chosen=st.dictionaries(st.sampled_from(sorted(BENCH_FLAGS)), st.just(None), min_size=1, max_size=3),
       data=st.data())
def test_any_bench_option_is_accepted_or_one_error_line(capsys, chosen, data):
    argv = ["--dataset", "digits"]
    for flag in chosen:
        argv += [flag, data.draw(BENCH_FLAGS[flag], label=flag)]
    TRIED["fedsign-bench"] += 1
    try:
        check_inputs(parse_args(argv))
    except SystemExit as exc:  # argparse: one line on stderr, exit code 2
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.code == 2 and len(err) == 1 and err[0].startswith("fedsign-bench: error: "), err
    except Exception as exc:  # noqa: BLE001
        assert_refused_cleanly(exc)


def test_report_how_many_inputs_were_tried():
    """Runs last in this module: the counts go to the test log (`pytest -rA` shows them)."""
    print(f"fuzzed inputs tried: {TRIED}")
    if all(TRIED.values()):
        assert min(TRIED.values()) >= 30


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_setting_has_a_refused_value(name, tmp_path):
    """Each method setting is checked: a negative number (or an unknown word) is refused by name."""
    for f in dataclasses.fields(METHODS[name].config):
        if f.name == "name":
            continue
        bad = "nonexistent" if f.type in ("str", str) else "-1"
        if f.name in ("pan_t",):  # any period T makes a valid sin mask
            continue
        with pytest.raises(FedsignError, match=f"method.{f.name}"):
            compose_config([f"method={name}", f"method.{f.name}={bad}", f"out={tmp_path / 'x'}"])
