"""The bad-input table: known bad inputs across the commands, and their one-line errors.

Each `Case` in `CASES` is a command line (placeholders: {data} a tiny prepared dataset,
{src} a small corpus, {model} a tiny model dir with a tokenizer, {here} the row's own
empty folder, which `setup(here, ws)` may fill) and a regex for its error line. Every row
runs through `lumenlm.cli.main` and must give a non-zero exit and exactly one stderr line
(`notice:` lines and prepare's `lumenlm: ` notes aside), `lumenlm <command>: error: ...`,
no traceback, the expected text, and advice (what to do). A row whose message has no
advice yet carries `todo="owner: ..."` and must still lack it (drop the todo on a fix).

The rows are the single source of docs/ERRORS.md; `test_errors_doc_is_current` fails when
the page differs from what they print. To add a row: append a `Case`, run this file, then
regenerate the page: `.venv/bin/python tests/test_bad_input.py --write` (`--show` prints
each row's stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bad_input_helpers import (
    DOC,
    REGENERATE,
    Case,
    Result,
    check,
    copy_src,
    data_file,
    meta_edit,
    render_doc,
    run_all,
    script,
    write,
)
from lumenlm.errors import DataError

P = "prepare text --source {src} --doc-sep eot --out {here}/out --no-progress"  # a good one
T = "train --preset tiny --data {data} --out {here}/runs --device cpu --no-progress"
TD = "train --preset tiny --data {here}/data --out {here}/runs --device cpu --no-progress"


def oov_id(split: str):  # type: ignore[no-untyped-def]
    """{here}/data: a copy of {data} with one id in `split`.bin past the vocabulary."""
    import json
    import shutil

    import numpy as np

    def setup(here: Path, ws) -> None:  # type: ignore[no-untyped-def]
        data = Path(shutil.copytree(ws.data, here / "data"))
        meta = json.loads((data / "meta.json").read_text())
        ids = np.memmap(data / f"{split}.bin", dtype=meta["dtype"], mode="r+")
        ids[len(ids) // 2] = meta["vocab_size"]
        ids.flush()

    return setup


CASES: list[Case] = [
    # -- lumenlm itself
    Case("nosuchcmd", "unknown command", r"invalid choice: 'nosuchcmd' \(choose from"),
    Case("", "no command", r"the following arguments are required: COMMAND"),
    # -- prepare: the dataset and the numeric flags
    Case(
        "prepare nosuchdataset --out {here}/out",
        "unknown dataset",
        r"unknown dataset 'nosuchdataset'; choose one of wikitext-2, .*, text",
    ),
    Case("prepare text", "--out missing", r"the following arguments are required: --out"),
    Case(
        f"{P} --vocab-size 99999999999",
        "vocab size far too large",
        r"--vocab-size 99999999999 is too large: at most 1048576 .*uint16.*uint32.*memory",
    ),
    Case(f"{P} --vocab-size 0", "vocab size zero", r"--vocab-size 0 is too small"),
    Case(f"{P} --vocab-size -8000", "vocab size negative", r"--vocab-size -8000 is too small"),
    Case(f"{P} --vocab-size 1.5", "vocab size not a whole number", r"invalid int value: '1.5'"),
    Case(
        f"{P} --vocab-size 70000 --dtype uint16",
        "vocab size beyond --dtype uint16",
        r"vocab size 70000 does not fit uint16 \(max 65536 ids\); use --dtype uint32",
    ),
    Case(f"{P} --dtype float64", "unknown --dtype", r"argument --dtype: invalid choice"),
    Case(f"{P} --min-frequency 0", "min frequency zero", r"--min-frequency must be from 1"),
    Case(f"{P} --fraction 0", "fraction zero", r"--fraction must be in \(0, 1\], got 0.0"),
    Case(f"{P} --fraction 1.5", "fraction above 1", r"--fraction must be in \(0, 1\], got 1.5"),
    Case(f"{P} --fraction nan", "fraction NaN", r"--fraction must be in \(0, 1\], got nan"),
    Case(f"{P} --val-ratio 1", "val ratio 1", r"--val-ratio must be a share in \[0, 1\)"),
    Case(f"{P} --test-ratio -0.1", "test ratio negative", r"--test-ratio must be a share"),
    Case(
        f"{P} --val-ratio 0.6 --test-ratio 0.5",
        "ratios adding up to 1 or more",
        r"--val-ratio \+ --test-ratio must be below 1 \(got 1.1\)",
    ),
    Case(f"{P} --seed -1", "seed negative", r"--seed must be a whole number from 0 to 2\^63-1"),
    Case(f"{P} --workers 0", "workers zero", r"--workers must be a whole number from 1 to 1024"),
    Case(f"{P} --workers 100000", "workers absurd", r"--workers must be .* got 100000"),
    Case(
        f"{P} --special-tokens '<|pad|>'",
        "special tokens without end-of-text",
        r"special tokens must include <\|endoftext\|>",
    ),
    Case(
        f"{P} --special-tokens '<|endoftext|>,<|pad|>,<|pad|>'",
        "special tokens repeated",
        r"special tokens repeat",
    ),
    # -- prepare: the text and the folders
    Case(
        "prepare text --source {here}/empty.txt --out {here}/out",
        "empty source file",
        r"empty.txt is empty",
        setup=write("empty.txt", ""),
    ),
    Case(
        "prepare text --source {here}/bad.txt --out {here}/out --no-progress",
        "source not UTF-8",
        r"bad.txt is not valid UTF-8 \(byte offset 3\)",
        setup=write("bad.txt", b"ok \xc3\x28 here\n"),
    ),
    Case(
        "prepare text --source {here}/bad.jsonl --out {here}/out --no-progress",
        "malformed JSONL source",
        r"bad.jsonl:2: malformed JSON",
        setup=write("bad.jsonl", '{"text": "a"}\n{"text": oops}\n'),
    ),
    Case(
        "prepare text --source {here}/nothing --out {here}/out",
        "source folder without text files",
        r"no .txt or .jsonl",
        setup=write("nothing/notes.md", "not text"),
    ),
    Case(
        f"{P}",
        "--out not empty",
        r"--out .*/out exists and is not empty; pass --force to replace it",
        setup=write("out/keep.txt", "precious"),
    ),
    Case(
        "prepare text --source {here}/corpus/stories.txt --out {here}/corpus --force",
        "--out holding the source",
        r"--out .*corpus is or contains --source .*; choose an output folder outside it",
        setup=copy_src,
    ),
    Case(
        "prepare text --source {here}/none --out {here}/out",
        "--source missing",
        r"--source .*none does not exist; pass an existing file or folder",
    ),
    Case(
        "prepare tinystories --out {here}/out --offline",
        "dataset not found offline",
        r"no local copy of tinystories and offline: put TinyStories-train.txt .* or pass --source",
    ),
    Case(
        f"{P} --tokenizer {{here}}/none.json",
        "--tokenizer missing",
        r"no tokenizer at .*none.json; pass a tokenizer.json file",
    ),
    Case(
        f"{P} --preset nope",
        "unknown preset",
        r"unknown preset 'nope'; use one of: librarian-1.3m",
    ),
    # -- a prepared dataset, hand-edited or damaged (read by train and eval)
    Case(
        TD,
        "meta.json dtype float64",
        r'field dtype is "float64", expected "uint16" or "uint32"; re-run `lumenlm prepare`',
        setup=meta_edit(dtype="float64"),
    ),
    Case(
        TD,
        "meta.json splits empty list",
        r"field splits is \[\], expected an object with train, val and test entries",
        setup=meta_edit(splits=[]),
    ),
    Case(
        TD,
        "meta.json vocab_size not a number",
        r'field vocab_size is "many", expected a whole number from 1 to 65536',
        setup=meta_edit(vocab_size="many"),
    ),
    Case(
        TD,
        "meta.json eot_id outside the vocabulary",
        r"field eot_id is 300, expected a token id from 0 to 299",
        setup=meta_edit(eot_id=300),
    ),
    Case(
        TD,
        "meta.json from a newer lumenlm",
        r"version 9 is newer than this lumenlm reads \(1\); upgrade lumenlm",
        setup=meta_edit(version=9),
    ),
    Case(
        TD,
        "meta.json not JSON",
        r"meta.json is not valid JSON \(.*\); run `lumenlm prepare` again",
        setup=data_file("meta.json", b'{"dtype": "uint16"'),
    ),
    Case(
        TD,
        "train.bin missing",
        r"train.bin is missing; run `lumenlm prepare` again",
        setup=data_file("train.bin", None),
    ),
    Case(
        TD,
        "train.bin truncated",
        r"train.bin has 3 bytes, which does not match meta.json",
        setup=data_file("train.bin", b"\x01\x02\x03"),
    ),
    Case(
        "train --preset tiny --data {here}/none --out {here}/runs --device cpu",
        "--data missing",
        r"none is not a prepared dataset \(no meta.json\); run `lumenlm prepare` first",
    ),
    Case(
        "eval {model} --data {here}/data --device cpu",
        "eval on meta.json dtype float64",
        r'field dtype is "float64"',
        setup=meta_edit(dtype="float64"),
    ),
    Case(
        "eval {model} --data {data} --split dev --device cpu",
        "eval unknown split",
        r"unknown split 'dev'; use one of train, val, test",
    ),
    # -- train: presets, --set keys, config files, flags
    Case(
        "train --data {data} --out {here}/runs",
        "no preset",
        r"give --preset NAME \(or --config FILE\), --init-from MODEL, or --resume RUN_DIR",
    ),
    Case(
        f"{T.replace('tiny', 'nope')}",
        "unknown preset",
        r"unknown preset 'nope'; use one of:",
    ),
    Case(
        f"{T} --set learning_rate=1",
        "misspelt --set key",
        r"unknown config key 'learning_rate'; did you mean lr\?",
    ),
    Case(
        f"{T} --set model.n_heads=3",
        "--set value that does not fit the model",
        r"n_heads=3 does not divide d_model=64; choose n_heads",
    ),
    Case(
        f"{T} --set batch_size=0",
        "--set batch_size=0",
        r"train.batch_size must be a positive integer, got 0",
    ),
    Case(
        f"{T} --set lr",
        "--set without key=value",
        r"--set expects key=value, got 'lr'",
    ),
    Case(
        f"{T} --set lr=abc",
        "--set value of the wrong type",
        r"train.lr must be float, got 'abc'",
    ),
    Case(
        f"{T} --set context_length=4096",
        "context longer than the data",
        r"train split .* too short for one window of context_length=4096.*use a shorter",
    ),
    Case(f"{T} --device tpu", "unknown --device", r"unknown device 'tpu'; use auto, cpu, cuda"),
    Case(f"{T} --precision fp8", "unknown --precision", r"argument --precision: invalid choice"),
    Case(
        f"{T} --max-minutes -1",
        "--max-minutes negative",
        r"--max-minutes must be a positive number, got -1.0",
    ),
    Case(
        f"{T} --stop-at-step 0",
        "--stop-at-step zero",
        r"--stop-at-step must be positive, got 0",
    ),
    Case(
        f"{T} --config {{here}}/none.json",
        "--config missing",
        r"none.json: file not found",
    ),
    Case(
        f"{T} --config {{here}}/bad.json",
        "--config not JSON",
        r"bad.json: not valid json",
        setup=write("bad.json", "{bad"),
    ),
    Case(
        f"{T} --config {{here}}/list.json",
        "--config not a mapping",
        r"list.json: expected a mapping at the top level",
        setup=write("list.json", "[1]"),
    ),
    Case(
        "train --resume {here} --preset tiny",
        "--resume with --preset",
        r"--resume takes the preset, config and data from the run; drop --preset",
    ),
    Case(
        f"{T} --reset-lr-schedule",
        "--reset-lr-schedule without --resume",
        r"--reset-lr-schedule only applies with --resume RUN_DIR; drop it",
    ),
    Case(
        "train --resume {here}",
        "--resume of a folder that is not a run",
        r"not a run directory \(no config.json\)",
    ),
    Case(
        TD,
        "train.bin holds an id past the vocabulary",
        r"train.bin holds token id \d+ at position \d+, outside the vocabulary.*re-run",
        setup=oov_id("train"),
    ),
    Case(
        "eval {model} --data {here}/data --device cpu",
        "val.bin holds an id past the vocabulary",
        r"val.bin holds token id \d+ at position \d+, outside the vocabulary.*re-run",
        setup=oov_id("val"),
    ),
    # -- the model commands
    Case(
        "generate {model} --prompt hi --num-samples 1000000000 --device cpu",
        "--num-samples past the cap",
        r"--num-samples must be 1 to 16 .*got 1000000000; for more, run the command again",
    ),
    Case(
        "generate {model} --prompt hi --max-new-tokens 1000000000000 --device cpu",
        "--max-new-tokens huge without --stream",
        r"--max-new-tokens 1000000000000 is over 4096.*add --stream",
    ),
    Case(
        "generate {model} --prompt hi --repetition-penalty 1e-300 --device cpu",
        "--repetition-penalty that would give non-finite probabilities",
        r"--repetition-penalty must be in \[0.01, 100\].*got 1e-300",
    ),
    Case(
        "generate {model} --prompt hi --temperature -1 --device cpu",
        "--temperature negative",
        r"--temperature must be a number in \[0, 100\], got -1.0",
    ),
    Case(
        "generate {model} --prompt hi --stop-token-id 999999 --device cpu",
        "--stop-token-id outside the vocabulary",
        r"--stop-token-id.*999999",
    ),
    Case(
        "serve {model} --max-body-bytes -1",
        "--max-body-bytes negative",
        r"--max-body-bytes must be >= 1, got -1",
    ),
    Case(
        "inspect {model} --text hi --top-k 0 --out {here}/ins",
        "inspect --top-k 0",
        r"--top-k must be >= 1, got 0",
    ),
    Case(
        f"{T} --max-minutes nan",
        "--max-minutes nan (it used to mean no limit)",
        r"--max-minutes must be a positive number, got nan",
    ),
    Case(
        "eval {model} --device cpu",
        "eval with nothing to evaluate",
        r"nothing to evaluate: give --data DIR, --tasks LIST and/or --harness LIST",
    ),
    Case(
        "finetune {model} --data {here}/chats.jsonl --out {here}/runs --device cpu",
        "finetune on a malformed JSONL line",
        r"chats.jsonl:2: not valid JSON \(.*\); fix or remove this line",
        setup=write(
            "chats.jsonl",
            '{"messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "hello"}]}\n{"messages": [\n',
        ),
    ),
    Case(
        "finetune {model} --data {here}/empty.jsonl --out {here}/runs --device cpu",
        "finetune on an empty file",
        r"empty",
        setup=write("empty.jsonl", ""),
    ),
    Case(
        "finetune {model} --data {here}/c.jsonl --template {here}/t.json --out {here}/r",
        "finetune with a template without an assistant role",
        r"assistant",
        setup=lambda here, ws: (
            write(
                "c.jsonl",
                '{"messages": [{"role": "user", "content": "hi"}, '
                '{"role": "assistant", "content": "hello"}]}\n',
            )(here, ws),
            write("t.json", '{"user": "U: {content}\\n", "assistant": "A:\\n"}')(here, ws),
        ),
    ),
    Case(
        "import {here}/hf --out {here}/m",
        "import of an architecture lumenlm does not hold",
        r"architecture 'MistralForCausalLM' is not supported; lumenlm imports GPT2LMHeadModel",
        setup=write(
            "hf/config.json", '{"model_type": "mistral", "architectures": ["MistralForCausalLM"]}'
        ),
    ),
    Case(
        "inspect {model} --text hi --analyses attention,nosuch --out {here}/ins",
        "inspect unknown analysis",
        r"nosuch",
    ),
    Case(
        "presets --threads 0",
        "--threads 0 (any command)",
        r"--threads must be >= 1, got 0; pass a positive count",
    ),
    Case(
        "eval {model} --tasks nosuch --device cpu",
        "eval unknown task",
        r"unknown task 'nosuch'; use one of: arc-easy",
    ),
    Case(
        "eval {model} --data {data} --per-example {here}/x.jsonl --device cpu",
        "eval --per-example without --tasks",
        r"--per-example needs --tasks",
    ),
    Case(
        "eval {model} --data {data} --window 100000 --device cpu",
        "eval window beyond the context",
        r"window 100000 > the model's context length 64",
    ),
    Case(
        "eval {model} --data {data} --dtype fp8",
        "eval unknown --dtype",
        r"argument --dtype: invalid choice: 'fp8'",
    ),
    Case(
        "generate {model} --prompt hi --stream --json --device cpu",
        "--stream with --json",
        r"--stream and --json do not go together",
    ),
    Case(
        "generate {model} --prompt-file {here}/none.txt --device cpu",
        "--prompt-file missing",
        r"none.txt: No such file or directory",
    ),
    Case(
        "serve {model} --port 99999",
        "port out of range",
        r"--port must be in \[0, 65535\], got 99999",
    ),
    Case(
        "export {model} --format onnx --out {here}/out",
        "unknown export format",
        r"argument --format: invalid choice: 'onnx' \(choose from '?hf'?, '?gguf'?\)",
    ),
    Case(
        "runs {here}/none",
        "runs folder missing",
        r"none: no such runs directory",
    ),
    Case("presets --show", "--show without a name", r"argument --show: expected one argument"),
    Case(
        "eval {model} --data {data} --batch-size 0",
        "eval batch size zero",
        r"--batch-size must be >= 1, got 0",
    ),
    *(  # every model command on a folder that is not a model
        Case(
            f"{argv}",
            f"{argv.split()[0]} missing model",
            r"none: no such model or run directory",
        )
        for argv in (
            "eval {here}/none --data {data}",
            "generate {here}/none --prompt hi",
            "chat {here}/none",
            "export {here}/none --out {here}/out",
            "inspect {here}/none --text hi",
        )
    ),
    Case(
        "presets --show nope",
        "unknown preset",
        r"unknown preset 'nope'; use one of:",
    ),
]

# -- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Result], Path]:
    root = tmp_path_factory.mktemp("bad_input")
    return run_all(CASES, root), root


def test_rows_are_unique_and_many() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_with_advice(
    outcome: tuple[dict[str, Result], Path], case: Case
) -> None:
    results, _ = outcome
    check(case, results[case.id])


def test_errors_doc_is_current(outcome: tuple[dict[str, Result], Path]) -> None:
    results, root = outcome
    expected = render_doc(CASES, results, root)
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert current == expected, f"docs/ERRORS.md is out of date; regenerate it: {REGENERATE}"


# -- the fallback for exceptions that are not a LumenError (cli/__init__.py) -------------


def _raise_in_presets(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make `lumenlm presets` raise `exc` (its `run` is looked up when main builds the parser)."""
    import lumenlm.cli.presets as presets_cli

    def boom(args: object) -> int:
        raise exc

    monkeypatch.setattr(presets_cli, "run", boom)
    monkeypatch.delenv("LUMENLM_DEBUG", raising=False)


