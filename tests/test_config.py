"""ModelConfig validation and JSON/YAML round trips."""

from __future__ import annotations

from dataclasses import fields
from typing import get_args, get_type_hints

import pytest

from lumenlm.config import ModelConfig, TrainConfig, apply_overrides, load_config, save_config
from lumenlm.errors import ConfigError
from lumenlm.presets import get_preset, preset_names


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("name", preset_names())
def test_round_trip(tmp_path, name: str, suffix: str) -> None:
    preset = get_preset(name)
    path = tmp_path / f"model{suffix}"
    save_config(preset.model, path)
    assert load_config(ModelConfig, path) == preset.model
    save_config(preset.train, tmp_path / f"train{suffix}")
    assert load_config(TrainConfig, tmp_path / f"train{suffix}") == preset.train


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_model": 100, "n_heads": 3}, "does not divide d_model"),
        ({"n_heads": 4, "n_kv_heads": 3, "d_model": 64}, "must divide n_heads"),
        ({"norm": "batchnorm"}, "norm='batchnorm' is not one of"),
        ({"activation": "relu"}, "activation"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"positions": "rope", "d_head": 33, "d_model": 64, "n_heads": 2}, "even d_head"),
        ({"attn_dropout": 1.5}, "attn_dropout"),
    ],
)
def test_validation_errors_are_one_line(kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ModelConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_key(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"d_modle": 64}')
    with pytest.raises(ConfigError, match="unknown ModelConfig key.*d_modle"):
        load_config(ModelConfig, path)


def test_bad_json_names_file(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(ModelConfig, path)


def test_overrides() -> None:
    cfg = apply_overrides(get_preset("tiny").model, {"d_model": 128, "n_heads": 8})
    assert cfg.d_model == 128 and cfg.d_head == 16
    cfg = apply_overrides(get_preset("tiny-gpt2").model, {"d_model": 256})
    assert (cfg.d_head, cfg.d_value, cfg.n_kv_heads) == (64, 64, 4)
    cfg = get_preset("tiny-gpt2").model.replace(n_heads=8)
    assert (cfg.d_head, cfg.n_kv_heads) == (8, 8)
    lumiere = get_preset("lumiere-1m").model.replace(d_model=256)
    assert lumiere.d_head == 64  # was derived (128 / 4): follows d_model
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(cfg, {"dmodel": 1})


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ConfigError, match="librarian-1.3m"):
        get_preset("gpt5")


def test_distinct_dkey_dvalue() -> None:
    cfg = ModelConfig(
        d_model=64, n_heads=4, d_head=8, d_value=24, vocab_size=50, context_length=16, d_ff=32
    )
    assert (cfg.d_head, cfg.d_value) == (8, 24)


def test_wrong_scalar_types_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="d_model must be int, got '64'"):
        ModelConfig(d_model="64")
    with pytest.raises(ConfigError, match="tie_embeddings must be bool"):
        ModelConfig(tie_embeddings="yes")
    with pytest.raises(ConfigError, match="train.lr must be float"):
        TrainConfig(lr="fast")
    with pytest.raises(ConfigError, match="train.lr must be a positive finite"):
        TrainConfig(lr=float("nan"))


def test_parse_value_numbers() -> None:
    from lumenlm.config import parse_value

    assert parse_value("2e-4") == 2e-4 and parse_value("16") == 16 and parse_value("x") == "x"


# -- choice lists, named once ----------------------------------------------------------

CHOICE_FIELDS = [
    (ModelConfig, "norm", "Norm"),
    (ModelConfig, "activation", "Activation"),
    (ModelConfig, "positions", "Positions"),
    (ModelConfig, "init", "Init"),
    (TrainConfig, "schedule", "Schedule"),
    (TrainConfig, "precision", "Precision"),
    (TrainConfig, "strategy", "Strategy"),
    (TrainConfig, "early_stopping_on", "EarlyStoppingOn"),
    (TrainConfig, "optimizer", "OptimizerName"),
]


@pytest.mark.parametrize("cls,name,literal", CHOICE_FIELDS)
def test_choice_fields_use_the_named_literal(cls, name: str, literal: str) -> None:
    import lumenlm.config as C

    assert get_type_hints(cls)[name] == getattr(C, literal)


def test_every_string_choice_field_is_a_named_literal() -> None:
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if isinstance(f.default, str):
                assert (cls, f.name) in {(c, n) for c, n, _ in CHOICE_FIELDS}, f.name


