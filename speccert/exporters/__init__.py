"""Exporters: write the graph IR back to a file format (ONNX), e.g. after fine-tuning."""

from speccert.exporters.onnx_export import graph_to_onnx, save_onnx

__all__ = ["graph_to_onnx", "save_onnx"]