@pytest.mark.parametrize(
    "exc",
    [
        KeyError("float64"),
        AttributeError("'list' object has no attribute 'get'"),
        ValueError("invalid literal for int() with base 10: 'many'"),
        IndexError("index out of range in self"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        RuntimeError(""),
        TypeError("first line\nsecond line"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unexpected_errors_say_what_to_do(monkeypatch, capsys, exc: Exception) -> None:
    from lumenlm.cli import main

    _raise_in_presets(monkeypatch, exc)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"lumenlm presets: error: {type(exc).__name__}")
    assert err.endswith("(unexpected; re-run with --debug for the traceback and report it)\n")
    with pytest.raises(type(exc)):
        main(["presets", "--debug"])


@pytest.mark.parametrize(
    ("exc", "advice"),
    [
        (OSError(28, "No space left on device", "out/train.bin"), "free some disk space"),
        (PermissionError(13, "Permission denied", "/etc/x"), "check its permissions"),
        (MemoryError(), "out of memory; lower the sizes involved"),
        (DataError("first\nsecond"), "error: first second"),  # a LumenError stays one line
    ],
    ids=["ENOSPC", "EACCES", "MemoryError", "multiline"],
)
def test_environment_errors_get_their_own_advice(monkeypatch, capsys, exc, advice) -> None:
    from lumenlm.cli import main

    _raise_in_presets(monkeypatch, exc)
    assert main(["presets"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and advice in err and "unexpected" not in err


if __name__ == "__main__":
    sys.exit(script(CASES, sys.argv[1:]))
