"""Bad input to `fedsign-sim`: one clear error line naming the bad value (and what is accepted), exit
code 2, and nothing left on disk. Two cases run as real subprocesses; the others call the same entry
point in-process (every check happens before Ray starts, so this is safe and fast)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
import torch

from fedsign.checkpoint import checkpoint_metadata, load_checkpoint, load_metadata, save_checkpoint
from fedsign.config import RunConfig
from fedsign.errors import CheckpointError, ConfigError
from fedsign.resume import RESUMABLE_KEYS, ServerState, load_server_state, resumed_config, save_server_state
from fedsign.run_dir import RunDirectory
from tests.conftest import cli, cli_env, pickle_bombs


def run_main(monkeypatch, capsys, args: list[str]) -> str:
    """sim.main's entry point with `args`; returns stderr after asserting exit code 2."""
    import sim.main

    monkeypatch.setattr(sys, "argv", ["fedsign-sim", *args])
    logger = logging.getLogger("fedsign")  # the CLI's setup_logging changes these; restored afterwards
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    with pytest.raises(SystemExit) as exited:
        sim.main.main()
    assert exited.value.code == 2
    return capsys.readouterr().err


def assert_one_line(err: str, words: list[str]) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsign-sim: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("args, words", [
    (["method=nonexistent"], ["method='nonexistent'", "fedavg"]),
    (["partition.alpha=0"], ["partition.alpha=0", "> 0"]),
])
@pytest.mark.slow  # real processes
def test_subprocess_exit_code_and_one_line(tmp_path, args, words):
    out = tmp_path / "run"
    proc = subprocess.run(cli("sim.main") + args + [f"out={out}"], capture_output=True, text=True,
                          env=cli_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_one_line(proc.stderr, words)
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["dataset=nonexistent"], ["dataset='nonexistent'", "cifar10", "digits"]),
    (["model=vgg99"], ["model='vgg99'", "smallcnn"]),
    (["train.roundz=3"], ["train.roundz"]),
    (["train.rounds=abc"], ["train.rounds='abc'", "number"]),
    (["method.name=fedbogus"], ["method.name='fedbogus'", "fedavg"]),
    (["federation.fraction=1.5"], ["federation.fraction=1.5", "(0, 1]"]),
    (["federation.fraction=0"], ["federation.fraction=0"]),
    (["train.rounds=0"], ["train.rounds=0", ">= 1"]),
    (["model=vgg8"], ["vgg8", "32x32", "smallcnn"]),
    (["dataset=cifar10", "dataset.root=/nonexistent/cifar"], ["'/nonexistent/cifar' is not a directory",
                                                              "cifar-10-batches-py"]),
])
def test_bad_config_is_one_line_and_creates_nothing(monkeypatch, capsys, tmp_path, args, words):
    out = tmp_path / "run"
    err = run_main(monkeypatch, capsys, args + [f"out={out}"])
    assert_one_line(err, words)
    assert not out.exists()


def test_dataset_root_holding_the_wrong_thing(monkeypatch, capsys, tmp_path):
    root = tmp_path / "notcifar"
    (root / "train").mkdir(parents=True)
    (root / "readme.txt").write_text("no images here")
    out = tmp_path / "run"
    err = run_main(monkeypatch, capsys, ["dataset=cifar10", f"dataset.root={root}", f"out={out}"])
    assert_one_line(err, ["no cifar10 data found", str(root), "ImageFolder"])
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(monkeypatch, capsys, tmp_path):
    run_dir = RunDirectory(tmp_path / "old")
    run_dir.write_config(RunConfig())
    err = run_main(monkeypatch, capsys, [f"out={run_dir.path}"])
    assert_one_line(err, ["already holds a run", f"resume={run_dir.path}"])
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["checkpoints", "config.yaml"]


def _killed_run(tmp_path) -> tuple[RunDirectory, RunConfig]:
    """A run directory as a killed run leaves it (config, one metrics row), without its server state."""
    run_dir = RunDirectory(tmp_path / "killed")
    cfg = RunConfig.from_flat({"train.rounds": 4, "out": str(run_dir.path), "checkpoint.every": 1})
    run_dir.write_config(cfg)
    run_dir.append_metrics({"round": 1, "accuracy": 0.5, "loss": 1.0})
    return run_dir, cfg


@pytest.mark.parametrize("damage, words", [
    ("missing", ["no server state", "a run writes one every checkpoint.every rounds (set checkpoint.every >= 1)"]),
    ("garbage", ["not a readable safetensors checkpoint", "resume.safetensors"]),
    ("pickle", ["not a readable safetensors checkpoint"]),
    ("model_checkpoint", ["not a fedsign server state", "role='server'"]),
    ("old_format", ["not a fedsign server state", "role='server-state', format='1'; expected"]),
    ("wrong_model", ["do not fit the model", "missing"]),
    ("other_run", ["was saved by a run with model='logreg'", "this run has model='smallcnn'"]),
])
def test_bad_resume_state(monkeypatch, capsys, tmp_path, damage, words):
    run_dir, cfg = _killed_run(tmp_path)
    if damage == "garbage":
        run_dir.resume_state.write_bytes(b"\x07" * 100)
    elif damage == "pickle":  # a torch.save file whose unpickling would create a marker file (kills a resume
        # reader that unpickles)
        [(bomb, marker)] = [b for b in pickle_bombs(tmp_path) if b[0].name.startswith("torch")]
        bomb.rename(run_dir.resume_state)
    elif damage == "model_checkpoint":
        save_checkpoint(run_dir.resume_state, {"w": torch.zeros(3)}, checkpoint_metadata(
            model="smallcnn", dataset="digits", round=1, role="server", method="fedavg", seed=0))
    elif damage == "old_format":  # a server state of another format (kills: role *and* format wrong to refuse)
        save_server_state(run_dir, ServerState(1, {}, {}, "abc"), cfg)
        tensors, meta = load_checkpoint(run_dir.resume_state)
        save_checkpoint(run_dir.resume_state, tensors, {**meta, "format": "1"})
    elif damage == "wrong_model":  # a logistic regression's weights for the run's smallcnn
        save_server_state(run_dir, ServerState(1, {"linear.weight": torch.zeros(10, 64)}, {}, "abc"), cfg)
    elif damage == "other_run":  # the state of a logreg run, put into this smallcnn run's directory
        save_server_state(run_dir, ServerState(1, {"linear.weight": torch.zeros(10, 64)}, {}, "abc"),
                          cfg.replace(model__name="logreg"))
    before = {p.name: p.read_bytes() for p in run_dir.path.rglob("*") if p.is_file()}
    err = run_main(monkeypatch, capsys, [f"resume={run_dir.path}"])
    assert_one_line(err, words)
    assert {p.name: p.read_bytes() for p in run_dir.path.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob("*-unpickled"))  # never unpickled


