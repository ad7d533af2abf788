"""Model code copied into Hugging Face exports that need `trust_remote_code=True`.

The two modules here import only torch and transformers (never lumenlm), because an
export must load on a machine without lumenlm; `lumenlm.export.hf` copies them into the
export directory beside config.json.
"""
