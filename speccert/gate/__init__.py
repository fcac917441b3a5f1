"""The CI gate: certify a model under a policy and decide pass/fail (a workflow over the certifier).

Layer: above bounds/, report/ and training/, below cli/. Modules, bottom to top:

- `values.py`   checked reads of policy values (each error names its key);
- `metrics/`    the registry of gate metrics, one module (one decorated reader) per metric;
- `rules.py`    a rule = metric + bound + threshold, evaluated over a certify report dict;
- `policy.py`   the policy file (speccert.toml / [tool.speccert]); `options.py` command-line overrides;
- `baseline.py` no_regression: a baseline report, checked by `baseline_check.py` (the gate fails
                closed on a value it cannot compare with), compared with this run;
- `workflow.py` `gate()`: load, certify, evaluate; `GateResult` and its JSON (gate.schema.json);
- `outputs/`    the registry of output formats, one module per format (`junit.py`, `markdown.py`).

    >>> import speccert
    >>> speccert.gate("models/mlp.onnx", "speccert.toml").passed        # doctest: +SKIP

`speccert.gate` is this package and is also callable as `gate.workflow.gate` (kept from when the gate
was one function, so `speccert.gate(model, policy)` still works once the package is imported).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speccert.gate.workflow import GateResult


class _CallableGate(types.ModuleType):
    """The package module, callable: `speccert.gate(...)` is `speccert.gate.workflow.gate(...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> GateResult:
        from speccert.gate.workflow import gate

        return gate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableGate
