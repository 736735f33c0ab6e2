"""`fedsign-landscape` on a tiny real checkpoint (smallcnn_bn on digits): every probe writes its JSON and
plot; bad input is one error line with exit code 2."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from fedsign.checkpoint import checkpoint_metadata, save_checkpoint
from fedsign.data.specs import dataset_spec
from fedsign.models import build_model, exchanged_state
from landscape.cli import main
from landscape.context import data_subset
from landscape.train import train_classifier
from tests.conftest import cli, cli_env

SMALL = ["--images", "60", "--train-images", "60"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """init, A (trained from init) and B (trained from init on another seed): real safetensors files."""
    root = tmp_path_factory.mktemp("ckpt")
    spec = dataset_spec("digits")
    meta = lambda r, s: checkpoint_metadata(model="smallcnn_bn", dataset="digits", round=r, role="server",  # noqa: E731
                                            method="fedavg", seed=s)
    torch.manual_seed(0)
    init = build_model("smallcnn_bn", spec)
    paths = {"init": save_checkpoint(root / "init.safetensors", exchanged_state(init), meta(0, 0))}
    data = data_subset("digits", "", "train", 300, 0, "cpu")
    for label, seed in (("A", 1), ("B", 2)):
        model = build_model("smallcnn_bn", spec)
        model.load_state_dict(init.state_dict())
        train_classifier(model, data, epochs=1, lr=0.1, seed=seed)
        paths[label] = save_checkpoint(root / f"{label}.safetensors", exchanged_state(model), meta(2, seed))
    corrupted = root / "corrupted.safetensors"
    corrupted.write_bytes(paths["A"].read_bytes()[:200])
    paths["corrupted"] = corrupted
    paths["file"] = root / "a-file"  # a path "under" it cannot be written
    paths["file"].write_text("x")
    paths["pngdir"] = root / "folder.png"
    paths["pngdir"].mkdir()
    return {k: str(v) for k, v in paths.items()}


def run(tmp_path, probe: str, *args: str) -> dict:
    out_json, out_png = tmp_path / f"{probe}.json", tmp_path / f"{probe}.png"
    assert main([probe, *args, *SMALL, "--json", str(out_json), "--plot", str(out_png)]) == 0
    assert out_png.stat().st_size > 1000
    data = json.loads(out_json.read_text())
    assert data["probe"] == probe and {"checkpoint", "metadata", "arrays"} <= set(data)
    assert {"seed", "scaling", "group", "data", "dtype"} <= set(data["metadata"])
    return data


def test_valley_json(tmp_path, checkpoints):
    data = run(tmp_path, "valley", checkpoints["A"], "--directions", "gaussian,sign,init", "--init",
               checkpoints["init"], "--scales", "0.5,1", "--lambdas=-1,1,3")
    assert data["lambdas"] == [-1.0, 0.0, 1.0]
    curves = data["curves"]
    assert [(c["noise"], c["sign_consistent"], c["scale"]) for c in curves][:4] == [
        ("gaussian", False, 0.5), ("gaussian", False, 1.0), ("gaussian", True, 0.5), ("gaussian", True, 1.0)]
    for c in curves:
        assert len(c["loss"]) == len(c["error"]) == 3
        pos, neg = c["error"][2], c["error"][0]
        assert c["asymmetry"] == pytest.approx(pos - neg)
    assert data["metadata"]["bn_recalibrated"] is True and data["metadata"]["group"] == "ALL"
    assert curves[0]["error"][1] == curves[2]["error"][1]  # lambda = 0 is theta itself for every noise


def test_sign_sweep_json(tmp_path, checkpoints):
    data = run(tmp_path, "sign-sweep", checkpoints["A"], "--ratios", "0,1", "--lambdas=-1,1,3", "--group", "CLF")
    assert data["ratios"] == [0.0, 1.0] and len(data["pos_error"]) == len(data["neg_error"]) == 2


def test_interp_json_with_soups(tmp_path, checkpoints):
    data = run(tmp_path, "interp", checkpoints["A"], checkpoints["B"], checkpoints["init"], "--init",
               checkpoints["init"], "--lambdas=0,1,3")
    assert data["lambdas"] == [0.0, 0.5, 1.0]
    assert set(data["ssr"]) == {"init-A", "init-B", "A-B"}
    assert {"uniform_soup_error", "greedy_soup_error", "greedy_kept"} <= set(data["soups"])


def test_signs_json(tmp_path, checkpoints):
    data = run(tmp_path, "signs", checkpoints["A"], checkpoints["B"], "--init", checkpoints["init"])
    assert set(data["distribution"]) == {"init", "A", "B"}
    assert data["distribution"]["init"]["bn_weight"]["mean"] == 1.0  # BN weights start at one
    assert 0.0 <= data["ssr"]["A-B"]["CONV"] <= 1.0


def test_surface_json(tmp_path, checkpoints):
    data = run(tmp_path, "surface", checkpoints["A"], "--x=-1,1,3", "--y=-0.5,0.5,2", "--dir2", "uniform")
    assert len(data["loss"]) == 2 and len(data["loss"][0]) == 3


def test_hessian_json(tmp_path, checkpoints):
    data = run(tmp_path, "hessian", checkpoints["A"], "--group", "classifier.bias", "--k", "2",
               "--trace-samples", "4", "--slq-runs", "1", "--slq-steps", "5")
    assert data["eigenvalues"] == sorted(data["eigenvalues"], reverse=True) and len(data["eigenvalues"]) == 2
    assert data["trace_stderr"] >= 0 and data["num_parameters"] == 10
    assert data["trace_probe"] == "gaussian" and data["requested"] == 2
    assert data["metadata"]["hessian_data"] == "train" and "train" in data["metadata"]["data"]


def test_mine_json_and_mined_direction_in_valley(tmp_path, checkpoints):
    direction = tmp_path / "mined.safetensors"
    data = run(tmp_path, "mine", checkpoints["A"], "--group", "CLF", "--epochs", "1", "--lambdas=-1,1,3",
               "--save-direction", str(direction))
    assert data["algorithm"] == "wpeak" and len(data["loss"]) == 3
    valley = run(tmp_path, "valley", checkpoints["A"], "--directions", f"file:{direction}", "--group", "CLF",
                 "--lambdas=-1,1,3", "--scaling", "none")
    assert valley["curves"][0]["loss"] == pytest.approx(data["loss"], rel=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["nosuchprobe", "x"], "invalid choice"),
    (["valley", "/nonexistent.safetensors"], "does not exist"),
    (["valley", "CORRUPTED"], "not a readable safetensors"),
    (["valley", "A", "--group", "nothing.*"], "selects no parameter"),
    (["valley", "A", "--directions", "bogus"], "not known"),
    (["valley", "A", "--directions", "ratio:abc"], "expected a number"),
    (["valley", "A", "--directions", "hessian:0"], "K >= 1"),
    (["valley", "A", "--directions", "init"], "--init"),
    (["valley", "A", "--lambdas=-1,1"], "START,STOP,NUM"),
    (["valley", "A", "--lambdas=0,1,11"], "both sides of 0"),  # issue 13: was a traceback, exit 1
    (["valley", "A", "--scales", "0"], "> 0"),
    (["valley", "A", "--json", "FILE/out.json"], "cannot be written"),
    (["valley", "A", "--plot", "PNGDIR"], "is a directory"),
    (["valley", "A", "--plot", "out.gif"], "suffix"),
    (["hessian", "A", "--trace-samples", "1"], ">= 2"),
    (["hessian", "A", "--group", "classifier.bias", "--k", "10"], "1 <= k < 10"),
    (["surface", "A", "--filter-1d", "biasbn"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, checkpoints, tmp_path, argv, message):
    names = {"CORRUPTED": checkpoints["corrupted"], "A": checkpoints["A"], "PNGDIR": checkpoints["pngdir"],
             "FILE/out.json": checkpoints["file"] + "/out.json"}
    argv = [names.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv + SMALL)
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fedsign-landscape: error:") and message in err[0], err


def test_hessian_and_valley_report_the_same_loss_at_theta(tmp_path, checkpoints):
    """A BN checkpoint: the Hessian on the test subset uses the statistics the valley recomputes (issue 13)."""
    valley = run(tmp_path, "valley", checkpoints["A"], "--lambdas=-1,1,3", "--sign", "no", "--scaling", "filter")
    assert valley["metadata"]["filter_1d"] == "element" and valley["metadata"]["chunk"] == 1
    hessian = run(tmp_path, "hessian", checkpoints["A"], "--data", "test", "--group", "classifier.bias", "--k", "1",
                  "--no-bottom", "--slq-runs", "0", "--trace-samples", "3", "--trace-probe", "rademacher")
    assert hessian["loss"] == pytest.approx(valley["curves"][0]["loss"][1], rel=1e-5)
    assert hessian["trace_probe"] == "rademacher" and 2 <= hessian["trace_samples"] <= 3
    assert hessian["metadata"]["hessian_data"] == "test" and "test" in hessian["metadata"]["data"]


@pytest.mark.slow  # a real process
def test_module_entry_point_end_to_end(tmp_path, checkpoints):
    """`python -m landscape.cli` (= fedsign-landscape) runs a probe; its bad-input exits are end to end in
    tests/test_landscape_options.py."""
    ok = subprocess.run(cli("landscape.cli") + ["valley", checkpoints["A"], "--images", "30", "--train-images", "30",
                                               "--lambdas=-1,1,3", "--sign", "no",
                                               "--json", str(tmp_path / "v.json")],
                        env=cli_env(), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "v.json").read_text())["probe"] == "valley"
