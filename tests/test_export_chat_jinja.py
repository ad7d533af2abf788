"""The exported Jinja chat template renders exactly what `ChatTemplate.render` renders,
through transformers' own `apply_chat_template`, for every named template and for
custom ones with quotes, backslashes, braces, unicode and several `{content}` slots."""

from __future__ import annotations

import pytest

from export_helpers import CONVERSATIONS, make_chat_tokenizer
from lumenlm.data.chat_template import TEMPLATES, ChatTemplate
from lumenlm.export.chat_jinja import jinja_string, to_jinja

transformers = pytest.importorskip("transformers")

CUSTOM = [
    ChatTemplate(
        system="### System 'rules' \\ {content}\r\n",
        user="«{content}» {{ not jinja }} {% raw %}\n",
        assistant="→ {content} ← again: {content}\n\n",
        generation_prompt="→",
    ),
    ChatTemplate(
        system="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n",
        assistant="<|assistant|>fixed reply, no slot<|end|>\n",
        generation_prompt="<|assistant|>\n",
        stop=["<|end|>"],
        special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    ),
    ChatTemplate(system="", user="{content}", assistant="{content}", generation_prompt=""),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = make_chat_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))


@pytest.mark.parametrize(
    "template", [*TEMPLATES.values(), *CUSTOM], ids=[*TEMPLATES, "custom", "fixed", "bare"]
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_apply_chat_template_equals_render(tokenizer, template, add_generation_prompt) -> None:
    tokenizer.chat_template = to_jinja(template)
    for messages in CONVERSATIONS:
        ours = template.render(messages, add_generation_prompt=add_generation_prompt)
        theirs = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert theirs == ours


def test_unknown_role_raises_as_render_does(tokenizer) -> None:
    tokenizer.chat_template = to_jinja(ChatTemplate())
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(ValueError, match="unknown chat role"):
        ChatTemplate().render(bad)
    with pytest.raises(Exception, match="unknown chat role tool"):
        tokenizer.apply_chat_template(bad, tokenize=False)


@pytest.mark.parametrize("text", ["plain", "it's", "a\\b", "\r\n\t", "{{x}}", "🙂 ü", "'\\'"])
def test_jinja_string_round_trips(text: str) -> None:
    import jinja2

    assert jinja2.Environment().from_string("{{ " + jinja_string(text) + " }}").render() == text
