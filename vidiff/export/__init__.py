"""vidiff.export: ONNX export of the UNet step, the VAE decoder and the image encoder, and an onnxruntime
runner that samples through the same pipeline (imports networks, autoencoders, pipelines; the CLI uses it)."""

from vidiff.export.onnx import MANIFEST, ONNX_TARGETS, OPSET, export_onnx, onnx_modules
from vidiff.export.runner import OrtGraph, OrtImageEncoder, OrtUNet, onnx_pipeline, read_manifest

__all__ = ["MANIFEST", "ONNX_TARGETS", "OPSET", "OrtGraph", "OrtImageEncoder", "OrtUNet", "export_onnx",
           "onnx_modules", "onnx_pipeline", "read_manifest"]
