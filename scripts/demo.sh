#!/usr/bin/env bash
# The main job, end to end on CPU in about five minutes:
#   lumenlm reproduce librarian --recipe fast
# TinyStories (local pieces) -> byte-level BPE 8000 -> Librarian-1.3M trained with the fast
# recipe for DEMO_MINUTES -> the card's metrics -> a story -> model card -> HF export.
# Running it again continues where it stopped (each finished step is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo_out}
MINUTES=${DEMO_MINUTES:-5}
export LUMENLM_DATA=${LUMENLM_DATA:-../shared/data}

STORIES="$LUMENLM_DATA/tinystories"
if ! ls "$STORIES"/TinyStories*.txt >/dev/null 2>&1 && [ -z "${LUMENLM_ONLINE:-}" ]; then
    cat >&2 <<MSG
demo: no TinyStories text found in $STORIES/
  Put TinyStories-train.txt and TinyStories-valid.txt (from huggingface.co/datasets/roneneldan/TinyStories)
  or the local pieces TinyStories-train.head.txt, TinyStories-train.sample2997.txt and
  TinyStories-valid.head.hf-rows.txt into $STORIES/ (or set LUMENLM_DATA=DIR to a folder
  that has tinystories/ inside), then run \`make demo\` again.
  Online, set LUMENLM_ONLINE=1 to let \`lumenlm prepare\` download it.
MSG
    exit 1
fi

echo "== lumenlm reproduce librarian --recipe fast --budget-minutes $MINUTES"
$BIN/lumenlm reproduce librarian --recipe fast --budget-minutes "$MINUTES" --out "$OUT" \
    --device cpu --no-progress

RUN=$(ls -td "$OUT"/runs/run_* | head -1)
echo
echo "== a story from the model (prompt: \"Once upon a time\")"
cat "$OUT/sample.txt"
echo
$BIN/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
lm = json.loads((out / "eval.json").read_text())["lm"]
from lumenlm.reproduce import get_card

card = get_card("librarian")
ours, theirs = lm["perplexity"], card.metrics["perplexity"]
print("== summary")
print(f"Trained Librarian-1.3M (the {card.title} architecture) on the local TinyStories pieces.")
print(f"Validation perplexity {ours:.1f} (top-1 {100 * lm['top1']:.1f}%); the card reports "
      f"{theirs:.1f} after 20 epochs on 2% of the full TinyStories.")
print("A few minutes on a CPU give simple, locally fluent sentences that lose the plot;")
print("more minutes (--budget-minutes) and more data bring it toward the card.")
PY
echo
echo "model card: $OUT/MODEL_CARD.md"
echo "run:        $RUN"
echo
echo "== next: three commands to try"
echo "  .venv/bin/lumenlm generate $RUN --prompt \"Once upon a time, a little fox\" --temperature 0.8"
echo "  .venv/bin/lumenlm chat $RUN"
echo "  .venv/bin/lumenlm reproduce librarian --recipe fast --budget-minutes 10 --out reproduce/librarian-10min"
