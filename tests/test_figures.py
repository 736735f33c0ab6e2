"""`fedsign-figures`: every figure's quick form (digits / SmallCNN, CPU) is made once per module; each test
checks its files and JSON keys, and recomputes numbers of the JSON with the landscape probe functions
(or closed forms) from the checkpoints the figure used. Then bad input, checkpoints given by the user,
`--plan`, the training helpers and the gallery."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.context import CheckpointContext
from landscape.directions import noise_direction, scale_direction, sign_ratio_direction, special_direction
from landscape.evaluator import Evaluator
from landscape.hessian import HessianOperator, eigenpairs
from landscape.signs import sign_consistency_ratio
from sim import figures
from sim.figures_models import cosine_lr, init_batch_norm
from sim.figures_softmax import fit_softmax, softmax_evaluator, softmax_metrics

pytestmark = pytest.mark.slow  # makes every figure once (minutes on 2 cores)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """All 13 figures in their quick form, in one command (models shared between figures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("figures")
    assert figures.main(["all", "--quick", "--out", str(out)]) == 0
    yield out
    torch.set_num_threads(threads)


def record(out: Path, name: str) -> dict:
    for suffix in (".png", ".pdf", ".json"):
        path = out / f"{name}-quick{suffix}"
        assert path.is_file() and path.stat().st_size > 1000, path
    data = json.loads((out / f"{name}-quick.json").read_text())
    for key in ("figure", "paper", "title", "form", "command", "date", "commit", "hardware", "seconds",
                "training_seconds", "settings", "seed", "summary"):
        assert key in data, key
    assert data["figure"] == name and data["form"] == "quick"
    return data


def context(data: dict, checkpoint: str) -> CheckpointContext:
    probe = data["settings"]["probe"]
    return CheckpointContext.load(checkpoint, images=probe["images"], train_images=probe["train_images"],
                                  seed=data["seed"])


def curve_point(ctx: CheckpointContext, direction: dict, lam: float):
    evaluator = ctx.evaluator()
    loss, error = evaluator.curve(evaluator.parameters(), direction, [lam])
    return float(loss[0]), float(error[0])


def theta_of(ctx: CheckpointContext) -> dict:
    return {n: p.detach() for n, p in ctx.model.named_parameters()}


def test_av_fig3_valleys_recompute(made):
    data = record(made, "av-fig3")
    v = data["probes"]["valley"]
    assert {(c["noise"], c["sign_consistent"], c["scale"]) for c in v["curves"]} == \
        {(n, s, sc) for n in ("gaussian", "uniform", "ternary", "gaussian_mean1", "uniform_pos", "binary", "constant")
         for s in (False, True) for sc in (0.2, 1.0, 2.0)}
    ctx = context(data, v["checkpoint"])
    theta = theta_of(ctx)
    c = next(c for c in v["curves"] if c["noise"] == "binary" and c["sign_consistent"] and c["scale"] == 2.0)
    k = 3
    unit = scale_direction(noise_direction(theta, list(theta), "binary", data["seed"], sign=True), theta, "ns")
    loss, error = curve_point(ctx, unit, 2.0 * v["lambdas"][k])
    assert loss == pytest.approx(c["loss"][k], rel=1e-5)
    assert error == pytest.approx(c["error"][k], abs=1e-9)
    assert data["summary"]["asymmetry_s1"]["sign(gaussian)"] == pytest.approx(
        next(c["asymmetry"] for c in v["curves"] if c["noise"] == "gaussian" and c["sign_consistent"]
             and c["scale"] == 1.0))
    assert data["summary"]["asymmetry_s1"]["sign(gaussian)"] < 0  # the paper's finding: flatter at +lambda


def test_av_fig4_sign_sweep_recomputes(made):
    data = record(made, "av-fig4")
    s = data["probes"]["sign_sweep"]
    assert s["ratios"] == pytest.approx(np.round(np.linspace(0, 1, 11), 2))
    ctx = context(data, s["checkpoint"])
    theta = theta_of(ctx)
    i, k = 7, 2
    unit = scale_direction(sign_ratio_direction(theta, list(theta), s["ratios"][i], data["seed"]), theta, "ns")
    loss, _ = curve_point(ctx, unit, s["lambdas"][k])
    assert loss == pytest.approx(s["loss"][i][k], rel=1e-5)
    lams = np.asarray(s["lambdas"])
    assert s["pos_error"][i] == pytest.approx(np.mean(np.asarray(s["error"][i])[lams >= 0]))


def test_av_fig5_special_directions_with_the_trained_init(made):
    data = record(made, "av-fig5")
    v = data["probes"]["valley"]
    assert [c["noise"] for c in v["curves"] if c["scale"] == 1.0] == \
        ["init", "theta", "sign", "sign_centered", "sgp", "sgp_centered"]
    (info,) = data["models"].values()
    init_path = info["checkpoints"]["0"]
    assert v["metadata"]["init"] == init_path
    ctx = context(data, v["checkpoint"])
    theta = theta_of(ctx)
    init = theta_of(CheckpointContext.load(init_path, images=1, train_images=1, seed=0))
    c = next(c for c in v["curves"] if c["noise"] == "init" and c["scale"] == 1.0)
    unit = scale_direction(special_direction(theta, list(theta), "init", init), theta, "ns")
    assert curve_point(ctx, unit, v["lambdas"][-2])[0] == pytest.approx(c["loss"][-2], rel=1e-5)


def test_av_fig7_bn_initialisations(made):
    data = record(made, "av-fig7")
    assert list(data["models"]) == ["ones", "uniform", "gaussian"]
    for label, bn in data["bn_weights"].items():
        converged = np.asarray(bn["converged"])
        assert bn["distribution"]["positive"] > 0  # summary over every BN weight of the model
        assert data["summary"][label]["bn_weight_positive"] == bn["distribution"]["positive"]
        initial = np.asarray(bn["initial"])
        if label == "ones":
            assert np.all(initial == 1.0) and np.all(converged > 0)
        elif label == "uniform":
            assert 0 <= initial.min() and initial.max() <= 1
        else:
            assert initial.std() == pytest.approx(0.1, rel=0.6) and (initial < 0).any()
    r = data["probes"]["gaussian/filter"]
    ctx = context(data, r["checkpoint"])
    theta = theta_of(ctx)
    unit = scale_direction(noise_direction(theta, list(theta), "binary", data["seed"]), theta, "filter")
    c = r["curves"][1]  # s = 1
    assert c["scale"] == 1.0
    assert curve_point(ctx, unit, r["lambdas"][4])[0] == pytest.approx(c["loss"][4], rel=1e-5)


def test_av_fig8_interpolation_and_sign_consistency(made):
    data = record(made, "av-fig8")
    a_label, b_label = data["models"]
    r = data["probes"]["interp"]
    a_path, b_path = r["metadata"]["checkpoints"]
    ctx = context(data, a_path)
    theta_a = theta_of(ctx)
    theta_b = theta_of(CheckpointContext.load(b_path, images=1, train_images=1, seed=0))
    diff = {n: theta_b[n] - theta_a[n] for n in theta_a}
    k = int(np.argmin(np.abs(np.asarray(r["lambdas"]) - 0.5)))
    assert curve_point(ctx, diff, r["lambdas"][k])[0] == pytest.approx(r["loss"][k], rel=1e-5)
    weights = [n for n in theta_a if n.endswith("weight") and not n.startswith("classifier")]
    assert data["ssr_with_difference"][b_label]["other_weight"] == pytest.approx(
        sign_consistency_ratio(theta_b, diff, weights))
    assert set(data["distribution"]) == {a_label, b_label}


def test_av_fig9_hyperparameters(made):
    data = record(made, "av-fig9")
    assert list(data["models"]) == ["default", "lr0.1", "lr0.01", "bs16", "bs128", "wd0.001", "wd1e-05"]
    assert data["models"]["bs128"]["recipe"]["batch_size"] == 128
    r = data["probes"]["lr0.01"]
    ctx = context(data, r["checkpoint"])
    theta = theta_of(ctx)
    unit = scale_direction(noise_direction(theta, list(theta), "gaussian", data["seed"]), theta, "ns")
    c = next(c for c in r["curves"] if not c["sign_consistent"])
    assert curve_point(ctx, unit, r["lambdas"][0])[0] == pytest.approx(c["loss"][0], rel=1e-5)


def test_av_fig10_patterns_are_w_plus_lambda_sign_w(made):
    data = record(made, "av-fig10")
    weight, x, y, _ = fit_softmax(data["fit"]["max_iter"])
    w = weight[0]
    for lam, pattern in zip(data["lambdas"], data["patterns"]):
        assert np.asarray(pattern).ravel() == pytest.approx((w + lam * torch.sign(w)).numpy())
    evaluator = softmax_evaluator(weight, x, y)
    theta = evaluator.parameters()
    _, error = evaluator.curve(theta, special_direction(theta, ["weight"], "sign"), [data["lambdas"][0]])
    assert float(error[0]) == pytest.approx(data["error"][0])
    assert data["correlation_with_sample"][2] > 0.3  # the learned weight looks like the digit


def test_av_fig29_closed_forms_match_autograd_and_the_hessian_operator(made):
    data = record(made, "av-fig29")
    weight, x, y, _ = fit_softmax(data["fit"]["max_iter"])
    evaluator = softmax_evaluator(weight, x, y)
    theta = evaluator.parameters()
    eps = noise_direction(theta, ["weight"], "gaussian", data["seed"], sign=True)["weight"]
    k = 14
    lam = data["lambdas"][k]
    point = (weight + lam * eps).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ point.T, y)
    (grad,) = torch.autograd.grad(loss, point)
    metrics = softmax_metrics(point.detach(), eps, x, y)
    assert metrics["eps_grad"] == pytest.approx(float((grad * eps).sum()), rel=1e-9)
    op = HessianOperator(evaluator.model, {"weight": point.detach()}, ["weight"], evaluator.data,
                         criterion=lambda logits, t: torch.nn.functional.cross_entropy(logits, t, reduction="sum"))
    v = eps.reshape(-1)
    assert metrics["eps_hessian_eps"] == pytest.approx(float(v @ op.hvp(v)), rel=1e-9)
    basis = torch.eye(op.size, dtype=torch.float64)[:40]  # the first 40 diagonal entries of H, exactly
    diag = torch.stack([b @ op.hvp(b) for b in basis])
    p = torch.softmax(x @ point.detach().T, 1)
    assert diag.numpy() == pytest.approx(((p[:, 0] * (1 - p[:, 0]))[:, None] * x[:, :40] ** 2).mean(0).numpy(),
                                         rel=1e-9)  # H[(c, d), (c, d)] = mean_n p_c (1 - p_c) x_d^2
    row = data["rows"]["sign"]
    assert row["eps_hessian_eps"][k] == pytest.approx(metrics["eps_hessian_eps"], rel=1e-9)
    assert row["loss"][k] == pytest.approx(float(loss.detach()), rel=1e-9)
    assert row["trace_hessian"][k] == pytest.approx(metrics["trace_hessian"], rel=1e-12)


