"""`--augment`: the training batches are shifted copies of the drawn images with a data-space zero fill
and their own labels, drawn from (seed, step) only; a resumed augmented run equals an uninterrupted
one; bad names and flat inputs are usage errors (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_finetune_resume import Boom, crash_after_step_6, evaluator_on

import speccert
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.training.augment import parse_augment, shift_batch, shift_offsets, step_generator
from speccert.training.batching import epoch_batches
from speccert.training.checkpoint import load_checkpoint, run_dir_for
from speccert.training.ddp import DistInfo
from speccert.training.finetune import finetune
from speccert.training.penalties import penalty_class
from speccert.training.toy import separable_data, toy_cnn, toy_mlp

TRAIN = separable_data(40, (1, 8, 8), seed=1)
VAL = separable_data(12, (1, 8, 8), seed=2)
CNN = Path(__file__).resolve().parents[1] / "models" / "cnn.onnx"
TRAIN_2K = Path(__file__).resolve().parents[1] / "models" / "data" / "fashion_mnist_train_2k.npz"


def _shifted_by_loop(x: torch.Tensor, off: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Ground truth, one pixel at a time: x'[c, i, j] = x[c, i - dy, j - dx] inside, else fill_c."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for n in range(b):
        dy, dx = (int(v) for v in off[n])
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    inside = 0 <= i - dy < h and 0 <= j - dx < w
                    out[n, ch, i, j] = x[n, ch, i - dy, j - dx] if inside else fill[ch]
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shift_batch_is_the_pixelwise_translation_with_fill(k: int) -> None:
    x = torch.rand(6, 2, 7, 9, dtype=torch.float64) + 1.0  # no pixel equals the fill by chance
    fill = torch.tensor([0.0, -2.5], dtype=torch.float64)
    got = shift_batch(x, k, fill, step_generator(5, 11, 0))
    off = shift_offsets(5, 11, 0, 6, k)
    assert int(off.abs().max()) <= k and len({tuple(o) for o in off.tolist()}) > 1
    assert torch.equal(got, _shifted_by_loop(x, off, fill))  # exact: copies, no arithmetic


def test_shift_offsets_cover_the_range_and_are_a_function_of_seed_step_rank() -> None:
    draws = shift_offsets(0, 0, 0, 4000, 2)
    assert set(draws.flatten().tolist()) == {-2, -1, 0, 1, 2}
    assert torch.equal(draws, shift_offsets(0, 0, 0, 4000, 2))
    for other in (
        shift_offsets(1, 0, 0, 4000, 2),
        shift_offsets(0, 1, 0, 4000, 2),
        shift_offsets(0, 0, 1, 4000, 2),
    ):
        assert not torch.equal(draws, other)
    state = torch.get_rng_state()
    x = torch.rand(3, 1, 5, 5)
    state = torch.get_rng_state()
    shift_batch(x, 1, torch.zeros(1), step_generator(0, 0, 0))
    assert torch.equal(state, torch.get_rng_state())  # the run's global RNG stream is untouched


def test_parse_augment_names_and_errors() -> None:
    assert parse_augment("none").name == "none"
    assert parse_augment("shift").name == "shift:2"
    assert parse_augment("Shift:3").k == 3
    for bad in ("flip", "shift:0", "shift:-1", "shift:1.5", "shift:", "crop"):
        with pytest.raises(UsageError, match="choose none, shift"):
            parse_augment(bad)
    with pytest.raises(UsageError, match="spatial axes"):
        parse_augment("shift:1").check_input((64,))
    with pytest.raises(UsageError, match="not smaller"):
        parse_augment("shift:8").check_input((1, 8, 8))


def _model(tmp_path: Path) -> Path:
    p = tmp_path / "in.onnx"
    save_onnx(toy_cnn(dtype=torch.float32), p)
    return p


def _run(model: Path, out: Path | None, **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        targets=["cra@0.1>=0.9"], penalty="spectral", epochs=2, lr=5e-3, batch_size=10, seed=3,
        evaluator=evaluator_on(VAL), augment="shift:2",
    )  # fmt: skip
    args.update(kw)
    return finetune(str(model), TRAIN, VAL, out=out, **args)


@pytest.mark.parametrize("mean_std", [None, (0.5, 0.25)])
def test_training_sees_shifted_copies_with_their_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mean_std: tuple[float, float] | None
) -> None:
    """Every batch the loss sees is the drawn images shifted by the step's offsets, a data-space 0 fill
    (normalised with --mean/--std like the images), and the drawn labels unchanged."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    cls = penalty_class("spectral")
    loss = cls.loss

    def spy(self: Any, logits: Any, y: Any, x: Any, module: Any) -> Any:
        seen.append((x.detach().clone(), y.clone()))
        return loss(self, logits, y, x, module)

    monkeypatch.setattr(cls, "loss", spy)
    norm: dict[str, Any] = {} if mean_std is None else {"mean": [mean_std[0]], "std": [mean_std[1]]}
    _run(_model(tmp_path), None, epochs=2, **norm)
    m, s = mean_std or (0.0, 1.0)
    batches = [b for e in (1, 2) for b in epoch_batches(len(TRAIN[0]), 10, 3, e, DistInfo())]
    assert len(seen) == len(batches) == 8
    for step, (idx, (xb, yb)) in enumerate(zip(batches, seen, strict=True)):  # offsets by global step
        raw = TRAIN[0][idx]
        want = (_shifted_by_loop(raw, shift_offsets(3, step, 0, len(idx), 2), torch.zeros(1)) - m) / s
        assert torch.allclose(xb, want, atol=1e-6, rtol=0)
        assert torch.equal(yb, TRAIN[1][idx])
        assert not torch.allclose(xb, (raw - m) / s)  # really shifted


