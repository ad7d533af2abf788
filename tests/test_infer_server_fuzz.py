"""Property-based fuzz of the server from its own OpenAPI document (schemathesis).

For every operation of `/openapi.json`, schemathesis generates requests that fit the
schema and requests that do not, sends them to the app in process (ASGI, no socket)
and checks each response: never a 5xx, the status, content type, headers and body
documented, invalid data refused. `positive_data_acceptance` is left out: a
schema-valid request may still be refused for what a static schema cannot say (a
token id past this model's vocabulary, a prompt longer than its context, prompts x n
over the cap), and those 400s are right.

Slow (a few minutes): `pytest -m slow tests/test_infer_server_fuzz.py`; needs the
`fuzz` extra (`pip install -e '.[fuzz]'`), else it skips. `LUMENLM_FUZZ_EXAMPLES`
sets the examples per operation and mode (default 100).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infer_helpers import _one_thread, make_model_dir, tok_path  # noqa: F401 (fixtures)
from lumenlm.infer.server import create_app
from lumenlm.modelio import load

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed: pip install -e '.[fuzz]'"
)

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("LUMENLM_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tok_path: Path):  # noqa: F811
    model = load(make_model_dir(tmp_path_factory.mktemp("fuzz"), "tiny-gpt2", tok_path))
    return create_app(model, model.tokenizer, model_name="tiny", max_tokens_cap=3)


def _fuzz(schema, headers: dict[str, str] | None = None) -> tuple[list[str], list[str], int]:
    """(5xx responses, other check failures, requests sent) over every operation."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import positive_data_acceptance

    server_errors: list[str] = []
    failures: list[str] = []
    sent = 0

    def check(op, mode, case) -> None:
        nonlocal sent
        sent += 1
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # in process, an unhandled server error raises here
            server_errors.append(f"{op.label} ({mode}): raised {exc!r} for {case.body!r:.300}")
            return
        where = f"{op.label} ({mode}): {response.status_code} for {case.body!r:.300}"
        if response.status_code >= 500:
            server_errors.append(where)
            return
        try:
            case.validate_response(
                response, excluded_checks=[positive_data_acceptance], headers=headers
            )
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures
            failures.append(f"{where}: {str(exc)[:600]}")

    def bind(op, mode):  # one test function per (operation, mode), for @given
        return lambda case: check(op, mode, case)

    fuzz = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = fuzz(given(case=op.as_strategy(generation_mode=mode))(bind(op, mode)))
            try:
                run()
            except Unsatisfiable:  # nothing to generate (no body, no parameters to break)
                pass
    return server_errors, failures, sent


def test_schemathesis_finds_no_5xx(app) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    server_errors, failures, sent = _fuzz(schema)
    assert sent > 4 * EXAMPLES  # both POST routes, both modes, were really exercised
    assert not server_errors, "\n".join(server_errors[:5])
    assert not failures, "\n".join(failures[:5])


def test_schemathesis_with_an_api_key(tmp_path_factory, tok_path: Path) -> None:  # noqa: F811
    model = load(make_model_dir(tmp_path_factory.mktemp("fuzzkey"), "tiny", tok_path))
    keyed = create_app(model, model.tokenizer, max_tokens_cap=2, api_key="k")
    key = {"Authorization": "Bearer k"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", keyed, headers=key)
    server_errors, failures, _ = _fuzz(schema, headers=key)
    assert not server_errors, "\n".join(server_errors[:5])
    assert not failures, "\n".join(failures[:5])
