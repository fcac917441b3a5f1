"""Fine-tuning to a target certificate (shared/DESIGN.md, "Training").

- `PENALTIES` (speccert.training.penalties): one `nn.Module` per penalty, usable in any training loop;
- `finetune(...)`: train, certify on held-out data every epoch, stop when every target holds;
- `parse_target("cra@0.5>=0.70")`: the target grammar.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "finetune": ("speccert.training.finetune", "finetune"),
    "FinetuneResult": ("speccert.training.finetune", "FinetuneResult"),
    "parse_target": ("speccert.training.targets", "parse_target"),
    "Target": ("speccert.training.targets", "Target"),
    "PENALTIES": ("speccert.training.penalties", "PENALTIES"),
    "make_penalty": ("speccert.training.penalties", "make_penalty"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'speccert.training' has no attribute {name!r}")


__all__ = list(_LAZY)