def test_cp_fig8_eigenvalues_and_curves(made):
    data = record(made, "cp-fig8")
    stage = data["stages"][-1]
    ctx = context(data, stage["checkpoint"])
    theta = theta_of(ctx)
    op = HessianOperator(ctx.model, theta, list(theta), ctx.train, 500)
    top, _ = eigenpairs(op, 5, "LA", data["seed"], maxiter=data["settings"]["eigsh_maxiter"])
    assert [c["eigenvalue"] for c in stage["rows"]["P.E."]] == pytest.approx(top, rel=1e-4)
    base = op.loss()
    mid = len(data["lambdas"]) // 2
    assert data["lambdas"][mid] == 0.0
    for curves in stage["rows"].values():
        for c in curves:
            assert c["loss"][mid] == pytest.approx(base, rel=1e-5)  # every curve passes through theta


def test_cp_fig9_mined_direction(made):
    data = record(made, "cp-fig9")
    for stage in data["stages"]:
        assert len(stage["cos_pe"]) == len(stage["top"]) and len(stage["cos_ne"]) == len(stage["bottom"])
        assert all(0 <= c <= 1 + 1e-9 for c in stage["cos_pe"] + stage["cos_ne"])
        m = stage["mine"]
        assert m["algorithm"] == "wpeak" and len(m["history"]) == data["settings"]["mine_epochs"]
        ctx = context(data, m["checkpoint"])
        theta = theta_of(ctx)
        op = HessianOperator(ctx.model, theta, list(theta), ctx.train, 500)
        mid = len(m["lambdas"]) // 2
        assert m["loss"][mid] == pytest.approx(op.loss(), rel=1e-5)


