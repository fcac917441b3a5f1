"""speccert: certify how robust a trained classifier is (sound L2 Lipschitz bounds, certified radii),
and fine-tune it until a certificate holds.

    >>> import speccert
    >>> g = speccert.load("models/cnn.onnx")                      # doctest: +SKIP
    >>> report = speccert.certify(g, "models/data/fashion_mnist_test_1k.npz", eps=[0.25, 0.5])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Heavy modules (torch, onnx) load on first use, so `speccert --version` stays fast.
_LAZY = {
    "load": ("speccert.importers", "load"),
    "Graph": ("speccert.ir", "Graph"),
    "layer_norms": ("speccert.norms", "layer_norms"),
    "lipschitz_bound": ("speccert.bounds", "lipschitz_bound"),
    "certify": ("speccert.bounds", "certify"),
    "CertifyOptions": ("speccert.bounds", "CertifyOptions"),
    "finetune": ("speccert.training", "finetune"),
}
# `speccert.gate` is a package (the CI gate workflow) whose module object is callable, so
# `speccert.gate(model, policy)` works both before and after `import speccert.gate`.
_LAZY_MODULES = {"gate": "speccert.gate"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(_LAZY_MODULES[name])
    raise AttributeError(f"module 'speccert' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY, *_LAZY_MODULES]
