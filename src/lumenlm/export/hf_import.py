"""Import a local Hugging Face checkpoint (GPT-2 or Llama family) as a lumenlm model dir.

The reverse of `lumenlm.export.hf`: a transformers directory (config.json +
model.safetensors, or sharded safetensors with an index) of a `GPT2LMHeadModel`, a
`LlamaForCausalLM`, or an earlier lumenlm remote-code export becomes a lumenlm model
directory (`modelio.save_model`), so a downloaded GPT-2 small or TinyStories model can
be evaluated, inspected, fine-tuned, served and exported again. Weights keep their
dtype and values exactly, so export -> import -> export writes the same bytes.

A config field that lumenlm's model cannot reproduce (rope scaling, a sliding window,
parallel residuals, another activation, ...) is refused with a one-line error naming
the field, rather than imported into a model that computes something else. Weights are
read with safetensors only (no pickles: a `pytorch_model.bin` is refused).

The tokenizer comes along when it is a byte-level BPE that lumenlm's loader handles as
its own: `tokenizer.json` with a BPE model, a ByteLevel pre-tokenizer and decoder and no
normalizer (GPT-2's; copied unchanged), or GPT-2's `vocab.json` + `merges.txt` (built
into a tokenizer.json). SentencePiece-style tokenizers (Llama 2, TinyLlama: byte
fallback, a normalizer that adds "▁") are refused with the reason; pass
`tokenizer=False` (`--no-tokenizer`) to import the weights alone.
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
from lumenlm.errors import CheckpointError, ConfigError, first_line
from lumenlm.export.hf import GPT2, LLAMA, REMOTE
from lumenlm.export.outputs import check_out_path, ordinary_permissions
from lumenlm.fsutil import replace_dir
from lumenlm.model import GPT
from lumenlm.modelio import make_temp_dir, save_model

StateDict = dict[str, torch.Tensor]
SUPPORTED = (GPT2, LLAMA, REMOTE)
CHAT_KEY = "lumenlm_chat"
"""config.json key in which an export keeps a non-default lumenlm ChatTemplate."""

# Fields whose non-default value changes what the model computes, and which lumenlm's
# GPT has no switch for: (field, the values that are the default/harmless).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "rope_scaling": (None, {}),
    "sliding_window": (None,),
    "use_sliding_window": (None, False),
    "use_parallel_residual": (None, False),
    "parallel_attn": (None, False),
    "partial_rotary_factor": (None, 1, 1.0),
    "qk_layernorm": (None, False),
    "attn_logit_softcapping": (None,),
    "final_logit_softcapping": (None,),
    "logit_scale": (None, 1, 1.0),
    "scale_attn_by_inverse_layer_idx": (None, False),
    "scale_attn_weights": (None, True),
    "add_cross_attention": (None, False),
    "alibi": (None, False),
    "no_rope_layers": (None,),
}
_GPT2_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _refuse(field: str, value: Any) -> ConfigError:
    return ConfigError(
        f"config.json {field}={json.dumps(value)} is not supported by lumenlm's model; "
        "import a checkpoint without it"
    )


def _check_fields(doc: dict[str, Any]) -> None:
    for name, fine in _UNSUPPORTED.items():
        if name in doc and doc[name] not in fine:
            raise _refuse(name, doc[name])
    rope = doc.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
        raise _refuse("rope_parameters.rope_type", rope.get("rope_type"))
    if doc.get("pretraining_tp", 1) not in (1, None):
        raise _refuse("pretraining_tp", doc["pretraining_tp"])


def _architecture(doc: dict[str, Any], hf_dir: Path) -> str:
    archs = doc.get("architectures") or []
    arch = archs[0] if archs else {"gpt2": GPT2, "llama": LLAMA}.get(doc.get("model_type", ""))
    if arch not in SUPPORTED:
        raise ConfigError(
            f"{hf_dir}/config.json: architecture {arch or doc.get('model_type')!r} is not "
            f"supported; lumenlm imports {', '.join(SUPPORTED)} (use a checkpoint of one of "
            "those families)"
        )
    return arch


def _gpt2_config(doc: dict[str, Any]) -> ModelConfig:
    act = doc.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTS:
        raise _refuse("activation_function", act)
    d = doc["n_embd"]
    return ModelConfig(
        vocab_size=doc["vocab_size"],
        context_length=doc.get("n_positions", doc.get("n_ctx", 1024)),
        d_model=d,
        n_layers=doc["n_layer"],
        n_heads=doc["n_head"],
        d_ff=doc.get("n_inner") or 4 * d,
        norm="layernorm",
        norm_eps=doc.get("layer_norm_epsilon", 1e-5),
        activation=_GPT2_ACTS[act],  # type: ignore[arg-type]
        positions="learned",
        tie_embeddings=doc.get("tie_word_embeddings", True),
        embd_dropout=doc.get("embd_pdrop", 0.0),
        attn_dropout=doc.get("attn_pdrop", 0.0),
        resid_dropout=doc.get("resid_pdrop", 0.0),
        init_std=doc.get("initializer_range", 0.02),
    )


def _llama_config(doc: dict[str, Any]) -> ModelConfig:
    act = doc.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse("hidden_act", act)
    rope = doc.get("rope_parameters") or {}
    theta = rope.get("rope_theta", doc.get("rope_theta", 10000.0))
    n_heads = doc["num_attention_heads"]
    return ModelConfig(
        vocab_size=doc["vocab_size"],
        context_length=doc.get("max_position_embeddings", 2048),
        d_model=doc["hidden_size"],
        n_layers=doc["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=doc.get("num_key_value_heads") or n_heads,
        d_head=doc.get("head_dim") or doc["hidden_size"] // n_heads,
        d_ff=doc["intermediate_size"],
        norm="rmsnorm",
        norm_bias=False,
        norm_eps=doc.get("rms_norm_eps", 1e-6),
        activation="swiglu",
        positions="rope",
        rope_theta=float(theta),
        attn_bias=bool(doc.get("attention_bias", False)),
        mlp_bias=bool(doc.get("mlp_bias", False)),
        tie_embeddings=bool(doc.get("tie_word_embeddings", False)),
        attn_dropout=doc.get("attention_dropout", 0.0),
        init_std=doc.get("initializer_range", 0.02),
    )


def _remote_config(doc: dict[str, Any]) -> ModelConfig:
    names = set(ModelConfig.__dataclass_fields__) - {"tie_embeddings"}
    fields = {k: v for k, v in doc.items() if k in names}
    return ModelConfig.from_dict({**fields, "tie_embeddings": doc.get("tie_word_embeddings", True)})


def _read_weights(hf_dir: Path) -> StateDict:
    """All tensors of model.safetensors, or of the shards its index names."""
    from safetensors.torch import load_file

    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [hf_dir / s for s in shards]
    elif any(hf_dir.glob("*.bin")) or any(hf_dir.glob("*.pt")):
        raise CheckpointError(
            f"{hf_dir}: only pickled weights (pytorch_model.bin); lumenlm loads safetensors "
            "only: save the model with save_pretrained(..., safe_serialization=True) first"
        )
    else:
        raise CheckpointError(f"{hf_dir}: no model.safetensors; give a transformers checkpoint")
    out: StateDict = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises several kinds on a bad file
            raise CheckpointError(f"{f}: not a safetensors file ({first_line(exc)})") from None
    return out


def _take(sd: StateDict, name: str) -> torch.Tensor:
    if name not in sd:
        raise CheckpointError(
            f"model.safetensors has no {name}; the weights do not match config.json"
        )
    return sd.pop(name)


def _gpt2_weights(cfg: ModelConfig, raw: StateDict) -> StateDict:
    sd = {k.removeprefix("transformer."): v for k, v in raw.items()}
    for k in [k for k in sd if k.endswith((".attn.bias", ".attn.masked_bias"))]:
        if sd[k].ndim > 1:  # the causal-mask buffers of old checkpoints, not parameters
            del sd[k]
    d = cfg.d_model
    out: StateDict = {
        "tok_emb.weight": _take(sd, "wte.weight"),
        "pos_emb.weight": _take(sd, "wpe.weight"),
        "final_norm.weight": _take(sd, "ln_f.weight"),
        "final_norm.bias": _take(sd, "ln_f.bias"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _take(sd, "lm_head.weight")
    sd.pop("lm_head.weight", None)
    for i in range(cfg.n_layers):
        h, p = f"h.{i}.", f"blocks.{i}."
        out[p + "attn_norm.weight"] = _take(sd, h + "ln_1.weight")
        out[p + "attn_norm.bias"] = _take(sd, h + "ln_1.bias")
        w, b = _take(sd, h + "attn.c_attn.weight").t(), _take(sd, h + "attn.c_attn.bias")
        if w.shape[0] != 3 * d:
            raise CheckpointError(f"{h}attn.c_attn.weight has the wrong shape for n_embd={d}")
        for j, n in enumerate("qkv"):
            out[p + f"attn.{n}_proj.weight"] = w[j * d : (j + 1) * d]
            out[p + f"attn.{n}_proj.bias"] = b[j * d : (j + 1) * d]
        out[p + "attn.o_proj.weight"] = _take(sd, h + "attn.c_proj.weight").t()
        out[p + "attn.o_proj.bias"] = _take(sd, h + "attn.c_proj.bias")
        out[p + "mlp_norm.weight"] = _take(sd, h + "ln_2.weight")
        out[p + "mlp_norm.bias"] = _take(sd, h + "ln_2.bias")
        out[p + "mlp.up_proj.weight"] = _take(sd, h + "mlp.c_fc.weight").t()
        out[p + "mlp.up_proj.bias"] = _take(sd, h + "mlp.c_fc.bias")
        out[p + "mlp.down_proj.weight"] = _take(sd, h + "mlp.c_proj.weight").t()
        out[p + "mlp.down_proj.bias"] = _take(sd, h + "mlp.c_proj.bias")
    _no_leftovers(sd)
    return out


def _llama_weights(cfg: ModelConfig, raw: StateDict) -> StateDict:
    sd = {k: v for k, v in raw.items() if not k.endswith("rotary_emb.inv_freq")}
    out: StateDict = {
        "tok_emb.weight": _take(sd, "model.embed_tokens.weight"),
        "final_norm.weight": _take(sd, "model.norm.weight"),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _take(sd, "lm_head.weight")
    sd.pop("lm_head.weight", None)
    for i in range(cfg.n_layers):
        h, p = f"model.layers.{i}.", f"blocks.{i}."
        out[p + "attn_norm.weight"] = _take(sd, h + "input_layernorm.weight")
        out[p + "mlp_norm.weight"] = _take(sd, h + "post_attention_layernorm.weight")
        for n in "qkvo":
            out[p + f"attn.{n}_proj.weight"] = _take(sd, h + f"self_attn.{n}_proj.weight")
            if cfg.attn_bias:
                out[p + f"attn.{n}_proj.bias"] = _take(sd, h + f"self_attn.{n}_proj.bias")
        for n in ("gate", "up", "down"):
            out[p + f"mlp.{n}_proj.weight"] = _take(sd, h + f"mlp.{n}_proj.weight")
            if cfg.mlp_bias:
                out[p + f"mlp.{n}_proj.bias"] = _take(sd, h + f"mlp.{n}_proj.bias")
    _no_leftovers(sd)
    return out


def _no_leftovers(sd: StateDict) -> None:
    if sd:
        names = sorted(sd)
        more = "..." if len(names) > 3 else ""
        raise CheckpointError(
            f"model.safetensors has tensors config.json does not explain ({', '.join(names[:3])}"
            f"{more}); the weights do not match config.json"
        )


def _build(cfg: ModelConfig, sd: StateDict) -> GPT:
    """A GPT holding `sd` exactly: in the checkpoint's dtype, shapes checked by name."""
    dtypes = {t.dtype for t in sd.values()}
    model = GPT(cfg)
    if len(dtypes) == 1 and next(iter(dtypes)).is_floating_point:
        model.to(next(iter(dtypes)))
    expected = model.state_dict()
    for name, t in sd.items():
        if name not in expected or tuple(t.shape) != tuple(expected[name].shape):
            want = tuple(expected[name].shape) if name in expected else "no such tensor"
            raise CheckpointError(
                f"model.safetensors: {name} has shape {tuple(t.shape)}, config.json implies "
                f"{want}; the weights do not match config.json"
            )
    missing = set(expected) - set(sd) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    if missing:
        raise CheckpointError(f"model.safetensors lacks {sorted(missing)[0]}")
    model.load_state_dict(sd, strict=False)
    return model.eval()