def test_cp_fig10_vvv_grid(made):
    data = record(made, "cp-fig10")
    assert set(data["probes"]) == {f"alpha={a} gamma={g}" for a in (0.0, 0.1) for g in (0.1, 0.5, 0.9)}
    r = data["probes"]["alpha=0.1 gamma=0.5"]
    assert r["metadata"]["gamma"] == 0.5 and r["metadata"]["alpha"] == 0.1
    lams = np.asarray(r["lambdas"])
    assert lams[0] == -0.5 and lams[-1] == 1.5
    ctx = context(data, r["checkpoint"])
    theta = theta_of(ctx)
    op = HessianOperator(ctx.model, theta, list(theta), ctx.train, 500)
    for r in data["probes"].values():
        assert np.interp(0.0, lams, r["loss"]) == pytest.approx(op.loss(), rel=1e-5)


def test_cp_fig13_density_and_loss_changes(made):
    data = record(made, "cp-fig13")
    assert [s["label"] for s in data["stages"]] == ["init", "epoch 2", "epoch 12"]
    for stage in data["stages"]:
        d = stage["density"]
        assert np.trapezoid(d["density"], d["grid"]) == pytest.approx(1.0, abs=0.02)  # a probability density
        assert sum(d["weights"]) == pytest.approx(1.0, abs=1e-6)
        assert stage["lowest_ritz_value"] == pytest.approx(min(d["nodes"]))
    stage = data["stages"][1]
    p = stage["perturbation"]
    assert np.asarray(p["changes"]).shape == (2, data["settings"]["perturbations"])
    ctx = context(data, stage["checkpoint"])
    theta = theta_of(ctx)
    i = 4
    eps = noise_direction(theta, list(theta), "gaussian", data["seed"] * 1000 + i)
    loss, _ = Evaluator(ctx.model, ctx.train, recalibrate=False).curve(theta, eps, [0.01])  # training loss
    train_loss = HessianOperator(ctx.model, theta, list(theta), ctx.train, 500).loss()
    assert float(loss[0]) - train_loss == pytest.approx(p["changes"][1][i], rel=1e-4, abs=1e-6)


