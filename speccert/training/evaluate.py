"""The stopping rule's measuring instrument: the certifier, run on the validation data.

An `Evaluator` is any callable `graph -> Measurement`. `certifier_evaluator` wraps
`speccert.certify` (sound upper bounds only: the measurement's certified accuracies and Lipschitz
bound are the certifier's, never a training-time estimate). Tests inject scripted evaluators to check
the stopping rule against known numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from speccert.data import Dataset
from speccert.ir.graph import Graph
from speccert.training.targets import Measurement

Evaluator = Callable[[Graph], Measurement]


def certifier_evaluator(
    val: Dataset,
    eps: Sequence[float],
    device: str = "cpu",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 256,
    second_order: bool = True,
) -> Evaluator:
    """Measure a graph with speccert.certify on `val` at radii `eps` (the report rides along)."""
    eps_list = [float(e) for e in eps]

    def evaluate(graph: Graph) -> Measurement:
        from speccert.bounds import certify

        rep = certify(
            graph,
            val,
            eps_list,
            device=device,
            second_order=second_order,
            lower_bound=False,
            batch_size=batch_size,
            mean=mean,
            std=std,
        )
        if second_order:  # tried opportunistically, never asked for by the user: no "not used" note
            rep.notes[:] = [n for n in rep.notes if not n.startswith("second_order certificate not used")]
        cra = {e: float(rep.certified_accuracy(e)) for e in eps_list}
        return Measurement(rep.clean_accuracy, cra, float(rep.lipschitz_upper), rep.median_radius, report=rep)

    return evaluate
