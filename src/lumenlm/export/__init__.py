"""Export lumenlm models to other ecosystems and import from them.

`export_hf`: Hugging Face transformers directories (GPT-2, Llama, or lumenlm's own
remote code); `export_gguf`: GGUF files for llama.cpp; `import_hf`: a local
transformers checkpoint (GPT-2 or Llama family) into a lumenlm model directory.
"""

from lumenlm.export.hf import export_hf, hf_architecture, stock_architecture

__all__ = ["export_hf", "hf_architecture", "stock_architecture"]
