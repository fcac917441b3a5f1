"""ATen-op converters for the PyTorch importer: one small function per core ATen op, registered in
`ATEN_OPS` by its overload name. Importing this package registers them all."""

from speccert.importers.aten_ops import activations, arithmetic, layers, pooling, shape, softmax
from speccert.importers.aten_ops.base import ATEN_OPS, ConvertContext, TensorValue, Unsupported, aten_op
from speccert.importers.aten_ops.walk import exported_to_graph

__all__ = [
    "ATEN_OPS", "ConvertContext", "TensorValue", "Unsupported", "activations", "arithmetic", "aten_op",
    "exported_to_graph", "layers", "pooling", "shape", "softmax",
]
