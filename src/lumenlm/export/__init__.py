"""Export lumenlm models to other ecosystems and import from them.

`export_hf`: Hugging Face transformers directories (GPT-2, Llama, or lumenlm's own
remote code); `export_gguf`: GGUF files for llama.cpp; `import_hf`: a local
transformers checkpoint (GPT-2 or Llama family) into a lumenlm model directory.
"""

from lumenlm.export.gguf import export_gguf, gguf_architecture
from lumenlm.export.hf import export_hf, hf_architecture, stock_architecture
from lumenlm.export.hf_import import import_hf

__all__ = [
    "export_gguf",
    "export_hf",
    "gguf_architecture",
    "hf_architecture",
    "import_hf",
    "stock_architecture",
]
