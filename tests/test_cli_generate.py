"""`lumenlm generate`, `chat` and `serve` on hostile input: every size is bounded, every
sampling value checked, undecodable text replaced, start-up failures one line."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bad_input_helpers import ADVICE
from infer_helpers import _one_thread, make_model_dir, tok_path  # noqa: F401 (fixtures)
from lumenlm.cli import main as cli_main
from lumenlm.infer.generate import MAX_BATCH, MAX_UNSTREAMED_TOKENS
from lumenlm.infer.schema import MAX_N
from lumenlm.modelio import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tok_path: Path) -> Path:  # noqa: F811
    return make_model_dir(tmp_path_factory.mktemp("cli"), "tiny-gpt2", tok_path)


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return load(model_dir)


@pytest.fixture
def fast_load(loaded, monkeypatch: pytest.MonkeyPatch):
    """The CLI's model loading returns the module's model (what is tested is the CLI)."""

    def load_model(*args, check=None, **kwargs):
        if check is not None:  # the command's own checks still run on the model
            check(loaded)
        return loaded

    monkeypatch.setattr("lumenlm.cli.generate.load_model", load_model)
    return loaded


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must fail with exit 2 and one line on stderr holding `needles` and
    advice (what to do, as the bad-input table asks)."""
    capsys.readouterr()
    assert cli_main(argv) == 2, argv
    err = capsys.readouterr().err
    prefix = f"lumenlm {argv[0]}: error: "
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert ADVICE.search(err[len(prefix) :]), f"no advice in: {err}"
    for n in needles:
        assert n in err, (n, err)
    return err


def test_sizes_are_bounded_with_one_line_errors(model_dir: Path, capsys) -> None:
    m = str(model_dir)
    base = ["generate", m, "--prompt", "hi"]
    for n in (0, -1, MAX_N + 1, 1_000_000_000):
        one_line_error(capsys, [*base, "--num-samples", str(n)], "--num-samples", str(MAX_N))
    for b in (0, -3, MAX_BATCH + 1):
        one_line_error(capsys, [*base, "--batch-size", str(b)], "--batch-size", str(MAX_BATCH))
    for cmd in (base, ["chat", m]):
        for t in (0, -1):
            one_line_error(capsys, [*cmd, "--max-new-tokens", str(t)], "--max-new-tokens", ">= 1")
    for t in (MAX_UNSTREAMED_TOKENS + 1, 1_000_000_000_000):
        one_line_error(
            capsys, [*base, "--max-new-tokens", str(t)], str(MAX_UNSTREAMED_TOKENS), "--stream"
        )


def test_streamed_and_chat_output_have_no_token_cap(model_dir: Path) -> None:
    from lumenlm.cli import build_parser
    from lumenlm.cli.generate import params_from_args

    for argv in (["generate", str(model_dir), "--prompt", "x", "--stream"], ["chat", "m"]):
        args = build_parser().parse_args([*argv, "--max-new-tokens", "1000000000000"])
        assert params_from_args(args, streamed=True).max_new_tokens == 10**12


def test_many_rows_run_in_bounded_batches(fast_load, capsys, monkeypatch) -> None:
    """However many rows, no batch is larger than --batch-size, and the output is the
    same for every batch size."""
    gen_mod = sys.modules["lumenlm.infer.generate"]
    sizes: list[int] = []
    real = gen_mod.Decoder

    def recording(model, prompts, **kw):
        sizes.append(len(prompts))
        return real(model, prompts, **kw)

    monkeypatch.setattr(gen_mod, "Decoder", recording)
    argv = ["generate", "m", "--prompt", "The cat", "--prompt", "A", "--prompt", "Once upon"]
    argv += ["--num-samples", str(MAX_N), "--max-new-tokens", "3", "--seed", "4", "--json"]
    outputs = []
    for batch in (None, 1, 7, MAX_BATCH):
        sizes.clear()
        capsys.readouterr()
        assert cli_main(argv + ([] if batch is None else ["--batch-size", str(batch)])) == 0
        outputs.append(json.loads(capsys.readouterr().out))
        assert max(sizes) <= (batch or MAX_N) and sum(sizes) == 3 * MAX_N
    assert all(o == outputs[0] for o in outputs) and len(outputs[0]) == 3 * MAX_N
    capsys.readouterr()
    assert cli_main([*argv[:-1], "--stream", "--batch-size", "5"]) == 0
    assert capsys.readouterr().out.count("\n---\n") == 3 * MAX_N - 1


