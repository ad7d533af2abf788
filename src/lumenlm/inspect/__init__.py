"""Look inside a model on one text, through its TransformerLens-named hook points.

One analysis per module, each a function returning JSON-able data (for a JSON endpoint)
and a `write` that draws it:
- `attention_maps(model, tokenizer, text)` (attention.png);
- `logit_lens(model, tokenizer, text, top_k)` (module `lens`; logit_lens.png, logit_lens.json);
- `token_losses(model, tokenizer, text, top_k)` (token_loss.html);
- `direct_logit_attribution(model, tokenizer, text)` (dla_heads.png, dla_layers.png);
- `head_ablation(model, tokenizer, text)` (head_ablation.png);
- `induction_scores(model, tokenizer)` (induction.png).
`run_analyses` returns several by name; `write_report` writes them and an index.html
(`lumenlm inspect`). `tokenizer=None` means the model directory's own.
"""

from lumenlm.inspect.ablation import head_ablation
from lumenlm.inspect.attention import attention_maps
from lumenlm.inspect.attribution import direct_logit_attribution
from lumenlm.inspect.induction import induction_scores
from lumenlm.inspect.lens import logit_lens
from lumenlm.inspect.report import ANALYSES, Report, parse_analyses, run_analyses, write_report
from lumenlm.inspect.text import Encoded, check_top_k, encode_text
from lumenlm.inspect.token_loss import token_losses

__all__ = [
    "ANALYSES",
    "Encoded",
    "Report",
    "attention_maps",
    "check_top_k",
    "direct_logit_attribution",
    "encode_text",
    "head_ablation",
    "induction_scores",
    "logit_lens",
    "parse_analyses",
    "run_analyses",
    "token_losses",
    "write_report",
]
