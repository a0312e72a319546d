"""Export our LLaVA checkpoints to transformers' native LLaVA / LLaVA-NeXT classes (`python -m llava.export`)."""
from llava.export.hf_native import ExportError, export_to_hf

__all__ = ["ExportError", "export_to_hf"]
