"""Recipes: registered by name, documented from the registry, run end to end on the bundled subset
with the certificate re-checked from the written file, and resume bit-identically (schedules are
functions of the global step)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import speccert
from speccert.bounds import certify
from speccert.data import Dataset, load_data
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.ir.graph import Graph
from speccert.training.checkpoint import load_checkpoint, run_dir_for
from speccert.training.finetune import finetune, resolve_recipe
from speccert.training.penalties import make_penalty
from speccert.training.recipes import RECIPES, Recipe, get_recipe, recipe_table_markdown, register_recipe
from speccert.training.records import EpochRecord, pareto_front
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_mlp

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "finetune.md"
CNN = ROOT / "models" / "cnn.onnx"
TRAIN_2K = ROOT / "models" / "data" / "fashion_mnist_train_2k.npz"
TEST_1K = ROOT / "models" / "data" / "fashion_mnist_test_1k.npz"


def test_registry_docs_and_errors() -> None:
    assert len(RECIPES) >= 1
    assert recipe_table_markdown() in DOCS.read_text()
    name = RECIPES.keys()[0]
    with pytest.raises(KeyError, match="already registered"):
        register_recipe(Recipe(name=name, summary="dup", penalty="lmt"))
    with pytest.raises(UsageError, match="choose one of"):
        get_recipe("nope")
    with pytest.raises(UsageError, match="not both"):
        resolve_recipe(name, "spectral", None, None)
    with pytest.raises(UsageError):
        Recipe(name="x", summary="x", penalty="lmt", lr_decay="step")
    # each wrong setting is named with its value (NaN included), the right ones are not
    with pytest.raises(UsageError, match=r"lr > 0 \(--lr\), got nan") as bad:
        resolve_recipe(None, "lmt", None, math.nan)
    assert "epochs" not in str(bad.value) and "warmup" not in str(bad.value)
    with pytest.raises(
        UsageError, match=r"0 <= ema < 1 \(--ema\), got 1.0; epochs >= 0 \(--epochs\), got -1"
    ):
        Recipe(name="x", summary="x", penalty="lmt", epochs=-1, ema=1.0)
    r = resolve_recipe(name, None, 3, 0.5)
    assert (r.epochs, r.lr, r.penalty) == (3, 0.5, RECIPES.get(name).penalty)
    assert resolve_recipe(None, None, None, None).penalty == "lmt"  # the default before recipes


@pytest.mark.parametrize("name", RECIPES.keys())
def test_every_recipe_names_a_real_penalty_with_valid_options(name: str) -> None:
    r = RECIPES.get(name)
    assert r.summary
    make_penalty(r.penalty, toy_mlp(dtype=torch.float32), r.penalty_weight, **dict(r.penalty_options))


def test_lr_schedule_matches_formula() -> None:
    r = Recipe(name="t", summary="t", penalty="lmt", lr=0.1, warmup=0.1, lr_decay="cosine")
    total = 100
    assert r.lr_at(0, total) == pytest.approx(0.1 / 10)
    assert r.lr_at(9, total) == pytest.approx(0.1)
    for t in range(10, total):
        assert r.lr_at(t, total) == pytest.approx(0.05 * (1 + math.cos(math.pi * (t - 10) / 90)))
    lrs = [r.lr_at(t, total) for t in range(10, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] < 1e-3
    flat = Recipe(name="f", summary="f", penalty="lmt", lr=0.1)
    assert {flat.lr_at(t, total) for t in range(total)} == {0.1}


def test_lmt_anneal_ramps_the_margin_linearly() -> None:
    g = toy_mlp()
    full = make_penalty("lmt", g, eps=0.5)
    ramped = make_penalty("lmt", g, eps=0.5, anneal=0.4)
    full.eval(), ramped.eval()  # no power-iteration steps: both keep the same (seeded) vectors
    y = torch.tensor([0, 1, 2])
    ref = full.shift(y, 3).detach()
    assert float(ref.abs().sum()) > 0
    for frac, k in ((0.0, 0.0), (0.1, 0.25), (0.2, 0.5), (0.4, 1.0), (0.9, 1.0)):
        ramped.set_progress(frac)
        assert torch.allclose(ramped.shift(y, 3).detach(), k * ref)
    with pytest.raises(UsageError):
        make_penalty("lmt", g, anneal=1.5)


def _rec(epoch: int, clean: float, cra: float) -> EpochRecord:
    return EpochRecord(epoch, 0.0, clean, {0.5: cra}, 1.0, 1.0, False, [], 0.0)


def test_pareto_front_keeps_only_undominated_epochs() -> None:
    h = [_rec(0, 0.9, 0.0), _rec(1, 0.8, 0.5), _rec(2, 0.7, 0.4), _rec(3, 0.8, 0.6), _rec(4, 0.8, 0.6)]
    assert [r.epoch for r in pareto_front(h, 0.5)] == [4, 0]  # 1, 2 dominated by 4; 3 ties 4 (earlier)


def _subset(path: Path, n: int) -> Dataset:
    d = load_data(path)
    return Dataset(d.x[:n], d.y[:n], d.source)


@pytest.mark.parametrize("name", RECIPES.keys())
def test_recipe_runs_end_to_end_and_the_written_file_certifies(name: str, tmp_path: Path) -> None:
    """One epoch of each recipe from the zoo's cnn on the bundled 2k training subset; the certify
    report of the written file is re-computed here from the file and equals the run's record."""
    val = _subset(TEST_1K, 300)
    out = tmp_path / "robust.onnx"
    res = finetune(
        str(CNN), str(TRAIN_2K), val, ["cra@0.5>=0.99", "clean>=0.99"], recipe=name, epochs=1, out=out
    )
    assert [r.epoch for r in res.history] == [0, 1] and not res.met and res.exit_code == 1
    assert res.history[1].lipschitz < 0.9 * res.history[0].lipschitz  # one epoch already moves the bound
    best = next(r for r in res.history if r.epoch == res.best_epoch)
    rep = certify(speccert.load(str(out)), val, [0.5], second_order=True, lower_bound=False)
    assert rep.clean_accuracy == pytest.approx(best.clean)
    assert rep.certified_accuracy(0.5) == pytest.approx(best.cra[0.5])
    assert rep.lipschitz_upper == pytest.approx(best.lipschitz, rel=1e-6)
    assert res.report.certified_accuracy(0.5) == pytest.approx(best.cra[0.5])
    assert {r.epoch for r in res.pareto} >= {res.best_epoch}
    assert all((run_dir_for(out) / f"epoch-{r.epoch}.pt").is_file() for r in res.pareto)