def test_augmented_runs_are_reproducible_and_differ_from_unaugmented(tmp_path: Path) -> None:
    model = _model(tmp_path)
    a, b = _run(model, None), _run(model, None)
    c = _run(model, None, augment="none")
    pa, pb, pc = (r.graph.parameters() for r in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    assert a.augment == "shift:2" and c.augment == "none"
    assert any("shift:2" in n for n in a.notes) and not any("augmented" in n for n in c.notes)


def test_resume_of_an_augmented_run_matches_uninterrupted(tmp_path: Path) -> None:
    model = _model(tmp_path)
    _run(model, tmp_path / "a.onnx", checkpoint_every=3)

    with pytest.raises(Boom):
        _run(model, tmp_path / "b.onnx", checkpoint_every=3, on_step=crash_after_step_6)
    assert load_checkpoint(run_dir_for(tmp_path / "b.onnx") / "last.pt")["config"]["augment"] == "shift:2"
    with pytest.raises(UsageError, match="augment"):  # another augmentation is another run
        _run(model, tmp_path / "b.onnx", checkpoint_every=3, resume=True, augment="shift:1")
    _run(model, tmp_path / "b.onnx", checkpoint_every=3, resume=True)
    wa, wb = (speccert.load(str(tmp_path / n)).parameters() for n in ("a.onnx", "b.onnx"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_flat_input_model_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "mlp.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), p)
    x, y = separable_data(20, (6,), seed=1)
    with pytest.raises(UsageError, match="spatial axes"):
        finetune(str(p), (x, y), (x, y), targets=["clean>=0.9"], penalty="spectral", augment="shift:1")


def test_cli_bad_augment_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from speccert.cli.app import main

    argv = ["finetune", str(CNN), "--data", str(TRAIN_2K), "--target", "clean>=0.5"]
    argv += ["--out", str(tmp_path / "o.onnx"), "--augment", "flip"]
    assert main(argv) == 2
    text = capsys.readouterr()
    lines = [ln for ln in (text.out + text.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and "--augment 'flip'" in lines[0] and "Traceback" not in text.err
    assert not (tmp_path / "o.onnx").exists()


def test_describe_says_pixel_for_one() -> None:
    assert "up to 1 pixel per axis" in parse_augment("shift:1").describe()
    assert "up to 3 pixels per axis" in parse_augment("shift:3").describe()