def test_stop_token_id_must_be_in_the_vocabulary(fast_load, capsys) -> None:
    vocab = fast_load.config.vocab_size
    for cmd in (["generate", "m", "--prompt", "hi"], ["chat", "m"]):
        for bad in (vocab, vocab + 1, 10**30):
            one_line_error(capsys, [*cmd, "--stop-token-id", str(bad)], "--stop-token-id")
        one_line_error(capsys, [*cmd, "--stop-token-id", "-1"], "--stop-token-id", ">= 0")


FLAG_VALUES = [
    "0",
    "-0",
    "5e-324",
    "1e-300",
    "1e-5",
    "0.5",
    "1",
    "2",
    "100",
    "101",
    "1e300",
    "-1",
    "inf",
    "-inf",
    "nan",
]


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    flags=st.dictionaries(
        st.sampled_from(
            ["--temperature", "--top-p", "--min-p", "--repetition-penalty", "--top-k", "--seed"]
        ),
        st.one_of(
            st.sampled_from(FLAG_VALUES),
            st.floats(allow_nan=True).map(repr),
            st.integers().map(str),
        ),
        min_size=1,
    )
)
def test_any_sampling_flags_give_output_or_one_line(fast_load, capsys, flags: dict) -> None:
    """Extreme flag values either generate (exit 0) or are refused in one line (exit 2,
    naming the flag); never a crash (exit 1). Floats for int flags are argparse's to refuse."""
    argv = ["generate", "m", "--prompt", "hi", "--max-new-tokens", "2"]
    for flag, v in flags.items():
        argv += [f"{flag}={v}"]
    capsys.readouterr()
    try:
        code = cli_main(argv)
    except SystemExit as exc:  # argparse: a float given to --top-k / --seed
        assert exc.code == 2 and any(f in ("--top-k", "--seed") for f in flags)
        return
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.count("\n") == 1 and any(f in err for f in flags), err


def test_red_team_sampling_values_are_refused(fast_load, capsys) -> None:
    for flag, v in [("--repetition-penalty", "1e-300"), ("--repetition-penalty", "5e-324")]:
        one_line_error(capsys, ["generate", "m", "--prompt", "hi", flag, v], flag, "[0.01, 100]")


# ----------------------------------------------------------------------------- undecodable text