def test_fl_valley_of_fedavg_and_fedsign(made):
    data = record(made, "fl-valley")
    assert list(data["models"]) == ["fedavg", "fedsign"]
    for label, info in data["models"].items():
        assert info["config"]["method.name"] == label
        results = json.loads((Path(info["run_dir"]) / "results.json").read_text())
        r = data["probes"][label]
        mid = len(r["lambdas"]) // 2
        # the probe sees all test images, as the server's evaluation does: the same accuracy
        assert 1 - r["curves"][0]["error"][mid] == pytest.approx(results["final_accuracy"], abs=1e-9)
        assert r["checkpoint"] == info["checkpoint"] and Path(info["checkpoint"]).is_file()
    assert data["models"]["fedsign"]["config"]["method.gamma"] == data["settings"]["fedsign_gamma"]
    ctx = context(data, data["models"]["fedsign"]["checkpoint"])
    theta = theta_of(ctx)
    r = data["probes"]["fedsign"]
    c = next(c for c in r["curves"] if c["sign_consistent"] and c["scale"] == 0.2)
    unit = scale_direction(noise_direction(theta, list(theta), "gaussian", data["seed"], sign=True), theta, "ns")
    assert curve_point(ctx, unit, 0.2 * r["lambdas"][1])[0] == pytest.approx(c["loss"][1], rel=1e-5)


# ---- checkpoints given by the user, reruns, the plan ----
def test_a_given_checkpoint_gives_the_same_figure(made, tmp_path, one_thread):
    trained = json.loads((made / "av-fig4-quick.json").read_text())
    path = trained["probes"]["sign_sweep"]["checkpoint"]
    assert figures.main(["av-fig4", "--quick", "--out", str(tmp_path), "--checkpoint", f"mine={path}"]) == 0
    given = json.loads((tmp_path / "av-fig4-quick.json").read_text())
    assert list(given["models"]) == ["mine"] and given["models"]["mine"]["given"]
    assert given["probes"]["sign_sweep"]["error"] == trained["probes"]["sign_sweep"]["error"]
    assert not (tmp_path / "models").exists()  # nothing trained


def test_fl_valley_takes_run_directories(made, tmp_path, one_thread):
    runs = json.loads((made / "fl-valley-quick.json").read_text())["models"]
    argv = ["fl-valley", "--quick", "--out", str(tmp_path)]
    for label, info in runs.items():
        argv += ["--checkpoint", f"{label}={info['run_dir']}"]
    assert figures.main(argv) == 0
    data = json.loads((tmp_path / "fl-valley-quick.json").read_text())
    assert data["models"]["fedavg"]["checkpoint"] == runs["fedavg"]["checkpoint"]


def test_a_rerun_reuses_the_trained_models(made, capsys, one_thread):
    assert figures.main(["av-fig4", "--quick", "--out", str(made)]) == 0
    assert "reusing" in capsys.readouterr().err
    assert json.loads((made / "av-fig4-quick.json").read_text())["training_seconds"] == 0


