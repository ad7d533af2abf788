"""Export lumenlm models to other ecosystems (Hugging Face transformers)."""

from lumenlm.export.hf import export_hf, hf_architecture

__all__ = ["export_hf", "hf_architecture"]