def test_resume_refuses_changing_the_experiment(monkeypatch, capsys, tmp_path):
    run_dir, cfg = _killed_run(tmp_path)
    save_server_state(run_dir, ServerState(1, {}, {}, "abc"), cfg)
    err = run_main(monkeypatch, capsys, [f"resume={run_dir.path}", "train.lr=0.3"])
    assert_one_line(err, ["train.lr=0.3", "cannot change", "train.rounds"])


@pytest.mark.parametrize("change, words", [
    ({"dataset__name": "cifar10"}, "dataset='digits'; this run has dataset='cifar10'"),
    ({"method__name": "moon"}, "method='fedavg'; this run has method='moon'"),
    ({"seed": 7}, "seed='0'; this run has seed='7'"),
])
def test_server_state_belongs_to_one_experiment(tmp_path, change, words):
    """The state names its run's model, dataset, method and seed in its metadata, and a run differing in
    any of them refuses it. Mutants killed: an identity key renamed, its value replaced by None."""
    run_dir, cfg = _killed_run(tmp_path)
    save_server_state(run_dir, ServerState(2, {}, {}, "abc"), cfg)
    meta = load_metadata(run_dir.resume_state)
    assert {k: meta[k] for k in ("model", "dataset", "method", "seed")} == {
        "model": cfg.model.name, "dataset": cfg.dataset.name, "method": cfg.method.name, "seed": str(cfg.seed)}
    assert load_server_state(run_dir, cfg).round == 2
    with pytest.raises(CheckpointError, match=re.escape(words)):
        load_server_state(run_dir, cfg.replace(**change))


def test_server_state_round_trip_and_damage(tmp_path):
    """Every field of the state comes back; two differing identity keys are both named; damaged metadata
    is a CheckpointError. Mutants killed: a field not restored (window), the separators of the message,
    the damage message replaced by None."""
    run_dir, cfg = _killed_run(tmp_path)
    state = ServerState(3, {"linear.weight": torch.ones(2, 2)}, {"h/linear.weight": torch.full((2, 2), 0.5)}, "s1",
                        window={"rows": [1, 2]}, elapsed=4.25)
    save_server_state(run_dir, state, cfg)
    back = load_server_state(run_dir, cfg)
    assert (back.round, back.run_stamp, back.window, back.elapsed) == (3, "s1", {"rows": [1, 2]}, 4.25)
    assert torch.equal(back.global_state["linear.weight"], torch.ones(2, 2))
    assert list(back.strategy_state) == ["h/linear.weight"] and float(back.strategy_state["h/linear.weight"][0, 0]) == 0.5
    with pytest.raises(CheckpointError, match=re.escape("method='fedavg', seed='0'; this run has method='moon', seed='7'")):
        load_server_state(run_dir, cfg.replace(method__name="moon", seed=7))
    tensors, meta = load_checkpoint(run_dir.resume_state)
    save_checkpoint(run_dir.resume_state, tensors, {**meta, "round": "three"})
    with pytest.raises(CheckpointError, match="has damaged metadata"):
        load_server_state(run_dir, cfg)


def test_resumed_config_refusals_and_its_directory(tmp_path, monkeypatch):
    """resumed_config: each refusal says why; a resumed run's out and resume are the run directory,
    resolved. Mutants killed: messages replaced by None, the list separators and lengths, out or resume
    not set to the directory."""
    run_dir, cfg = _killed_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    resumed = resumed_config(cfg.replace(resume="killed/../killed", out=""))
    assert resumed.out == resumed.resume == str(run_dir.path.resolve()) and resumed.train.rounds == 4
    with pytest.raises(ConfigError, match=r"is not a run directory \(it has no config.yaml\)"):
        resumed_config(cfg.replace(resume=str(tmp_path)))
    with pytest.raises(ConfigError, match="differs from resume="):
        resumed_config(cfg.replace(resume=str(run_dir.path), out=str(tmp_path / "elsewhere")))
    only = "only " + ", ".join(RESUMABLE_KEYS[:-2]) + " may"
    five = {"train__lr": 0.3, "train__batch_size": 8, "train__local_epochs": 2, "seed": 5, "partition__alpha": 0.1}
    with pytest.raises(ConfigError) as refused:
        resumed_config(cfg.replace(resume=str(run_dir.path), **five))
    message = str(refused.value)
    assert message.endswith(only) and message.count("(the run has ") == 4 and "), " in message
    (run_dir.path / "config.yaml").write_text("train.lr: -1\n")
    with pytest.raises(ConfigError, match="its config.yaml is not valid"):
        resumed_config(cfg.replace(resume=str(run_dir.path)))