def test_plan_estimates_without_working(tmp_path, capsys):
    out = tmp_path / "out"
    assert figures.main(["av-fig3", "av-fig4", "fl-valley", "--plan", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("train vgg16_bn-cifar10-e30") == 1  # shared by av-fig3 and av-fig4: once
    assert "FL fedsign cifar10 vgg8 200 rounds" in text and "total ~" in text
    assert not any(out.iterdir())


# ---- bad input: one line on stderr, exit code 2, before any work ----
@pytest.mark.parametrize("argv, message", [
    (["av-fig99", "--quick"], "unknown figure 'av-fig99'"),
    (["av-fig3", "--quick", "--checkpoint", "/nonexistent/x.safetensors"], "does not exist"),
    (["av-fig3", "--quick", "--epochs", "0"], "--epochs"),
    (["av-fig3", "--quick", "--seed", "-1"], "--seed"),
    (["fl-valley", "--quick", "--gamma", "nan"], "--gamma"),
    (["fl-valley", "--quick", "--rounds", "two"], "--rounds"),
    (["av-fig3", "av-fig4", "--quick", "--checkpoint", "a.safetensors"], "one figure at a time"),
    (["av-fig10", "--quick", "--checkpoint", "a.safetensors"], "takes no --checkpoint"),
    (["av-fig3", "--quick", "--init", "a.safetensors"], "--init"),
    (["av-fig3", "--quick", "--device", "gpu0"], "--device"),
    (["av-fig3", "--device", "cuda:7", "--plan"], "no CUDA GPU"),
    (["av-fig3", "--data-root", "/nonexistent"], "cifar10"),
    (["gallery", "/nonexistent"], "not a folder"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    if torch.cuda.is_available() and "cuda:7" in argv:
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as exc:
        figures.main([*argv, "--out", str(tmp_path / "out")] if argv[0] != "gallery" else argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedsign-figures: error:") and message in err[0], err


def test_wrong_checkpoint_count_and_labels(made, tmp_path, capsys):
    path = json.loads((made / "av-fig4-quick.json").read_text())["probes"]["sign_sweep"]["checkpoint"]
    for argv, message in ((["av-fig8", "--checkpoint", path], "takes two --checkpoint"),
                          (["av-fig9", "--checkpoint", f"lrx={path}"], "label 'lrx'"),
                          (["av-fig7", "--checkpoint", f"a={path}", "--checkpoint", f"a={path}"], "must differ"),
                          (["av-fig7", "--checkpoint", path], "needs a model with BatchNorm")):
        with pytest.raises(SystemExit) as exc:
            figures.main([*argv, "--quick", "--out", str(tmp_path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("fedsign-figures: error:") and message in err[-1], err


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        figures.main(["av-fig10", "--quick", "--out", str(blocker / "sub")])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err


# ---- helpers ----
def test_cosine_learning_rate_per_epoch():
    assert cosine_lr(0.03, 0, 10) == 0.03
    assert cosine_lr(0.03, 5, 10) == pytest.approx(0.015)
    assert cosine_lr(0.03, 9, 10) == pytest.approx(0.015 * (1 + math.cos(0.9 * math.pi)))


def test_bn_initialisations():
    from fedsign.data.specs import DATASETS
    from fedsign.models import build_model

    model = build_model("vgg16_bn", DATASETS["cifar10"])
    init_batch_norm(model, "gaussian", 0)
    w = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert w.numel() == 4224 and w.std().item() == pytest.approx(0.1, rel=0.05) and abs(w.mean().item()) < 0.01
    init_batch_norm(model, "uniform", 0)
    w = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert 0 <= w.min() and w.max() <= 1 and w.mean().item() == pytest.approx(0.5, abs=0.02)


def test_gallery_writes_small_images_and_the_page(made, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    assert figures.main(["gallery", str(made), "--docs", str(docs)]) == 0
    page = (docs / "figures.md").read_text()
    for name in figures.FIGURES:
        assert f"figures/{name}-quick.png" in page
        png = docs / "figures" / f"{name}-quick.png"
        assert png.is_file() and png.stat().st_size < 300_000
    assert "QUICK SETTING" in page and "fedsign-figures av-fig3 av-fig4 av-fig5 fl-valley --epochs 20 --rounds 100 --device cuda" in page
    summary = json.loads((docs / "figures" / "av-fig3-quick.json").read_text())
    assert "probes" not in summary and summary["summary"]["asymmetry_s1"]