def tokenizer_refusal(doc: dict[str, Any]) -> str | None:
    """Why a tokenizer.json document is not a byte-level BPE lumenlm handles; None if it is."""
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        return f"its model is {model.get('type')}, not BPE"
    if model.get("byte_fallback"):
        return "it is a byte-fallback (SentencePiece-style) BPE, not byte-level"
    if doc.get("normalizer"):
        return f"it has a {doc['normalizer'].get('type')} normalizer (lumenlm's have none)"
    pre = doc.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    levels = [s for s in steps if isinstance(s, dict) and s.get("type") == "ByteLevel"]
    if not levels:
        return "its pre-tokenizer is not ByteLevel"
    if any(s.get("add_prefix_space") for s in levels):
        return "its ByteLevel pre-tokenizer adds a prefix space (decode would not invert encode)"
    if (doc.get("decoder") or {}).get("type") != "ByteLevel":
        return "its decoder is not ByteLevel"
    return None


def _tokenizer_text(hf_dir: Path) -> str | None:
    """tokenizer.json text for the import (or None when the dir has no tokenizer)."""
    path = hf_dir / "tokenizer.json"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        why = tokenizer_refusal(json.loads(text))
        if why:
            raise ConfigError(
                f"{path}: cannot import this tokenizer: {why}; pass --no-tokenizer to import "
                "the weights alone"
            )
        return text
    vocab, merges = hf_dir / "vocab.json", hf_dir / "merges.txt"
    if vocab.is_file() and merges.is_file():
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if "<|endoftext|>" in json.loads(vocab.read_text(encoding="utf-8")):
            tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
        return tok.to_str(pretty=False)
    return None


