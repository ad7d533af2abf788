"""Task files: ARC / HellaSwag loaders, lm-eval preprocessing, errors, download."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest

from lumenlm.cli import main
from lumenlm.errors import ConfigError, DataError
from lumenlm.evaluate import (
    get_task,
    hellaswag_preprocess,
    load_arc,
    load_hellaswag,
    load_hellaswag_jsonl,
    load_task,
)
from lumenlm.evaluate.tasks import hellaswag_query, parse_task_list


def arc_line(qid: str, stem: str, labels: list[str], key: str) -> str:
    choices = [{"text": f"answer {lab}", "label": lab} for lab in labels]
    return json.dumps({"id": qid, "question": {"stem": stem, "choices": choices}, "answerKey": key})


def test_arc_three_five_choices_and_numeric_labels(tmp_path: Path) -> None:
    path = tmp_path / "ARC-Easy-Test.jsonl"
    path.write_text(
        "\n".join(
            [
                arc_line("q3", "Three?", ["A", "B", "C"], "C"),
                arc_line("q5", "Five?", ["A", "B", "C", "D", "E"], "E"),
                arc_line("qn", "Numeric?", ["1", "2", "3", "4"], "2"),
            ]
        )
        + "\n"
    )
    items = load_arc(path)
    assert [len(it.choices) for it in items] == [3, 5, 4]
    assert [it.gold for it in items] == [2, 4, 1]
    assert items[0].context == "Question: Three?\nAnswer:"
    assert items[2].choices[1] == "answer 2"
    # the Hugging Face allenai/ai2_arc row layout is read too
    hf = tmp_path / "hf.jsonl"
    hf.write_text(
        json.dumps(
            {
                "id": "x",
                "question": "Q?",
                "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
                "answerKey": "3",
            }
        )
        + "\n"
    )
    assert load_arc(hf)[0].gold == 2


def test_official_arc_files(shared_data: Path) -> None:
    easy = load_arc(shared_data / "arc" / "ARC-Easy-Test.jsonl")
    challenge = load_arc(shared_data / "arc" / "ARC-Challenge-Test.jsonl")
    assert len(easy) == 2376 and len(challenge) == 1172
    assert Counter(len(it.choices) for it in easy) == {4: 2365, 3: 7, 5: 4}
    assert Counter(len(it.choices) for it in challenge) == {4: 1165, 3: 4, 5: 3}
    first = easy[0]
    assert first.id == "Mercury_417466" and first.gold == 0
    assert first.context == (
        "Question: Which statement best explains why photosynthesis is the "
        "foundation of most food webs?\nAnswer:"
    )
    numeric = next(it for it in easy if it.id == "NYSEDREGENTS_2015_8_28")
    assert numeric.choices[numeric.gold] == "elements"


# Expected strings worked out from lm-eval's hellaswag/utils.py::preprocess (strip, then
# " [title]" -> ". ", then drop "[...]" non-greedily, then ONE pass of "  " -> " ").
PREPROCESS_CASES = [
    (
        "  Making a sandwich: [header] How to make a sandwich [title] Get bread.  ",
        "Making a sandwich: How to make a sandwich. Get bread.",
    ),
    (
        "[step] Cut the bread. [substeps] Use a knife.",
        " Cut the bread. Use a knife.",
    ),  # strip first
    ("a   b", "a  b"),  # a single replace pass
    ("x [a] y [b] z", "x y z"),  # non-greedy
    ("Title [title] Next", "Title. Next"),
]


@pytest.mark.parametrize("raw,expected", PREPROCESS_CASES)
def test_hellaswag_preprocess_matches_lm_eval(raw: str, expected: str) -> None:
    assert hellaswag_preprocess(raw) == expected


def test_hellaswag_query_capitalizes_ctx_b() -> None:
    assert (
        hellaswag_query("Roof shingle removal", "A man is sitting on a roof.", "he IS")
        == "Roof shingle removal: A man is sitting on a roof. He is"
    )
    assert hellaswag_query("Act", "Ends here.", "") == "Act: Ends here."


def test_hellaswag_official_jsonl(tmp_path: Path) -> None:
    doc = {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap [title] to wrap.",
            "is ripping  tiles off.",
            "is holding a cube.",
            "starts pulling up roofing.",
        ],
        "label": 3,
        "split": "val",
    }
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    (item,) = load_hellaswag(path)
    assert item.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert item.choices[0] == "is using wrap. to wrap."
    assert item.choices[1] == "is ripping tiles off."
    assert item.gold == 3 and item.id == "24"


def test_hellaswag_text_layout(shared_data: Path) -> None:
    items = load_hellaswag(shared_data / "hellaswag" / "hellaswag_val_full.txt")
    assert len(items) == 10042
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert items[0].gold == 3 and len(items[0].choices) == 4
    assert items[0].choices[3] == "starts pulling up roofing on a roof."
    assert Counter(it.gold for it in items) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}


def test_malformed_lines_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "ARC-Easy-Test.jsonl"
    bad.write_text(arc_line("a", "ok", ["A", "B"], "A") + "\n{not json\n")
    with pytest.raises(DataError, match=r"ARC-Easy-Test\.jsonl:2: not valid JSON"):
        load_arc(bad)
    bad.write_text(
        arc_line("a", "ok", ["A", "B"], "A") + "\n\n" + arc_line("b", "x", ["A", "B"], "C") + "\n"
    )
    with pytest.raises(DataError, match=r"ARC-Easy-Test\.jsonl:3: answerKey 'C'"):
        load_arc(bad)
    bad.write_text('{"id": "a", "question": {"stem": "s"}}\n')
    with pytest.raises(DataError, match=r":1: not an ARC question"):
        load_arc(bad)
    hs = tmp_path / "hellaswag_val.jsonl"
    hs.write_text(
        '{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x"], "label": 2}\n'
    )
    with pytest.raises(DataError, match=r"hellaswag_val\.jsonl:1: label 2 out of range"):
        load_hellaswag_jsonl(hs)
    txt = tmp_path / "hellaswag_val_full.txt"
    txt.write_text("ctx\n1\na\nb\nc\nd\nctx2\nX\na\nb\nc\nd\n")
    with pytest.raises(DataError, match=r"hellaswag_val_full\.txt:8: expected the gold label"):
        load_hellaswag(txt)
    txt.write_text("ctx\n1\na\nb\nc\nd\nctx2\n")
    with pytest.raises(DataError, match=r"hellaswag_val_full\.txt:7: .*not a multiple of 6"):
        load_hellaswag(txt)


def test_unknown_task_lists_known(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="use one of: arc-easy, arc-challenge, hellaswag"):
        get_task("mmlu")
    assert parse_task_list("arc_easy, hellaswag,arc-easy") == ["arc-easy", "hellaswag"]
    rc = main(["eval", str(tmp_path / "missing"), "--tasks", "arc-easy,winogrande"])
    assert rc == 2
    err = capsys.readouterr().err
    assert (
        "unknown task 'winogrande'" in err and "arc-challenge" in err and len(err.splitlines()) == 1
    )


def test_task_files_found_in_tasks_dir_then_env(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LUMENLM_DATA", raising=False)
    assert len(load_task("arc-challenge", shared_data, limit=7)) == 7
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(shared_data / "arc" / "ARC-Easy-Test.jsonl", flat)
    assert len(load_task("arc-easy", flat, download=False)) == 2376
    monkeypatch.setenv("LUMENLM_DATA", str(shared_data))
    assert len(load_task("hellaswag", None, limit=5, download=False)) == 5


@pytest.fixture
def http_root(tmp_path: Path):
    """Serve a folder on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_download_from_mirror_is_verified_and_cached(
    tmp_path: Path,
    shared_data: Path,
    http_root: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, url = http_root
    (root / "arc").mkdir()
    shutil.copy(shared_data / "arc" / "ARC-Easy-Test.jsonl", root / "arc")
    (root / "arc" / "ARC-Challenge-Test.jsonl").write_text(
        arc_line("a", "s", ["A", "B"], "A") + "\n"
    )
    monkeypatch.delenv("LUMENLM_DATA", raising=False)
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LUMENLM_TASKS_URL", url)
    items = load_task("arc-easy", tmp_path / "empty", limit=3)
    assert len(items) == 3
    cached = tmp_path / "cache" / "tasks" / "arc" / "ARC-Easy-Test.jsonl"
    assert cached.read_bytes() == (shared_data / "arc" / "ARC-Easy-Test.jsonl").read_bytes()
    (root / "arc" / "ARC-Easy-Test.jsonl").unlink()  # now served from the cache
    assert len(load_task("arc-easy", None, limit=3)) == 3
    with pytest.raises(DataError, match="sha256"):  # not the official bytes: refused
        load_task("arc-challenge")
    assert not (tmp_path / "cache" / "tasks" / "arc" / "ARC-Challenge-Test.jsonl").exists()


def test_offline_without_files_says_where_to_put_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LUMENLM_DATA", raising=False)
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LUMENLM_TASKS_URL", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(DataError) as exc:
        load_task("hellaswag", tmp_path)
    msg = str(exc.value)
    assert "--tasks-dir" in msg and "$LUMENLM_DATA/hellaswag/" in msg and "\n" not in msg
    with pytest.raises(DataError, match="--tasks-dir"):
        load_task("arc-easy", tmp_path, download=False)
