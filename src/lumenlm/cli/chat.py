"""`lumenlm chat MODEL`: interactive terminal chat (User:/Assistant: turns)."""

from __future__ import annotations

import argparse

from lumenlm.cli.common import add_command
from lumenlm.cli.generate import LimitsHelp, add_model_args, add_sampling_args


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "chat",
        run,
        help="interactive chat with a model",
        description="Chat with a model in the terminal using its chat template (default: the "
        "Librarian card's 'User: ...\\nAssistant:'). Replies stream; the history is trimmed to "
        "fit the context window. Line editing and history (readline); Ctrl-C stops a reply, "
        "twice at the prompt quits; --seed seeds the conversation once (/reset starts it "
        "again). Commands: /reset, /system TEXT, /temp X, /help, /exit. Reads piped stdin too; "
        "input that is not UTF-8 is read with undecodable bytes replaced by U+FFFD, and a line "
        "keeps its first {max_line} characters.",
        formatter_class=LimitsHelp,
    )
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt placed before the conversation")
    add_sampling_args(p, max_new_tokens=128)


def run(args: argparse.Namespace) -> int:
    from lumenlm.cli.generate import check_vocab, load_model, params_from_args
    from lumenlm.data.chat_template import ChatTemplate
    from lumenlm.errors import CheckpointError
    from lumenlm.infer.chat import ChatSession, run_repl
    from lumenlm.infer.text import replace_invalid

    params = params_from_args(args)
    model = load_model(
        args.model, args.device, args.dtype, args.verify,
        check=lambda m: check_vocab(params, m), what="lumenlm chat",
    )  # fmt: skip
    try:
        template = ChatTemplate.from_meta(model.meta)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{args.model}: {exc}") from None
    session = ChatSession(
        model,
        model.tokenizer,
        template=template,
        params=params,
        system=None if args.system is None else replace_invalid(args.system),
    )
    return run_repl(session)