def _chat(hf_dir: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The lumenlm chat template an earlier export kept, as config.json's "chat"."""
    chat = doc.get(CHAT_KEY)
    if chat is None:
        return None
    try:
        ChatTemplate.from_meta({"chat": chat})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{hf_dir}/config.json {CHAT_KEY}: {first_line(exc)}") from None
    return chat


def import_hf(
    hf_dir: str | Path, out_dir: str | Path, tokenizer: bool = True, force: bool = False
) -> Path:
    """Convert the transformers checkpoint in `hf_dir` into lumenlm model dir `out_dir`.

    Atomic: `out_dir` appears complete or not at all; an existing one is replaced only
    with `force`. Returns `out_dir`.
    """
    src = Path(hf_dir)
    try:
        doc = json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{src}: no config.json; give a transformers checkpoint directory"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{src}/config.json: unreadable ({first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{src}/config.json: not a JSON object")
    arch = _architecture(doc, src)
    _check_fields(doc)
    try:
        cfg = {GPT2: _gpt2_config, LLAMA: _llama_config, REMOTE: _remote_config}[arch](doc)
    except KeyError as exc:
        raise ConfigError(f"{src}/config.json: {arch} needs the field {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{src}/config.json: {first_line(exc)}") from None
    raw = _read_weights(src)
    sd = (
        _gpt2_weights(cfg, raw)
        if arch == GPT2
        else _llama_weights(cfg, raw)
        if arch == LLAMA
        else raw
    )
    model = _build(cfg, sd)
    tok_text = _tokenizer_text(src) if tokenizer else None
    if tok_text is not None:
        from tokenizers import Tokenizer

        n = Tokenizer.from_str(tok_text).get_vocab_size()
        if n > cfg.vocab_size:
            raise ConfigError(
                f"{src}: the tokenizer has {n} tokens but vocab_size is {cfg.vocab_size}; "
                "pass --no-tokenizer or fix the checkpoint"
            )
    out = Path(out_dir)
    check_out_path(out, src, force)
    extra: dict[str, Any] = {"imported_from": {"path": str(src.resolve()), "architecture": arch}}
    chat = _chat(src, doc)
    if chat is not None:
        extra["chat"] = chat
    tmp = make_temp_dir(out)
    try:
        tok_path = None
        if tok_text is not None:
            tok_path = tmp / ".tokenizer.import.json"
            tok_path.write_text(tok_text, encoding="utf-8")
        save_model(model, tmp, tokenizer_path=tok_path, extra=extra)
        if tok_path is not None:
            tok_path.unlink()
        card = src / "README.md"
        if card.is_file():
            shutil.copyfile(card, tmp / "README.md")
        ordinary_permissions(tmp)
        replace_dir(tmp, out, out.with_name(f".{out.name}.old.{os.getpid()}"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
