"""Export to the Hugging Face transformers layout.

GPT-2 style models (learned positions, LayerNorm, GELU, biased linears, tied)
become `GPT2LMHeadModel`; Llama style models (RoPE, RMSNorm, SwiGLU, any GQA)
become `LlamaForCausalLM`. Every other combination (e.g. Lumiere's RMSNorm + SwiGLU +
learned positions, or a post-norm model) has no stock transformers class: it is
exported with its own model code (`remote_code/`, torch + transformers only) named in
config.json's `auto_map`, and loads with `trust_remote_code=True`.

The directory is written by hand (config.json, model.safetensors, tokenizer files with
the chat template, the model card as README.md) so transformers is not needed to export,
only to load. Loading with `AutoModelForCausalLM.from_pretrained(out)` reproduces our
logits (tested to < 1e-4 in fp32).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lumenlm.config import ModelConfig
from lumenlm.data.chat_template import ChatTemplate
from lumenlm.errors import ConfigError, LumenError
from lumenlm.export.hf_tokenizer import write_tokenizer_files
from lumenlm.export.outputs import (
    check_out_path,
    check_tokenizer,
    default_tokenizer,
    model_card,
    ordinary_permissions,
)
from lumenlm.fsutil import replace_dir
from lumenlm.model import GPT
from lumenlm.modelio import make_temp_dir, model_state_dict, unwrap_model

GPT2 = "GPT2LMHeadModel"
LLAMA = "LlamaForCausalLM"
REMOTE = "LumenLMForCausalLM"
"""lumenlm's own model code shipped in the export (`trust_remote_code=True`)."""

_MODEL_TYPES = {GPT2: "gpt2", LLAMA: "llama", REMOTE: "lumenlm"}
REMOTE_CODE = Path(__file__).parent / "remote_code"
REMOTE_FILES = ("configuration_lumenlm.py", "modeling_lumenlm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_lumenlm.LumenLMConfig",
    "AutoModelForCausalLM": "modeling_lumenlm.LumenLMForCausalLM",
}

StateDict = dict[str, torch.Tensor]
Converted = tuple[dict[str, Any], StateDict]
"""An architecture's config.json and its weights under transformers' names."""


def stock_architecture(cfg: ModelConfig) -> str:
    """The built-in transformers class that holds `cfg` exactly (GPT-2 or Llama), or raise
    LumenError naming what each one needs that `cfg` lacks."""
    problems_gpt2 = gpt2_problems(cfg)
    if not problems_gpt2:
        return GPT2
    problems_llama = llama_problems(cfg)
    if not problems_llama:
        return LLAMA
    raise LumenError(
        "no built-in Hugging Face architecture holds this model exactly: "
        f"GPT-2 needs {problems_gpt2[0]}; Llama needs {problems_llama[0]}"
    )


def hf_architecture(cfg: ModelConfig) -> str:
    """The class an export of `cfg` loads as: GPT-2, Llama, or lumenlm's remote code."""
    try:
        return stock_architecture(cfg)
    except LumenError:
        return REMOTE


def gpt2_problems(cfg: ModelConfig) -> list[str]:
    """What GPT-2 (transformers' class, llama.cpp's gpt2) needs that `cfg` lacks; [] = fits."""
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


def llama_problems(cfg: ModelConfig) -> list[str]:
    """What Llama (transformers' class, llama.cpp's llama) needs that `cfg` lacks; [] = fits."""
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


def _remote_weights(cfg: ModelConfig, sd: StateDict) -> Converted:
    """lumenlm's own names and layout: the remote code is our model written out again."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("tie_embeddings", "init")}
    fields.pop("ignore_index")
    config = _hf_config(REMOTE, cfg, fields)
    config["auto_map"] = dict(AUTO_MAP)
    return config, dict(sd)


def hf_checkpoint(model: torch.nn.Module) -> tuple[str, dict[str, Any], StateDict]:
    """(architecture, config.json, weights under its names) of `model`, in memory."""
    inner: GPT = unwrap_model(model)  # type: ignore[assignment]
    cfg = inner.config
    arch = hf_architecture(cfg)
    sd = model_state_dict(inner)
    convert = {GPT2: _gpt2_weights, LLAMA: _llama_weights, REMOTE: _remote_weights}[arch]
    config, weights = convert(cfg, sd)
    config["torch_dtype"] = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    return arch, config, weights


def _card(model: GPT, arch: str) -> str:
    """The model's own card (`model_card`: a run's is the one `lumenlm.train.card` wrote),
    else a short one; front matter so the Hub knows the library and the task."""
    text = model_card(model)
    if text is None:
        c = model.config
        text = (
            f"# lumenlm model\n\nA decoder-only Transformer trained with lumenlm: {c.n_layers} "
            f"layers, d_model {c.d_model}, {c.n_heads} heads ({c.n_kv_heads} KV), "
            f"{c.positions} positions, {c.norm}, {c.activation}, context {c.context_length}, "
            f"vocabulary {c.vocab_size}; {model.num_parameters():,} parameters.\n"
        )
    if text.startswith("---\n"):
        return text
    tags = "  - lumenlm\n" + ("  - custom_code\n" if arch == REMOTE else "")
    head = "library_name: transformers\npipeline_tag: text-generation\n"
    return f"---\n{head}tags:\n{tags}---\n\n{text}"


def export_hf(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write `model` as a transformers checkpoint directory (atomically) and return it.

    `tokenizer_path` defaults to the tokenizer.json of the directory the model was
    loaded from, when there is one; the chat template is the model's (config.json
    "chat", else the default). An existing `out_dir` is replaced only when it is empty
    or with `force`, and never when it is the source. Nothing is left behind on failure.
    """
    from safetensors.torch import save

    inner: GPT = unwrap_model(model)  # type: ignore[assignment]
    arch, config, weights = hf_checkpoint(inner)
    tok = default_tokenizer(inner, tokenizer_path)
    if tok is not None:
        check_tokenizer(tok, inner)
    try:
        template = ChatTemplate.from_meta(inner.meta)
    except ValueError as exc:
        raise ConfigError(f'{inner.model_dir}/config.json: {exc}; fix its "chat"') from None
    out = Path(out_dir)
    check_out_path(out, inner.model_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        blob = save({k: v.contiguous() for k, v in weights.items()}, metadata={"format": "pt"})
        (tmp / "model.safetensors").write_bytes(blob)
        if template != ChatTemplate():
            config["lumenlm_chat"] = template.to_dict()  # for `lumenlm import`
        if tok is not None:
            config.update(write_tokenizer_files(tok, tmp, inner.config.context_length, template))
        if arch == REMOTE:
            for name in REMOTE_FILES:
                shutil.copyfile(REMOTE_CODE / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {
            k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (tmp / "README.md").write_text(_card(inner, arch), encoding="utf-8")
        ordinary_permissions(tmp)
        replace_dir(tmp, out, out.with_name(f".{out.name}.old.{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
