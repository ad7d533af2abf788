"""Muon (`train.optimizer=muon`): the orthogonalization, which parameters it takes, that
its AdamW groups are exactly AdamW, and that a Muon run trains and resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lumenlm.config import TrainConfig
from lumenlm.errors import ConfigError
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from lumenlm.train.muon import MuonAdamW, is_muon_param, muon_groups, orthogonalize
from lumenlm.train.optim import build_optimizer
from train_helpers import assert_same_state, make_dataset, train_tiny


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (48, 200), (3, 50)])
def test_orthogonalize_gives_singular_values_near_one_along_the_svd(shape) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    x = orthogonalize(g)
    assert x.shape == g.shape
    s = torch.linalg.svdvals(x)
    # the quintic trades exactness for speed: singular values land in about [0.7, 1.2]
    assert s.min() > 0.5 and s.max() < 1.3
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh  # the exact nearest semi-orthogonal matrix
    cos = (x * polar).sum() / (x.norm() * polar.norm())
    assert cos > 0.95


@pytest.mark.parametrize("preset", ["librarian-1.3m", "lumiere-1m", "tiny", "tiny-gpt2"])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(preset: str) -> None:
    model = GPT(get_preset(preset).model)
    groups = muon_groups(model, 0.1, 0.95)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for p in groups[0]["params"]]
    assert muon and all(n.startswith("blocks.") and n.endswith(".weight") for n in muon)
    others = [names[id(p)] for g in groups[1:] for p in g["params"]]
    assert any("emb" in n for n in others)  # embeddings (and the tied head) stay AdamW
    assert all(not is_muon_param(n, p) for n, p in model.named_parameters() if n in others)


def test_adamw_groups_step_exactly_as_torch_adamw() -> None:
    torch.manual_seed(0)
    a, b = GPT(get_preset("tiny").model), GPT(get_preset("tiny").model)
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(lr=1e-3, optimizer="muon")
    opt_a = build_optimizer(a, cfg, torch.device("cpu"))
    assert isinstance(opt_a, MuonAdamW)
    # the same AdamW on b's non-Muon parameters only
    plain = [p for n, p in b.named_parameters() if not is_muon_param(n, p)]
    opt_b = torch.optim.AdamW(
        [{"params": [p for p in plain if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in plain if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # the same gradients on both sides, step after step
        grads = {n: torch.randn(p.shape, generator=g) for n, p in a.named_parameters()}
        for m in (a, b):
            for n, p in m.named_parameters():
                p.grad = grads[n].clone()
        opt_a.step()
        opt_b.step()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if not is_muon_param(n, pa):
            assert torch.equal(pa, pb), n
    moved = [n for n, p in a.named_parameters() if is_muon_param(n, p)]
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    assert all(not torch.equal(sa[n], sb[n]) for n in moved)  # Muon moved its matrices


def test_muon_run_learns_and_resumes_bit_identically(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_train=1000, n_val=300)
    kw = {"optimizer": "muon", "muon_lr": 0.02, "lr": 3e-3}
    full = train_tiny(data, tmp_path / "full", **kw)
    part = train_tiny(data, tmp_path / "part", stop=5, **kw)
    from lumenlm.train import train

    train(resume=part, device="cpu", progress_bar=False)
    assert_same_state(part, full)  # Muon's momentum buffers are checkpointed too
    import json

    losses = [json.loads(x)["loss"] for x in (full / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]  # fmt: skip
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("sets", "match"),
    [({"optimizer": "sgd"}, "train.optimizer"), ({"muon_lr": 0.0}, "muon_lr"),
     ({"muon_momentum": 1.0}, "muon_momentum"),
     ({"optimizer": "muon", "precision": "fp16"}, "fp16"),
     ({"optimizer": "muon", "strategy": "fsdp"}, "FSDP")],
)  # fmt: skip
def test_bad_muon_settings_are_one_line_errors(sets: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**sets)
