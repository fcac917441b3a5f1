"""The stopping rule's measuring instrument: the certifier, run on the validation data.

An `Evaluator` is any callable `graph -> Measurement`. `certifier_evaluator` wraps
`speccert.certify` (sound upper bounds only: the measurement's certified accuracies and Lipschitz
bound are the certifier's, never a training-time estimate). Tests inject scripted evaluators to check
the stopping rule against known numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from speccert.bounds.options import CertifyOptions
from speccert.data import Dataset
from speccert.ir.graph import Graph
from speccert.training.targets import Measurement

Evaluator = Callable[[Graph], Measurement]
# The stopping rule measures with the tightest certificate the certifier has (second order is used
# where the network is smooth, reported as not applicable elsewhere) and needs no empirical lower bound.
# Every other setting is CertifyOptions' own default: one source for certify, gate, bench and here.
STOPPING_RULE_OPTIONS = CertifyOptions(second_order=True, lower_bound=False)


def certifier_evaluator(
    val: Dataset,
    eps: Sequence[float],
    device: str | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int | None = None,
    options: CertifyOptions = STOPPING_RULE_OPTIONS,
) -> Evaluator:
    """Measure a graph with speccert.certify(graph, val, eps, options) (the report rides along).

    `device` and `batch_size`, when given, replace those fields of `options` (the CLI's flags)."""
    eps_list = [float(e) for e in eps]
    changes = {k: v for k, v in (("device", device), ("batch_size", batch_size)) if v is not None}
    opts = options.replace(**changes)

    def evaluate(graph: Graph) -> Measurement:
        from speccert.bounds import certify

        rep = certify(graph, val, eps_list, opts, mean=mean, std=std)
        if opts.second_order:  # tried opportunistically, never asked for by the user: no "not used" note
            rep.notes[:] = [n for n in rep.notes if not n.startswith("second_order certificate not used")]
        cra = {e: float(rep.certified_accuracy(e)) for e in eps_list}
        return Measurement(rep.clean_accuracy, cra, float(rep.lipschitz_upper), rep.median_radius, report=rep)

    return evaluate
