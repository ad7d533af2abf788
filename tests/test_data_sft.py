"""Fine-tuning data: JSONL validation (file:line errors), the hash split, masks built from
token offsets, turn-boundary truncation and packing (lumenlm.data.sft, sft_pack, sft_arc)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lumenlm.data.chat_template import TEMPLATES, TURNS, ChatTemplate, get_template
from lumenlm.data.sft import load_source, read_jsonl
from lumenlm.data.sft_arc import arc_chat, convert_arc
from lumenlm.data.sft_pack import encode_conversation, fit_context, pack
from lumenlm.data.tokenizer import train_tokenizer
from lumenlm.errors import ConfigError, DataError

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        "User: What is the capital of France?\nAssistant: Paris is the capital.\n",
        "the quick brown fox jumps over the lazy dog, and Rome of course",
    ] * 30
    tok = train_tokenizer(texts, vocab_size=400, min_frequency=1)
    tok.add_special_tokens(["<|end|>"])
    return tok


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# -- parsing and validation ------------------------------------------------------------


def test_chat_and_instruction_lines_parse(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "d.jsonl",
        [
            {"messages": CHAT},
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "output": "hi"},
            "",
        ],
    )
    convs, skipped = read_jsonl(f)
    assert skipped == 0 and [c.kind for c in convs] == ["chat", "instruction", "instruction"]
    assert convs[1].messages == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert convs[2].messages[0]["content"] == "Say hi." and convs[2].source == f"{f}:3"


@pytest.mark.parametrize(
    "line, what",
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"text": "hello"}', "neither a chat line"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
        ('{"messages": [{"role": "user"}]}', 'no string "content"'),
        ('{"instruction": "x", "output": 3}', '"output" must be a string'),
        ('{"instruction": "x", "output": "y", "extra": 1}', "unknown key(s) extra"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path: Path, line: str, what: str) -> None:
    f = _write(tmp_path / "d.jsonl", [{"messages": CHAT}, line])
    with pytest.raises(DataError) as err:
        read_jsonl(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}:2: ") and what in msg and "\n" not in msg


def test_empty_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "empty.jsonl"
    f.write_text("\n\n")
    with pytest.raises(DataError, match="empty file"):
        load_source(f)


def test_conversation_without_assistant_is_skipped_and_counted(tmp_path: Path) -> None:
    lines = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    lines += [{"messages": CHAT[:3]}, {"messages": CHAT}]
    src = load_source(_write(tmp_path / "d.jsonl", lines), val_ratio=0.3)
    assert src.skipped_no_assistant == 3
    assert len(src.train) + len(src.val) == 2 and src.train and src.val
    only_users = _write(tmp_path / "u.jsonl", lines[:3])
    with pytest.raises(DataError, match="3 skipped without one"):
        load_source(only_users)


def test_hash_split_is_a_function_of_the_conversation(tmp_path: Path) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(200)
    ]
    a = load_source(_write(tmp_path / "a.jsonl", lines), val_ratio=0.2)
    b = load_source(_write(tmp_path / "b.jsonl", lines[::-1]), val_ratio=0.2)
    val_a = {c.messages[0]["content"] for c in a.val}
    assert val_a == {c.messages[0]["content"] for c in b.val}
    assert 20 <= len(val_a) <= 60  # about 20% of 200
    c = load_source(_write(tmp_path / "c.jsonl", lines), val_ratio=0.2, seed=1)
    assert {m.messages[0]["content"] for m in c.val} != val_a


def test_folder_with_train_and_val_files(tmp_path: Path) -> None:
    _write(tmp_path / "train.jsonl", [{"messages": CHAT}] * 3)
    _write(tmp_path / "validation.jsonl", [{"messages": CHAT[:3]}])
    src = load_source(tmp_path)
    assert (len(src.train), len(src.val)) == (3, 1) and len(src.files) == 2
    (tmp_path / "validation.jsonl").unlink()
    with pytest.raises(DataError, match="needs train.jsonl and one of val.jsonl"):
        load_source(tmp_path)


# -- templates -------------------------------------------------------------------------


def test_segments_render_exactly_the_template_text() -> None:
    for name, tpl in TEMPLATES.items():
        segs = tpl.segments(CHAT, add_generation_prompt=True)
        assert "".join(s.text for s in segs) == tpl.render(CHAT)
        trained = "".join(s.text for s in segs if s.trained)
        end = {"plain": "\n", "turns": "<|end|>"}[name]  # up to and including the stop
        assert trained == f"Paris is the capital.{end}Rome, of course.{end}"


def test_template_without_assistant_role_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"assistant": "Bot:\n"}))
    with pytest.raises(ConfigError, match="no assistant role"):
        get_template(str(bad))
    with pytest.raises(ConfigError, match="unknown chat template 'nope'"):
        get_template("nope")
    good = tmp_path / "g.json"
    good.write_text(json.dumps(TURNS.to_dict()))
    assert get_template(str(good)) == TURNS
    assert ChatTemplate.from_meta({"chat": TURNS.to_dict()}) == TURNS


def test_stop_token_ids_are_the_special_stop_tokens(tokenizer) -> None:
    assert TURNS.stop_token_ids(tokenizer) == [tokenizer.token_to_id("<|end|>")]
    assert ChatTemplate().stop_token_ids(tokenizer) == []


# -- masks from offsets ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", "turns"])
def test_trained_tokens_decode_to_the_assistant_replies(tokenizer, name: str) -> None:
    tpl = TEMPLATES[name]
    enc = encode_conversation(CHAT, tpl, tokenizer)
    assert enc.ids.tolist() == tokenizer.encode(tpl.render(CHAT, False)).ids
    # every trained run of tokens decodes to a reply (byte-level BPE may glue the space
    # after "Assistant:" to it) plus the template's closing text
    runs, cur = [], []
    for i, t in zip(enc.ids.tolist(), enc.trained.tolist()):
        if t:
            cur.append(i)
        elif cur:
            runs, cur = [*runs, cur], []
    runs += [cur] if cur else []
    end = {"plain": "\n", "turns": "<|end|>"}[name]
    got = [tokenizer.decode(r, skip_special_tokens=False).strip(" ") for r in runs]
    assert got == [f"Paris is the capital.{end}", f"Rome, of course.{end}"]
    assert encode_conversation(CHAT, tpl, tokenizer, train_on_prompt=True).trained.all()


def test_truncation_cuts_at_an_assistant_turn_boundary(tokenizer) -> None:
    enc = encode_conversation(CHAT, TURNS, tokenizer)
    first_end = enc.turn_ends[0]
    assert tokenizer.decode(enc.ids[:first_end].tolist(), skip_special_tokens=False).endswith(
        "Paris is the capital.<|end|>\n"
    )  # the cut keeps the turn's layout newline
    cut = fit_context(enc, len(enc.ids) - 1)
    assert cut is not None and len(cut.ids) == first_end
    assert fit_context(enc, first_end - 1) is None
    assert fit_context(enc, len(enc.ids)) is enc


def test_pack_counts_and_keeps_documents_apart(tokenizer) -> None:
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    encs = [encode_conversation(m, TURNS, tokenizer) for m in (short, CHAT, short, short)]
    T = len(encs[1].ids) - 2  # CHAT must be cut
    rows = pack(encs, T, pad_id=0)
    s = rows.stats
    assert s.truncated == 1 and s.dropped == 0 and s.conversations == 4
    assert "1 conversation(s) longer than the context" in s.notice("train", T)
    x, y, doc = (t.numpy() for t in rows.get_batch(range(len(rows))))
    assert s.trained_tokens == int((y != -100).sum())
    for r in range(len(rows)):
        for d in set(doc[r].tolist()) - {-1}:
            pos = np.flatnonzero(doc[r] == d)
            assert y[r, pos[-1]] == -100  # a conversation's last token predicts nothing
            assert (np.diff(pos) == 1).all()
            tgt = y[r, pos[:-1]]
            ok = tgt != -100
            assert (tgt[ok] == x[r, pos[1:]][ok]).all()  # targets are the next input
        assert (y[r][doc[r] == -1] == -100).all()  # padding is never a target
    assert pack(encs, 3, pad_id=0).stats.dropped == 4


# -- the ARC example's converter ---------------------------------------------------------


def test_arc_line_becomes_a_letter_and_answer_chat() -> None:
    line = json.dumps(
        {
            "id": "x",
            "question": {
                "stem": "Which is a gas?",
                "choices": [{"label": "1", "text": "ice"}, {"label": "2", "text": "steam"}],
            },
            "answerKey": "2",
        }
    )
    chat = arc_chat(line, "f:1")
    assert chat["messages"] == [
        {"role": "user", "content": "Question: Which is a gas?\nA. ice\nB. steam\nAnswer:"},
        {"role": "assistant", "content": "B. steam"},
    ]
    with pytest.raises(DataError, match="f:2: answerKey '3'"):
        arc_chat(line.replace('"answerKey": "2"', '"answerKey": "3"'), "f:2")


def test_convert_arc_holds_out_dev(tmp_path: Path) -> None:
    from data_helpers import require_shared

    arc = require_shared("arc")
    counts = convert_arc(arc, tmp_path)
    assert counts == {"train.jsonl": 2251 + 1119, "val.jsonl": 570 + 299}
    src = load_source(tmp_path)
    train_q = {c.messages[0]["content"] for c in src.train}
    assert not train_q & {c.messages[0]["content"] for c in src.val}
