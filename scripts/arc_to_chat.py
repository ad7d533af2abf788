"""Write the ARC worked example's chats: `train.jsonl` (ARC-Easy + ARC-Challenge train)
and `val.jsonl` (their dev splits) for `lumenlm finetune` (see docs/FINETUNE.md).

    .venv/bin/python scripts/arc_to_chat.py $LUMENLM_DATA/arc OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys

from lumenlm.data.sft_arc import convert_arc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("arc_dir", help="folder with ARC-{Easy,Challenge}-{Train,Dev}.jsonl")
    p.add_argument("out_dir", help="where train.jsonl and val.jsonl go")
    args = p.parse_args(argv)
    print(json.dumps(convert_arc(args.arc_dir, args.out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
