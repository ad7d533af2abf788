"""Export to GGUF, the single-file format of llama.cpp (and Ollama, LM Studio, ...).

Two of llama.cpp's architectures hold lumenlm models exactly: `llama` (RoPE, RMSNorm,
SwiGLU, any GQA: LumenBase) and `gpt2` (learned positions, LayerNorm with bias, GELU,
biased linears, tied: Librarian). The file is written with the `gguf` package from
PyPI (llama.cpp's own gguf-py) and its metadata follows what llama.cpp's
`convert_hf_to_gguf.py` writes for those architectures: `general.*`, the architecture
keys (context length, embedding and feed-forward widths, block and head counts, norm
epsilon, RoPE base and dimension), and the tokenizer:

- `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with every token, its type (normal,
  control for special tokens, unused for padding rows) and the merges;
- `tokenizer.ggml.pre = "gpt-2"`: lumenlm's pre-tokenizer is `tokenizers`'
  `ByteLevel(add_prefix_space=False)`, whose split regex is GPT-2's
  (`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`);
  llama.cpp maps the name "gpt-2" to exactly that split (LLAMA_VOCAB_PRE_TYPE_GPT2),
  with no prefix space and no normalization, as ours;
- BOS/EOS/EOT ids (`<|endoftext|>`; EOT is the template's end-of-turn special token when
  it has one), no BOS added (`add_bos_token = false`, as lumenlm never adds one);
- `tokenizer.chat_template`: the model's chat template as Jinja.

llama.cpp's `llama` graph applies RoPE to adjacent pairs (GPT-J style) while lumenlm and
transformers rotate halves, so Q and K rows are permuted as the converter does
(`_permute`); transformers' GGUF loader undoes it. Its `gpt2` graph always uses the tanh
GELU, so an exact-GELU model (Librarian's `activation = "gelu"`) runs with the tanh
approximation there: logits differ by about 1e-3 (see docs/EXPORT.md for the measured
tolerances); `gelu_tanh` models are exact.

Tensor types: f32; f16; q8_0 (blocks of 32 values with one f16 scale; a matrix whose
rows are not a multiple of 32 falls back to f16, as the converter does). Norm gains and
biases stay f32 in every type. Other architectures (Lumiere's learned positions with
RMSNorm, post-norm, an LM-head bias, ...) are refused with a one-line error naming what
GGUF lacks; export those with `--format hf`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lumenlm.config import ModelConfig
from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.tokenizer import EOT, PAD
from lumenlm.errors import ConfigError, LumenError
from lumenlm.export.chat_jinja import to_jinja
from lumenlm.export.hf import gpt2_problems, llama_problems
from lumenlm.export.hf_tokenizer import special_tokens
from lumenlm.export.outputs import (
    check_out_path,
    check_tokenizer,
    default_tokenizer,
    ordinary_permissions,
)
from lumenlm.model import GPT
from lumenlm.modelio import model_state_dict, unwrap_model

if TYPE_CHECKING:
    import gguf as gguf_lib

OUTTYPES = ("f32", "f16", "q8_0")
PRE_TOKENIZER = "gpt-2"
"""llama.cpp's name for the GPT-2 split regex, which is lumenlm's ByteLevel pre-tokenizer."""


def gguf_architecture(cfg: ModelConfig) -> str:
    """ "llama" or "gpt2", or raise LumenError naming what each of them needs."""
    gpt2, llama = gpt2_problems(cfg), llama_problems(cfg)
    if not gpt2:
        return "gpt2"
    if not llama:
        return "llama"
    raise LumenError(
        f"GGUF has no architecture for this model: llama.cpp's llama needs {llama[0]}, its "
        f"gpt2 needs {gpt2[0]}; export it with --format hf instead"
    )


def _permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Q or K projection from rotate-half to llama.cpp's adjacent-pair order."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _llama_tensors(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["final_norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    heads = {"q": cfg.n_heads, "k": cfg.n_kv_heads}
    names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}
    for i in range(cfg.n_layers):
        p, b = f"blocks.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = sd[p + "attn_norm.weight"]
        out[b + "ffn_norm.weight"] = sd[p + "mlp_norm.weight"]
        for n, gname in names.items():
            for kind in ("weight", "bias") if cfg.attn_bias else ("weight",):
                t = sd[p + f"attn.{n}_proj.{kind}"]
                out[b + f"{gname}.{kind}"] = _permute(t, heads[n]) if n in heads else t  # type: ignore[arg-type]
        for n in ("gate", "up", "down"):
            for kind in ("weight", "bias") if cfg.mlp_bias else ("weight",):
                out[b + f"ffn_{n}.{kind}"] = sd[p + f"mlp.{n}_proj.{kind}"]
    return out


def _gpt2_tensors(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "token_embd.weight": sd["tok_emb.weight"],
        "position_embd.weight": sd["pos_emb.weight"],
        "output_norm.weight": sd["final_norm.weight"],
        "output_norm.bias": sd["final_norm.bias"],
    }
    for i in range(cfg.n_layers):
        p, b = f"blocks.{i}.", f"blk.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn_norm.{kind}"] = sd[p + f"attn_norm.{kind}"]
            out[b + f"attn_qkv.{kind}"] = torch.cat(
                [sd[p + f"attn.{n}_proj.{kind}"] for n in "qkv"]
            )
            out[b + f"attn_output.{kind}"] = sd[p + f"attn.o_proj.{kind}"]
            out[b + f"ffn_norm.{kind}"] = sd[p + f"mlp_norm.{kind}"]
            out[b + f"ffn_up.{kind}"] = sd[p + f"mlp.up_proj.{kind}"]
            out[b + f"ffn_down.{kind}"] = sd[p + f"mlp.down_proj.{kind}"]
    return out


def _add_hparams(w: gguf_lib.GGUFWriter, arch: str, cfg: ModelConfig) -> None:
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_block_count(cfg.n_layers)
    w.add_head_count(cfg.n_heads)
    if arch == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
        return
    w.add_head_count_kv(cfg.n_kv_heads)  # type: ignore[arg-type]
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.d_head)  # type: ignore[arg-type]
    if cfg.d_head * cfg.n_heads != cfg.d_model:  # type: ignore[operator]
        w.add_key_length(cfg.d_head)  # type: ignore[arg-type]
        w.add_value_length(cfg.d_value)  # type: ignore[arg-type]


def _add_tokenizer(
    w: gguf_lib.GGUFWriter, gguf: Any, doc: dict[str, Any], vocab_size: int, tpl: ChatTemplate
) -> None:
    """tokenizer.ggml.* from a tokenizer.json document; rows past it are padding tokens."""
    model = doc.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(doc):
        raise LumenError("GGUF export needs a byte-level BPE tokenizer.json (lumenlm's kind)")
    specials = special_tokens(doc)
    added = {t["id"]: t for t in doc.get("added_tokens", [])}
    by_id = {i: tok for tok, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            special = i in added and added[i].get("special")
            normal = i not in added
            types.append(
                gguf.TokenType.NORMAL
                if normal
                else gguf.TokenType.CONTROL
                if special
                else gguf.TokenType.USER_DEFINED
            )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if EOT in specials:
        w.add_bos_token_id(specials[EOT])
        w.add_eos_token_id(specials[EOT])
        turn_end = [specials[s] for s in tpl.stop if s in specials]
        w.add_eot_token_id(turn_end[0] if turn_end else specials[EOT])
    if PAD in specials:
        w.add_pad_token_id(specials[PAD])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(to_jinja(tpl))


def _is_byte_level(doc: dict[str, Any]) -> bool:
    pre = doc.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(s.get("type") == "ByteLevel" for s in steps if isinstance(s, dict))


def _add_tensors(
    w: gguf_lib.GGUFWriter, gguf: Any, tensors: dict[str, torch.Tensor], outtype: str
) -> None:
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy()
        if data.ndim == 1 or outtype == "f32":
            w.add_tensor(name, data)
        elif outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
            w.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            w.add_tensor(name, data.astype(np.float16))


def export_gguf(
    model: torch.nn.Module,
    out_file: str | Path,
    outtype: str = "f32",
    tokenizer_path: str | Path | None = None,
    force: bool = False,
    name: str | None = None,
) -> Path:
    """Write `model` (Llama or GPT-2 family) as one GGUF file, atomically; return its path.

    `tokenizer_path` defaults to the model directory's tokenizer.json; GGUF needs one (the
    tokenizer is part of the file). An existing `out_file` is replaced only with `force`.
    """
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            "GGUF export needs the gguf package: pip install 'lumenlm[gguf]'"
        ) from None

    if outtype not in OUTTYPES:
        raise ConfigError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    inner: GPT = unwrap_model(model)  # type: ignore[assignment]
    cfg = inner.config
    arch = gguf_architecture(cfg)
    tok = default_tokenizer(inner, tokenizer_path)
    if tok is None:
        raise ConfigError("GGUF holds the tokenizer too: pass --tokenizer tokenizer.json")
    check_tokenizer(tok, inner)
    try:
        template = ChatTemplate.from_meta(inner.meta)
    except ValueError as exc:
        raise ConfigError(f'{inner.model_dir}/config.json: {exc}; fix its "chat"') from None
    out = Path(out_file)
    check_out_path(out, inner.model_dir, force)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as model.gguf")
    sd = model_state_dict(inner)
    tensors = (_gpt2_tensors if arch == "gpt2" else _llama_tensors)(cfg, sd)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or (inner.model_dir.name if inner.model_dir else "lumenlm"))
        ftype = {"f32": 0, "f16": 1, "q8_0": 7}[outtype]
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(w, arch, cfg)
        _add_tokenizer(
            w, gguf, json.loads(tok.read_text(encoding="utf-8")), cfg.vocab_size, template
        )
        _add_tensors(w, gguf, tensors, outtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        ordinary_permissions(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
