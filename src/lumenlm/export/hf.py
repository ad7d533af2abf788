"""Export to the Hugging Face transformers layout.

GPT-2 style models (learned positions, LayerNorm, GELU, biased linears, tied)
become `GPT2LMHeadModel`; Llama style models (RoPE, RMSNorm, SwiGLU, any GQA)
become `LlamaForCausalLM`. Other combinations (e.g. Lumiere's RMSNorm + SwiGLU +
learned positions) have no stock transformers class and are refused with a
one-line reason rather than exported wrongly.

The directory is written by hand (config.json, model.safetensors, tokenizer
files) so transformers is not needed to export, only to load. Loading with
`AutoModelForCausalLM.from_pretrained(out)` reproduces our logits (tested to
< 1e-4 in fp32).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lumenlm.config import ModelConfig
from lumenlm.data.download import sha256_file
from lumenlm.errors import LumenError, first_line
from lumenlm.fsutil import replace_dir
from lumenlm.model import GPT
from lumenlm.modelio import (
    check_tokenizer_fits,
    make_temp_dir,
    model_state_dict,
    tokenizer_fingerprint,
    unwrap_model,
)

GPT2 = "GPT2LMHeadModel"
LLAMA = "LlamaForCausalLM"

_MODEL_TYPES = {GPT2: "gpt2", LLAMA: "llama"}

StateDict = dict[str, torch.Tensor]
Converted = tuple[dict[str, Any], StateDict]
"""An architecture's config.json and its weights under transformers' names."""


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers class that can hold `cfg` exactly, or raise LumenError saying why not."""
    problems_gpt2 = _gpt2_problems(cfg)
    if not problems_gpt2:
        return GPT2
    problems_llama = _llama_problems(cfg)
    if not problems_llama:
        return LLAMA
    raise LumenError(
        "no Hugging Face architecture holds this model exactly: "
        f"GPT-2 needs {problems_gpt2[0]}; Llama needs {problems_llama[0]}"
    )


def _gpt2_problems(cfg: ModelConfig) -> list[str]:
    checks = [
        (cfg.positions == "learned", "learned positions"),
        (cfg.norm == "layernorm" and cfg.norm_bias, "LayerNorm with bias"),
        (cfg.activation in ("gelu", "gelu_tanh"), "a GELU MLP"),
        (cfg.attn_bias and cfg.mlp_bias, "biases on all linears"),
        (cfg.n_kv_heads == cfg.n_heads, "n_kv_heads == n_heads"),
        (
            cfg.d_head * cfg.n_heads == cfg.d_model and cfg.d_value == cfg.d_head,  # type: ignore[operator]
            "d_head = d_value = d_model / n_heads",
        ),
        (cfg.tie_embeddings and not cfg.lm_head_bias, "tied embeddings without lm_head bias"),
        (cfg.pre_norm, "pre-norm blocks"),
    ]
    return [need for ok, need in checks if not ok]


def _llama_problems(cfg: ModelConfig) -> list[str]:
    checks = [
        (cfg.positions == "rope", "RoPE positions"),
        (cfg.norm == "rmsnorm", "RMSNorm"),
        (cfg.activation == "swiglu", "a SwiGLU MLP"),
        (cfg.d_value == cfg.d_head, "d_value == d_head"),
        (not cfg.lm_head_bias, "no lm_head bias"),
        (cfg.pre_norm, "pre-norm blocks"),
    ]
    return [need for ok, need in checks if not ok]


def _hf_config(arch: str, cfg: ModelConfig, fields: dict[str, Any]) -> dict[str, Any]:
    """config.json for `arch`: the architecture's own `fields` inside what both share."""
    return {
        "architectures": [arch],
        "model_type": _MODEL_TYPES[arch],
        "vocab_size": cfg.vocab_size,
        **fields,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": None,  # the tokenizer's ids are added when it is exported too
        "eos_token_id": None,
        "use_cache": True,
    }


def _gpt2_weights(cfg: ModelConfig, sd: StateDict) -> Converted:
    out: StateDict = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["final_norm.weight"],
        "transformer.ln_f.bias": sd["final_norm.bias"],
    }
    for i in range(cfg.n_layers):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        # GPT-2's Conv1D stores weights as (in, out): transpose our (out, in) Linear weights.
        out[h + "ln_1.weight"] = sd[p + "attn_norm.weight"]
        out[h + "ln_1.bias"] = sd[p + "attn_norm.bias"]
        out[h + "attn.c_attn.weight"] = torch.cat(
            [sd[p + f"attn.{n}_proj.weight"] for n in "qkv"], dim=0
        ).t()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[p + f"attn.{n}_proj.bias"] for n in "qkv"])
        out[h + "attn.c_proj.weight"] = sd[p + "attn.o_proj.weight"].t()
        out[h + "attn.c_proj.bias"] = sd[p + "attn.o_proj.bias"]
        out[h + "ln_2.weight"] = sd[p + "mlp_norm.weight"]
        out[h + "ln_2.bias"] = sd[p + "mlp_norm.bias"]
        out[h + "mlp.c_fc.weight"] = sd[p + "mlp.up_proj.weight"].t()
        out[h + "mlp.c_fc.bias"] = sd[p + "mlp.up_proj.bias"]
        out[h + "mlp.c_proj.weight"] = sd[p + "mlp.down_proj.weight"].t()
        out[h + "mlp.c_proj.bias"] = sd[p + "mlp.down_proj.bias"]
    config = _hf_config(
        GPT2,
        cfg,
        {
            "n_positions": cfg.context_length,
            "n_ctx": cfg.context_length,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
            "resid_pdrop": cfg.resid_dropout,
            "embd_pdrop": cfg.embd_dropout,
            "attn_pdrop": cfg.attn_dropout,
            "layer_norm_epsilon": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        },
    )
    return config, out