TRAIN = separable_data(80, (6,), seed=1)
VAL = separable_data(30, (6,), seed=2)
SCHEDULED = Recipe(
    name="test-scheduled",
    summary="every schedule at once",
    penalty="lmt",
    penalty_options={"anneal": 0.5, "eps": 0.1},
    lr=5e-3,
    epochs=3,
    warmup=0.2,
    lr_decay="cosine",
    grad_clip=0.5,
)


def _evaluator(graph: Graph) -> Measurement:
    with torch.no_grad():
        acc = float((graph(VAL[0].to(graph.dtype)).argmax(1) == VAL[1]).double().mean())
    return Measurement(acc, {0.1: acc / 2}, 1.0)


def _run(model: Path, out: Path, **kw) -> object:  # noqa: ANN003
    args = dict(targets=["cra@0.1>=0.9"], recipe=SCHEDULED, batch_size=20, seed=3, checkpoint_every=3)
    return finetune(str(model), TRAIN, VAL, out=out, evaluator=_evaluator, **(args | kw))


def test_resume_with_schedules_is_bit_identical(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), model)
    ref = _run(model, tmp_path / "a.onnx")

    class Boom(RuntimeError):
        pass

    def crash(epoch: int, step: int, total: int, loss: float) -> None:
        if epoch == 2 and step == 2:  # global step 6: just after the step-6 checkpoint, mid warm-up/ramp
            raise Boom

    with pytest.raises(Boom):
        _run(model, tmp_path / "b.onnx", on_step=crash)
    res = _run(model, tmp_path / "b.onnx", resume=True)
    a = load_checkpoint(run_dir_for(tmp_path / "a.onnx") / "last.pt")
    b = load_checkpoint(run_dir_for(tmp_path / "b.onnx") / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["penalty_state"]["weight"], b["penalty_state"]["weight"])
    assert [r.clean for r in ref.history] == [r.clean for r in res.history]
    assert b["recipe"] == "test-scheduled"


