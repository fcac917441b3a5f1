"""The finetune CLI's progress display: a bar over the run's epochs and one within the current epoch."""

from __future__ import annotations

import io

from rich.console import Console

from speccert.cli.finetune_cmd import _epoch_budget, _epoch_progress, _progress_callbacks
from speccert.training.records import EpochRecord


def _rec(epoch: int) -> EpochRecord:
    return EpochRecord(epoch, 0.5, 0.8, {0.5: 0.4}, 2.0, 1.0, False, ["x"], 1.0)


def test_run_bar_counts_epochs_and_epoch_bar_counts_steps() -> None:
    results = Console(file=io.StringIO(), width=120)
    with _epoch_progress(True) as bar:
        on_step, on_epoch = _progress_callbacks(bar, [0.5], results, epochs=5)
        on_epoch(_rec(0))  # the input model
        for k in (1, 2, 3):
            on_step(1, k, 3, 0.1 * k)
        by_name = {t.description: t for t in bar.tasks}
        assert (by_name["epochs"].completed, by_name["epochs"].total) == (0, 5)
        assert (by_name["epoch 1"].completed, by_name["epoch 1"].total) == (3, 3)
        on_epoch(_rec(1))
        by_name = {t.description: t for t in bar.tasks}
        assert "epoch 1" not in by_name and by_name["epochs"].completed == 1
        on_step(2, 1, 3, 0.2)
        by_name = {t.description: t for t in bar.tasks}
        assert by_name["epoch 2"].completed == 1 and by_name["epochs"].completed == 1
    assert "cert acc @0.5" in results.file.getvalue()  # type: ignore[attr-defined]


def test_resumed_run_bar_starts_part_way() -> None:
    with _epoch_progress(True) as bar:
        on_step, _ = _progress_callbacks(bar, [0.5], Console(file=io.StringIO()), epochs=20)
        on_step(7, 4, 10, 0.3)  # resumed mid-epoch 7
        by_name = {t.description: t for t in bar.tasks}
        assert by_name["epochs"].completed == 6 and by_name["epoch 7"].completed == 4


def test_epoch_budget_is_the_option_else_the_recipe_else_the_single_penalty() -> None:
    assert _epoch_budget("lmt-rescale", 7) == 7
    assert _epoch_budget("lmt-rescale", None) == 20
    assert _epoch_budget(None, None) == 10