def _llama_weights(cfg: ModelConfig, sd: StateDict) -> Converted:
    out: StateDict = {
        "model.embed_tokens.weight": sd["tok_emb.weight"],
        "model.norm.weight": sd["final_norm.weight"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        p, h = f"blocks.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = sd[p + "attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[p + "mlp_norm.weight"]
        for n in ("q", "k", "v", "o"):
            out[h + f"self_attn.{n}_proj.weight"] = sd[p + f"attn.{n}_proj.weight"]
            if cfg.attn_bias:
                out[h + f"self_attn.{n}_proj.bias"] = sd[p + f"attn.{n}_proj.bias"]
        for n in ("gate", "up", "down"):
            out[h + f"mlp.{n}_proj.weight"] = sd[p + f"mlp.{n}_proj.weight"]
            if cfg.mlp_bias:
                out[h + f"mlp.{n}_proj.bias"] = sd[p + f"mlp.{n}_proj.bias"]
    config = _hf_config(
        LLAMA,
        cfg,
        {
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.d_head,
            "max_position_embeddings": cfg.context_length,
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "hidden_act": "silu",
            "attention_bias": cfg.attn_bias,
            "attention_dropout": cfg.attn_dropout,
            "mlp_bias": cfg.mlp_bias,
            "initializer_range": cfg.init_std,
        },
    )
    return config, out


def _tokenizer_files(tokenizer_path: Path, dst: Path, context_length: int) -> dict[str, int]:
    """Copy tokenizer.json and write a tokenizer_config.json for PreTrainedTokenizerFast."""
    shutil.copy2(tokenizer_path, dst / "tokenizer.json")
    vocab = json.loads(tokenizer_path.read_text()).get("added_tokens", [])
    specials = {t["content"]: t["id"] for t in vocab if t.get("special")}
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    ids: dict[str, int] = {}
    if "<|endoftext|>" in specials:
        tok_cfg.update(eos_token="<|endoftext|>", bos_token="<|endoftext|>")
        ids["eos_token_id"] = ids["bos_token_id"] = specials["<|endoftext|>"]
    if "<|pad|>" in specials:
        tok_cfg["pad_token"] = "<|pad|>"
        ids["pad_token_id"] = specials["<|pad|>"]
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (dst / "special_tokens_map.json").write_text(
        json.dumps({k: v for k, v in tok_cfg.items() if k.endswith("_token")}, indent=2) + "\n"
    )
    return ids


def _check_tokenizer(path: Path, model: GPT) -> None:
    """The exported tokenizer must be readable and fit the model's vocabulary, as
    `modelio.load` requires of a model directory's own (`check_tokenizer_fits`)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise LumenError(f"--tokenizer {path}: no such file; give a tokenizer.json")
    try:
        size = Tokenizer.from_file(str(path)).get_vocab_size()
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise LumenError(
            f"--tokenizer {path}: not a valid tokenizer.json ({first_line(exc)})"
        ) from None
    saved_with = tokenizer_fingerprint(model) == sha256_file(path)
    check_tokenizer_fits(size, model.config.vocab_size, path, saved_with)


def _check_out_dir(out: Path, model_dir: Path | None, force: bool) -> None:
    """Never delete what is not ours: the source model, or a directory that is not an
    earlier Hugging Face export, is only replaced with `force`."""
    if not out.exists():
        return
    if model_dir is not None and out.resolve() == Path(model_dir).resolve():
        raise LumenError(f"--out {out} is the model's own directory; choose another directory")
    if not out.is_dir():
        raise LumenError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()) or force:
        return
    try:
        previous = json.loads((out / "config.json").read_text())
        is_hf_export = isinstance(previous, dict) and "architectures" in previous
    except (OSError, ValueError):
        is_hf_export = False
    if not is_hf_export:
        raise LumenError(
            f"--out {out} exists and is not an earlier Hugging Face export; "
            "choose an empty directory or pass --force to replace it"
        )


def export_hf(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write `model` as a transformers checkpoint directory (atomically) and return it.

    `tokenizer_path` defaults to the tokenizer.json of the directory the model was
    loaded from, when there is one. An existing `out_dir` is replaced only when it is
    empty or an earlier export (or with `force`), and never when it is the source.
    """
    from safetensors.torch import save_file

    inner: GPT = unwrap_model(model)  # type: ignore[assignment]
    cfg = inner.config
    arch = hf_architecture(cfg)
    sd = model_state_dict(inner)
    config, weights = (_gpt2_weights if arch == GPT2 else _llama_weights)(cfg, sd)
    config["torch_dtype"] = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    if tokenizer_path is None and inner.model_dir is not None:
        cand = inner.model_dir / "tokenizer.json"
        tokenizer_path = cand if cand.exists() else None

    if tokenizer_path is not None:
        _check_tokenizer(Path(tokenizer_path), inner)
    out = Path(out_dir)
    _check_out_dir(out, inner.model_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        save_file(
            {k: v.contiguous() for k, v in weights.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        if tokenizer_path is not None:
            config.update(_tokenizer_files(Path(tokenizer_path), tmp, cfg.context_length))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {
            k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        replace_dir(tmp, out, out.with_name(f".{out.name}.old.{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