def test_time_budget_stops_before_an_epoch_that_would_overrun(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), model)
    res = _run(model, tmp_path / "c.onnx", time_budget=1e-9)
    assert [r.epoch for r in res.history] == [0] and res.exit_code == 1
    assert any("time budget" in n for n in res.notes)
    with pytest.raises(UsageError):
        _run(model, tmp_path / "d.onnx", time_budget=0)


def test_cli_recipe_and_penalty_together_is_a_usage_error(tmp_path: Path) -> None:
    from speccert.cli.app import main

    name = RECIPES.keys()[0]
    argv = ["finetune", str(CNN), "--data", str(TRAIN_2K), "--target", "clean>=0.5"]
    argv += ["--out", str(tmp_path / "o.onnx"), "--recipe", name, "--penalty", "lmt"]
    assert main(argv) == 2
    assert main([*argv[:-4], "--recipe", "nope"]) == 2


def test_cli_help_lists_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    from speccert.cli.app import main

    assert main(["finetune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in RECIPES:
        assert name in text


def test_mean_std_normalise_the_training_data(tmp_path: Path) -> None:
    """--mean/--std reach the training loop: the same run on pre-normalised data trains the same weights."""
    model = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), model)
    x, y = TRAIN
    kw = dict(
        targets=["cra@0.1>=0.9"], penalty="spectral", epochs=1, batch_size=20, seed=3, evaluator=_evaluator
    )
    a = finetune(str(model), (x, y), VAL, mean=[0.5], std=[0.25], **kw)
    b = finetune(str(model), ((x - 0.5) / 0.25, y), VAL, **kw)
    c = finetune(str(model), (x, y), VAL, **kw)
    pa, pb, pc = (r.graph.parameters() for r in (a, b, c))
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
    assert not all(torch.allclose(pa[k], pc[k], atol=1e-6) for k in pa)


def test_catalog_json_and_docs_tables_are_current() -> None:
    """penalties.json (the CLI's --penalty help, read without torch) and docs/finetune.md's tables are
    what `python -m speccert.training.catalog` generates from the registries."""
    from speccert.training.catalog import CATALOG_JSON, DOCS, catalog_json, docs_text

    assert CATALOG_JSON.read_text(encoding="utf-8") == catalog_json()
    assert DOCS.read_text(encoding="utf-8") == docs_text()


def test_the_written_epoch_is_on_the_pareto_front_when_epochs_tie(tmp_path: Path) -> None:
    """Every epoch measures the same (a target far out of reach): the written epoch is the last trained
    one, and the Pareto table lists it (it listed only the input model, epoch 0, and no row said
    'written'); a dominated later epoch does not replace a better one on a tie of target scores."""
    from speccert.exporters import save_onnx
    from speccert.training.records import replaces_on_tie
    from speccert.training.targets import Measurement
    from speccert.training.toy import toy_mlp

    path = tmp_path / "m.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), path)
    res = finetune(
        str(path), TRAIN, VAL, ["cra@0.1>=0.99"], penalty="lmt", epochs=2, batch_size=20,
        out=tmp_path / "o.onnx", evaluator=lambda graph: Measurement(0.5, {0.1: 0.0}, 1.0),
    )  # fmt: skip
    assert res.best_epoch == 2
    assert [r.epoch for r in res.pareto] == [2]
    assert (run_dir_for(tmp_path / "o.onnx") / "epoch-2.pt").is_file()
    h = [_rec(0, 0.9, 0.0), _rec(1, 0.9, 0.1)]
    assert not replaces_on_tie(h, 1, _rec(2, 0.8, 0.1), 0.5)  # dominated by epoch 1: it stays
    assert replaces_on_tie(h, 1, _rec(2, 0.9, 0.1), 0.5)  # an exact tie: the later epoch
    assert replaces_on_tie(h, 1, _rec(2, 0.95, 0.05), 0.5)  # neither dominates: the later epoch