@pytest.mark.parametrize("seed", range(4))
def test_chat_on_binary_stdin_replaces_undecodable_bytes(fast_load, capsys, monkeypatch, seed):
    """Random bytes on stdin, as a C/UTF-8 locale's stdin decodes them (surrogateescape):
    every line gets a reply, nothing fails."""
    import random

    data = random.Random(seed).randbytes(4096)
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)
    assert cli_main(["chat", "m", "--max-new-tokens", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("Assistant: ") >= 1 and "\ufffd" in out


def test_chat_subprocess_on_urandom(model_dir: Path) -> None:
    """The red team's command: `head -c 4096 /dev/urandom | lumenlm chat RUN`."""
    env = {**os.environ, "LC_ALL": "C"}
    r = subprocess.run(
        [sys.executable, "-m", "lumenlm", "chat", str(model_dir), "--max-new-tokens", "2"],
        input=os.urandom(4096),
        capture_output=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Traceback" not in r.stderr and r.stdout.count(b"Assistant: ") >= 1


def test_chat_cuts_endless_lines(fast_load, capsys, monkeypatch) -> None:
    monkeypatch.setattr("lumenlm.infer.chat.MAX_LINE", 50)
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * 500 + "\nhello\n"))
    assert cli_main(["chat", "m", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "(line cut to its first 50 characters)" in out
    assert f"User: {'x' * 50}\n" in out and "User: hello\n" in out and "x" * 51 not in out


def test_generate_replaces_undecodable_arguments_and_files(fast_load, capsys, tmp_path) -> None:
    f = tmp_path / "p.bin"
    f.write_bytes(b"caf\xe9 \xff\xfe na\xefve")  # Latin-1, not UTF-8
    for source in (["--prompt-file", str(f)], ["--prompt", "hi\udcff"]):  # argv: surrogateescape
        capsys.readouterr()
        argv = ["generate", "m", *source, "--max-new-tokens", "2", "--stop", "\udc80", "--json"]
        assert cli_main(argv) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert "\ufffd" in row["prompt"]


# ----------------------------------------------------------------------------- serve


def test_serve_start_failures_are_one_line(model_dir: Path, capsys, monkeypatch) -> None:
    m = str(model_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        one_line_error(capsys, ["serve", m, "--port", port], "already in use", "--port")

    def no_dns(*_a, **_k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with monkeypatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", no_dns)
        one_line_error(capsys, ["serve", m, "--host", "nosuch.invalid"], "--host", "resolve")
    for flag, v in [("--max-body-bytes", "-1"), ("--max-body-bytes", "0")]:
        one_line_error(capsys, ["serve", m, flag, v], flag)
    capsys.readouterr()  # (its advice is a todo of tests/test_bad_input.py's table)
    assert cli_main(["serve", m, "--port", "70000"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    one_line_error(capsys, ["serve", m, "--max-tokens-cap", "0"], "--max-tokens-cap")


class FakeSocket:
    def __init__(self, host: str) -> None:
        self.host = host

    def getsockname(self) -> tuple:
        return (self.host, 8000) if ":" not in self.host else (self.host, 8000, 0, 0)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("host", "exposed"),
    [
        ("0.0.0.0", True),
        ("192.168.1.7", True),
        ("::", True),
        ("10.1.2.3", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("::1", False),
    ],
)
def test_serve_warns_when_exposed_without_a_key(
    fast_load, capsys, monkeypatch, host: str, exposed: bool
) -> None:
    """Nothing is bound: binding and serving are replaced, the decision is what is tested."""
    served = []
    monkeypatch.setattr("lumenlm.infer.listen.bind_socket", lambda h, p: FakeSocket(host))
    monkeypatch.setattr("lumenlm.infer.listen.serve", lambda app, sock, **kw: served.append(app))
    monkeypatch.delenv("LUMENLM_API_KEY", raising=False)
    capsys.readouterr()
    assert cli_main(["serve", "m", "--host", host]) == 0 and served
    err = _besides_address(capsys.readouterr().err)
    assert ("without an API key" in err) == exposed and err.count("\n") == int(exposed)
    monkeypatch.setenv("LUMENLM_API_KEY", "k")
    assert cli_main(["serve", "m", "--host", host]) == 0
    assert _besides_address(capsys.readouterr().err) == ""  # a key from the environment


def _besides_address(err: str) -> str:
    """stderr without the "serving on URL" line every start prints."""
    lines = err.splitlines(keepends=True)
    assert sum(line.startswith("serving on http://") for line in lines) == 1, err
    return "".join(line for line in lines if not line.startswith("serving on http://"))


def test_api_key_on_the_command_line_gives_a_notice(fast_load, capsys, monkeypatch) -> None:
    monkeypatch.setattr("lumenlm.infer.listen.bind_socket", lambda h, p: FakeSocket("127.0.0.1"))
    monkeypatch.setattr("lumenlm.infer.listen.serve", lambda app, sock, **kw: None)
    capsys.readouterr()
    assert cli_main(["serve", "m", "--api-key", "s3cret"]) == 0
    err = _besides_address(capsys.readouterr().err)
    assert err.startswith("notice: --api-key") and "LUMENLM_API_KEY" in err and "s3cret" not in err
    from lumenlm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    assert "LUMENLM_API_KEY" in capsys.readouterr().out


def test_help_shows_the_limits(capsys) -> None:
    from lumenlm.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"1 to {MAX_N}" in out and f"at most {MAX_UNSTREAMED_TOKENS} without --stream" in out
    assert "{max_" not in out and f"1 to {MAX_BATCH}" in out