@pytest.mark.parametrize("cls,name,literal", CHOICE_FIELDS)
def test_bad_choice_is_one_line_listing_the_choices(cls, name: str, literal: str) -> None:
    import lumenlm.config as C

    with pytest.raises(ConfigError) as info:
        apply_overrides(cls(), {name: "nope"})
    message = str(info.value)
    assert "\n" not in message and "'nope' is not one of" in message
    for choice in get_args(getattr(C, literal)):
        assert repr(choice) in message


def test_bad_schedule_via_set() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^train\.schedule='cosin' is not one of 'cosine', 'constant', 'linear', 'wsd'$",
    ):
        apply_overrides(TrainConfig(), {"schedule": "cosin"}, prefix="train.")


def test_precision_lists_derive_from_dtype() -> None:
    from lumenlm.cli.generate import DTYPE_CHOICES
    from lumenlm.config import Dtype, Precision

    assert get_args(Precision) == ("auto", *get_args(Dtype)) == DTYPE_CHOICES


# -- field documentation -----------------------------------------------------------------


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_every_field_has_a_docstring(cls) -> None:
    from lumenlm.config.docs import field_docs

    docs = field_docs(cls)
    assert [d.name for d in docs] == [f.name for f in fields(cls)]
    missing = [d.name for d in docs if not d.doc.strip()]
    assert not missing, f"{cls.__name__} fields without an attribute docstring: {missing}"
    for d in docs:
        assert d.summary and d.summary[-1] in ".)", d.name
        for choice in d.choices:  # a choice field explains each of its choices
            assert choice in d.doc, (d.name, choice)


def test_field_docs_reads_name_type_default() -> None:
    from lumenlm.config.docs import attribute_docstrings, field_docs

    by_name = {d.name: d for d in field_docs(TrainConfig)}
    assert by_name["max_steps"].type == "int | None" and by_name["max_steps"].default is None
    assert "Schedule length" in by_name["max_steps"].doc
    assert by_name["schedule"].choices == ("cosine", "constant", "linear", "wsd")
    assert by_name["lr"].default == 3e-4 and by_name["lr"].choices == ()

    class Plain:  # a field with no docstring is simply absent
        a: int = 1
        b: int = 2
        """B."""

    assert attribute_docstrings(Plain) == {"b": "B."}


def test_describe_set_keys_lists_every_key_once() -> None:
    from lumenlm.config.docs import describe_set_keys, field_docs

    text = describe_set_keys()
    assert max(map(len, text.splitlines())) <= 100
    names = [
        line.split()[0] for line in text.splitlines() if line.startswith("  ") and line[2] != " "
    ]
    assert names == [f.name for f in fields(ModelConfig)] + [f.name for f in fields(TrainConfig)]
    assert "model.KEY:" in text and "train.KEY:" in text
    assert field_docs(TrainConfig)[0].summary.split(".")[0] in text


def _show(capsys, *args: str) -> str:
    from lumenlm.cli import main

    assert main(["presets", "--show", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["librarian-1.3m", "lumenbase-128m"])
def test_presets_show_lists_every_key_with_its_doc(capsys, name: str) -> None:
    import dataclasses
    import re

    import yaml

    from lumenlm.config.docs import field_docs

    out = _show(capsys, name)
    preset = get_preset(name)
    doc = yaml.safe_load(out)  # the comments are YAML comments: the values still load
    assert doc["name"] == name and doc["dataset"] == preset.dataset
    assert doc["tokenizer"] == preset.tokenizer
    assert doc["model"] == dataclasses.asdict(preset.model)
    assert doc["train"] == dataclasses.asdict(preset.train)
    assert max(map(len, out.splitlines())) <= 100
    # Each key line carries its docstring as a comment, continued on comment-only lines.
    comments: dict[tuple[str, str], str] = {}
    section = key = None
    for line in out.splitlines():
        if m := re.match(r"^(\w+):", line):
            section, key = m.group(1), None
        elif m := re.match(r"^  (\w+): .*?  # (.*)$", line):
            key = m.group(1)
            comments[section, key] = m.group(2)
        elif (m := re.match(r"^ +# (.*)$", line)) and key is not None:
            comments[section, key] += " " + m.group(1)
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        for d in field_docs(cls):
            assert comments.get((section, d.name)) == d.doc, (section, d.name)


def test_presets_show_json_keeps_the_plain_values(capsys) -> None:
    import dataclasses
    import json

    out = json.loads(_show(capsys, "tiny", "--json"))
    preset = get_preset("tiny")
    assert set(out) == {"name", "model", "train", "dataset", "tokenizer"}
    assert out["train"] == dataclasses.asdict(preset.train)
