"""The tokenizer files of a Hugging Face export, with the model's chat template.

`tokenizer.json` is copied unchanged (it is already the `tokenizers` format that
`PreTrainedTokenizerFast` reads: byte-level BPE, no normalizer, no post-processor, so
`AutoTokenizer` encodes the same ids and adds no BOS). `tokenizer_config.json` names the
special tokens and carries the model's `ChatTemplate` as a Jinja `chat_template`, so
`apply_chat_template` and servers such as vLLM chat without extra flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.tokenizer import EOT, PAD
from lumenlm.export.chat_jinja import to_jinja


def special_tokens(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    """Special token text -> id of a tokenizer.json document."""
    added = tokenizer_json.get("added_tokens", [])
    return {t["content"]: t["id"] for t in added if t.get("special")}


def end_of_turn_ids(specials: dict[str, int], template: ChatTemplate) -> list[int]:
    """Ids that end a reply: `<|endoftext|>` and each stop string that is a special token
    (a turns template's `<|end|>`), for generation_config's `eos_token_id`."""
    ids = [specials[EOT]] if EOT in specials else []
    ids += [specials[s] for s in template.stop if s in specials and specials[s] not in ids]
    return ids


def write_tokenizer_files(
    tokenizer_path: Path, dst: Path, context_length: int, template: ChatTemplate
) -> dict[str, Any]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dst`;
    return the ids config.json and generation_config.json record (bos/eos/pad)."""
    raw = tokenizer_path.read_bytes()
    (dst / "tokenizer.json").write_bytes(raw)
    specials = special_tokens(json.loads(raw))
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "chat_template": to_jinja(template),
    }
    ids: dict[str, Any] = {}
    if EOT in specials:
        tok_cfg.update(eos_token=EOT, bos_token=EOT)
        ids["bos_token_id"] = specials[EOT]
        eos = end_of_turn_ids(specials, template)
        ids["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if PAD in specials:
        tok_cfg["pad_token"] = PAD
        ids["pad_token_id"] = specials[PAD]
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (dst / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in tok_cfg.items() if k.endswith("_token")}, indent=2) + "\n"
    )
    return ids
