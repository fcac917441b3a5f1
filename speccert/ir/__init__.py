"""The graph IR (shared/DESIGN.md): operators, graph, and function-preserving passes."""

from speccert.ir.graph import INPUT, Graph, GraphModule, ModelSource, Node, file_sha256
from speccert.ir.ops import (
    ALL_OPS,
    Activation,
    Add,
    Affine,
    AvgPool,
    BatchNorm,
    Concat,
    Conv,
    ConvTranspose,
    GlobalAvgPool,
    Linear,
    MaxPool,
    Op,
    Opaque,
    Pad,
    Reshape,
    Softmax,
    Transpose,
)
from speccert.ir.passes import fold_linear

__all__ = [
    "ALL_OPS", "INPUT", "Activation", "Add", "Affine", "AvgPool", "BatchNorm", "Concat", "Conv",
    "ConvTranspose", "GlobalAvgPool", "Graph", "GraphModule", "Linear", "MaxPool", "ModelSource", "Node",
    "Op", "Opaque", "Pad", "Reshape", "Softmax", "Transpose", "file_sha256", "fold_linear",
]
