#!/usr/bin/env bash
# The main job, end to end on CPU in a few minutes:
# TinyStories (local pieces) -> byte-level BPE 8000 -> Librarian-1.3M -> eval -> sample -> export.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-demo_out}
MINUTES=${DEMO_MINUTES:-3}
export LUMENLM_DATA=${LUMENLM_DATA:-../shared/data}

echo "== presets"
$BIN/lumenlm presets

echo "== prepare TinyStories (byte-level BPE, vocab 8000)"
$BIN/lumenlm prepare tinystories --vocab-size 8000 --out "$OUT/data/tinystories" --force

echo "== train librarian-1.3m for $MINUTES minutes"
# The card's recipe is lr 1e-4 over many epochs; a few CPU minutes show more with a
# higher peak lr and a short warmup. Drop the --set flags to train the card's recipe.
$BIN/lumenlm train --preset librarian-1.3m --data "$OUT/data/tinystories" --out "$OUT/runs" \
    --max-minutes "$MINUTES" --set lr=2e-3 --set warmup_steps=20
RUN=$(ls -td "$OUT"/runs/run_* | head -1)
echo "run: $RUN"

echo "== evaluate (validation split)"
$BIN/lumenlm eval "$RUN" --data "$OUT/data/tinystories" --split val --out "$RUN/eval_val.json"

echo "== sample"
$BIN/lumenlm generate "$RUN" --prompt "Once upon a time" --max-new-tokens 60 \
    --temperature 0.8 --top-k 50 --top-p 0.9 --seed 0

echo "== chat (piped)"
printf 'Tell me a story about a cat.\n/exit\n' | $BIN/lumenlm chat "$RUN" --max-new-tokens 40 --seed 0

echo "== export to Hugging Face format"
$BIN/lumenlm export "$RUN" --format hf --out "$OUT/hf" --force

echo "== done: model card at $RUN/README.md"
