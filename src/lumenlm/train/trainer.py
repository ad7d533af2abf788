"""The training loop.

`Trainer.fit()` reads top to bottom like nanoGPT's train.py: for each optimizer step,
accumulate gradients over micro-batches, clip, step, log, evaluate, checkpoint. The
pieces it calls live in small modules: `data` (windows, batch order), `optim`,
`schedule`, `precision`, `checkpoint`, `metrics`, `distributed`, `card`.

Exact resume: everything the next step depends on is saved at optimizer-step
boundaries (weights, AdamW moments, RNG states, sampler epoch/position, counters,
best metric, early-stopping counter); the learning rate is a pure function of the
step and the batch order a pure function of (seed, epoch, position). A resumed run
therefore ends with weights bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lumenlm.config import ModelConfig, TrainConfig
from lumenlm.errors import LumenError
from lumenlm.model import GPT
from lumenlm.modelio import atomic_write_text, load_state_into, save_model
from lumenlm.train import checkpoint as ckpt
from lumenlm.train import distributed as D
from lumenlm.train.card import render_card
from lumenlm.train.data import StepSampler, eval_indices, open_windows
from lumenlm.train.metrics import (
    MetricsLog,
    flops_per_token,
    guess_peak_flops,
    matmul_params,
    model_flops_utilization,
    plot_loss_curve,
)
from lumenlm.train.optim import build_optimizer
from lumenlm.train.precision import autocast, configure_matmul, make_scaler, resolve_precision
from lumenlm.train.runs import CARD, CHECKPOINTS, CONFIG, CURVE, METRICS, read_metrics
from lumenlm.train.schedule import lr_at


def _ppl(loss: float) -> float:
    """Perplexity, clamped so that a huge loss cannot overflow math.exp."""
    return math.exp(min(loss, 700.0))


class TrainingError(LumenError):
    """Training cannot go on (non-finite loss, data too small for a step)."""


class TrainingInterrupted(LumenError):
    """SIGINT/SIGTERM: a checkpoint was saved; the run can be resumed."""

    def __init__(self, message: str, run_dir: Path, signum: int) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.exit_code = 128 + signum


@dataclass
class Progress:
    """Counters saved in every checkpoint (with the sampler position)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    total_steps: int = 0
    best_val_loss: float | None = None  # best of all evaluations: picks checkpoints/best
    best_step: int | None = None
    es_best: float | None = None  # reference for early stopping (counted evaluations only)
    es_bad: int = 0  # counted evaluations without an improvement > min_delta
    last_eval_step: int = -1
    status: str = "running"


class Trainer:
    """Trains one run directory; `fit()` runs the loop until done, stopped or interrupted."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data_dir: str | Path,
        run_dir: str | Path,
        *,
        env: D.DistEnv | None = None,
        resume_from: Path | None = None,
        max_steps: int | None = None,
        max_minutes: float | None = None,
        precision: str | None = None,
        progress_bar: bool = True,
        name: str | None = None,
        replan: bool = False,
    ) -> None:
        self.mcfg, self.cfg = model_cfg, train_cfg
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.env = env or D.DistEnv()
        self.device = self.env.device
        self.main = self.env.is_main
        self.stop_at_step, self.max_minutes = max_steps, max_minutes
        self.progress_bar, self.name = progress_bar, name or self.run_dir.name
        self.precision = resolve_precision(precision or train_cfg.precision, self.device)
        tok = self.data_dir / "tokenizer.json"
        self.tokenizer_path = tok if tok.exists() else None
        cfg = train_cfg

        # -- data: windows and the resumable batch order --------------------------
        self.train_windows = open_windows(
            self.data_dir, "train", model_cfg.context_length, cfg.stride, cfg.doc_aligned
        )
        self.val_windows = open_windows(self.data_dir, "val", model_cfg.context_length, None)
        coverage = getattr(self.train_windows, "coverage", 1.0)
        if coverage < 0.9:
            self._say(
                f"notice: document-aligned windows cover {coverage:.0%} of the train tokens "
                "(documents longer than the context are cut); drop train.doc_aligned to "
                "train on every token"
            )
        self.sampler = StepSampler(
            len(self.train_windows),
            cfg.seed,
            cfg.batch_size,
            cfg.grad_accum,
            self.env.rank,
            self.env.world_size,
        )
        if self.sampler.steps_per_epoch == 0:
            raise TrainingError(
                f"train split has {len(self.train_windows)} windows of {model_cfg.context_length} "
                f"tokens; one optimizer step needs {self.sampler.windows_per_step} "
                f"(batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum} x "
                f"{self.env.world_size} process(es)); lower batch_size/grad_accum or add data"
            )
        # The same global validation windows at any world size (each rank takes a share).
        val_idx = eval_indices(
            len(self.val_windows), cfg.eval_batches, cfg.batch_size * self.env.world_size
        )
        val_idx = (
            val_idx[: len(val_idx) - len(val_idx) % self.env.world_size]
            if self.env.enabled
            else val_idx
        )
        if len(val_idx) == 0:
            raise TrainingError(
                f"val split has fewer windows ({len(self.val_windows)}) than processes"
            )
        self.val_idx = val_idx[self.env.rank :: self.env.world_size]

        # -- model, optimizer, precision --------------------------------------------
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = GPT(model_cfg)
        if resume_from is not None:
            load_state_into(model, resume_from / "model.safetensors")
        model.to(self.device)
        self.n_params = model.num_parameters()
        self.n_matmul_params = matmul_params(model)  # for the FLOP count behind MFU
        self.raw = model  # the GPT itself (sharded in place under FSDP): named state lives here
        # Wrap first, then compile: torch.compile(DDP(m)) lets Dynamo split graphs at
        # bucket boundaries, and FSDP2's fully_shard must see the plain modules. Weights
        # and optimizer state are saved from self.raw, so no "_orig_mod." prefix appears.
        model = D.wrap(model, cfg.strategy, self.env)
        if cfg.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self.model = model
        self.optimizer = build_optimizer(self.raw, cfg, self.device)
        self.scaler = make_scaler(self.precision, self.device)
        torch.manual_seed(cfg.seed + self.env.rank)  # per-rank dropout streams

        # -- counters, or the saved state when resuming --------------------------
        self.p = Progress()
        self._saved_status: str | None = None
        planned = cfg.max_steps or cfg.max_epochs * self.sampler.steps_per_epoch
        if resume_from is not None:
            self._load_trainer_state(resume_from)
            if replan and planned != self.p.total_steps:
                self._say(
                    f"notice: planned steps change from {self.p.total_steps} to {planned}; "
                    f"the {cfg.schedule} learning-rate schedule is re-planned from step "
                    f"{self.p.step} (the lr may jump)"
                )
                self.p.total_steps = planned
        else:
            self.p.total_steps = planned
        self.flops_per_token = flops_per_token(
            self.n_matmul_params,
            model_cfg.n_layers,
            model_cfg.context_length,
            model_cfg.d_model,
        )
        peak_tflops = cfg.peak_tflops
        self.peak_flops = (
            peak_tflops * 1e12
            if peak_tflops
            else guess_peak_flops(self.device.type, self.precision, cfg.tf32)
        )
        self._signal: int | None = None
        self._log: MetricsLog | None = None
        self._last_plot = 0.0
        self._train_seconds, self._steps_timed = 0.0, 0  # for the --max-minutes eval reserve
        # Test hook: seconds to sleep after each step, so tests can signal a run mid-way.
        self._step_delay = float(os.environ.get("LUMENLM_TEST_STEP_DELAY", "0") or 0)

    # =============================================================================
    def fit(self) -> Path:
        """Train until the planned steps/epochs are done, early stopping, a limit or a signal.

        The run's config.json records `status: running` with this process's pid and host
        while it trains, and `status: crashed` with the error if an exception ends it.
        """
        if self.main:
            self._update_config(
                {
                    "status": "running",
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "total_steps": self.p.total_steps,
                },
                drop=("error",),
            )
        restore_matmul = configure_matmul(self.device, self.cfg.tf32)
        try:
            return self._fit()
        except (TrainingInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            if self.main:
                lines = str(exc).strip().splitlines()
                status = "diverged" if self.p.status == "diverged" else "crashed"
                try:
                    self._update_config(
                        {"status": status, "error": lines[0] if lines else type(exc).__name__}
                    )
                except Exception:
                    pass
            raise
        finally:
            if self._log is not None:
                self._log.close()  # flush TensorBoard events also when the run fails
            restore_matmul()

    def _update_config(self, updates: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
        cfg_path = self.run_dir / CONFIG
        try:
            doc = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError):
            doc = {}
        doc.update(updates)
        for key in drop:
            doc.pop(key, None)
        atomic_write_text(cfg_path, json.dumps(doc, indent=2) + "\n")

    def _fit(self) -> Path:
        cfg, p, sampler = self.cfg, self.p, self.sampler
        accum = cfg.grad_accum
        tokens_per_step = sampler.windows_per_step * self.mcfg.context_length
        log = (
            MetricsLog(
                self.run_dir / METRICS,
                self.run_dir / "tensorboard" if cfg.tensorboard else None,
                resume_step=p.step,
            )
            if self.main
            else None
        )
        self._log = log
        if log is not None:
            log.truncate_after(p.step)  # a resumed run redoes the steps after its checkpoint
        self._announce()
        bar = self._progress_bar()
        old_handlers = self._install_signal_handlers()
        t_start = time.time()
        t_last, steps_since_log, loss_since_log = time.time(), 0, 0.0
        elapsed0 = p.elapsed_s
        stop_reason = None
        self.model.train()
        try:
            while True:
                # -- should this invocation stop before the next step? -------------
                stop_reason = self._should_stop(t_start)
                if stop_reason is not None:
                    break

                # -- one optimizer step: grad_accum micro-batches ------------------
                t_step = time.time()
                lr = lr_at(
                    p.step,
                    lr=cfg.lr,
                    total_steps=p.total_steps,
                    warmup_steps=cfg.warmup_steps,
                    min_lr_ratio=cfg.min_lr_ratio,
                    schedule=cfg.schedule,
                )
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=self.device)
                for m, idx in enumerate(sampler.step_indices()):
                    x, y = self._to_device(*self.train_windows.get_batch(idx))
                    with D.grad_sync(self.model, cfg.strategy, sync=m == accum - 1):
                        with autocast(self.precision, self.device):
                            loss = self.model(x, y).loss / accum
                        if self.scaler is not None:
                            self.scaler.scale(loss).backward()
                        else:
                            loss.backward()
                    loss_sum += loss.detach()
                loss_sum = D.all_reduce_mean(loss_sum, self.env)
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(
                    self.raw.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf")
                )
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                # One device-to-host sync per step for both numbers (clipping never
                # changes the loss, so checking it after the clip loses nothing).
                loss_value, grad_norm = torch.stack([loss_sum.float(), norm.float()]).tolist()
                if not math.isfinite(loss_value):
                    self._diverged(f"loss is {loss_value} at step {p.step + 1}")
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)  # skips the step on inf/nan gradients
                    self.scaler.update()
                elif not math.isfinite(grad_norm):
                    self._diverged(f"gradient norm is {grad_norm} at step {p.step + 1}")
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                p.step += 1
                p.tokens_seen += tokens_per_step
                epoch_end = sampler.advance()
                p.elapsed_s = elapsed0 + time.time() - t_start
                self._train_seconds += time.time() - t_step
                self._steps_timed += 1

                # -- log --------------------------------------------------------------
                steps_since_log += 1
                loss_since_log += loss_value
                if p.step % cfg.log_interval == 0 or p.step == 1 or p.step >= p.total_steps:
                    dt = max(time.time() - t_last, 1e-9)
                    tps = steps_since_log * tokens_per_step / dt
                    mfu = model_flops_utilization(
                        tps, self.flops_per_token, self.peak_flops, self.env.world_size
                    )
                    if log is not None:
                        record = {
                            "step": p.step,
                            "epoch": self._epoch_float(),
                            "loss": loss_since_log / steps_since_log,
                            "lr": lr,
                            "grad_norm": grad_norm,  # null when fp16 overflowed (step skipped)
                            "tokens_per_s": round(tps, 1),
                            "mfu": mfu,
                            "elapsed_s": round(p.elapsed_s, 3),
                            "tokens_seen": p.tokens_seen,
                        }
                        if self.scaler is not None:
                            record["loss_scale"] = self.scaler.get_scale()
                        log.write(record)
                    t_last, steps_since_log, loss_since_log = time.time(), 0, 0.0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", epoch=sampler.epoch, refresh=False
                    )

                # -- evaluate, early-stop, checkpoint at this step boundary -----------
                periodic = p.step % cfg.checkpoint_interval == 0 or (
                    epoch_end and cfg.checkpoint_each_epoch
                )
                do_eval = p.step % cfg.eval_interval == 0 or (epoch_end and cfg.eval_each_epoch)
                improved = early_stop = False
                t_pause = time.time()
                if do_eval:
                    counted = cfg.early_stopping_on == "eval" or epoch_end
                    improved, early_stop = self._evaluate_and_track(log, counted)
                if periodic or do_eval or early_stop:
                    self._save(periodic=periodic, best=improved)
                t_last += time.time() - t_pause  # evaluation/saving is not training time
                if early_stop:
                    stop_reason = "early_stopped"
                    break
                if self._step_delay:
                    time.sleep(self._step_delay)
        finally:
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()

        # -- leaving: evaluate if needed, save last, write the card ---------------------
        # A finished or early-stopped run evaluates its last step like any other (it may
        # become best). A paused one (--max-steps/--max-minutes) only logs a closing val
        # loss: best/ and early stopping must not depend on where a run was paused, so an
        # interrupted + resumed run picks the same best/ as an uninterrupted one. On a
        # signal, save last and leave at once.
        # Until a counted evaluation has chosen a best, a paused run stores its weights
        # as a provisional best/ (best_val_loss stays unset, so the first counted
        # evaluation after a resume replaces it, exactly as in an uninterrupted run).
        improved = False
        if stop_reason != "signal" and p.last_eval_step != p.step and p.step > 0:
            if stop_reason in ("max_steps", "max_minutes"):
                self._closing_evaluation(log)
                improved = p.best_val_loss is None
            else:
                improved, _ = self._evaluate_and_track(log, counted=False)
        p.status = {"signal": "interrupted", "max_steps": "paused", "max_minutes": "paused"}.get(
            stop_reason or "", stop_reason or "finished"
        )
        if p.step > 0:
            self._save(periodic=False, best=improved)
        if self.main:
            self._write_run_files(final=True)
        D.barrier(self.env)
        self._say(self._final_message(stop_reason))
        if stop_reason == "signal":
            sig = self._signal or signal.SIGTERM
            raise TrainingInterrupted(
                f"interrupted by {signal.Signals(sig).name} at step {p.step}; checkpoint saved; "
                f"resume with: lumenlm train --resume {self.run_dir}",
                self.run_dir,
                int(sig),
            )
        return self.run_dir

    _STOPS = (None, "finished", "max_steps", "max_minutes", "signal", "early_stopped")

    def _early_stopped_already(self) -> bool:
        """A resumed run that had early-stopped (and whose patience was not raised)."""
        patience = self.cfg.early_stopping_patience
        if patience is None:
            return self._saved_status == "early_stopped"
        return self.p.es_bad >= patience

    def _should_stop(self, t_start: float) -> str | None:
        """Why this invocation stops before the next step (the same answer on every rank)."""
        p, cfg = self.p, self.cfg
        code = 0
        if self._early_stopped_already():
            code = 5
            self._say(
                f"this run already stopped early at step {p.step} ({p.es_bad} evaluation(s) "
                f"without improvement, patience {cfg.early_stopping_patience}); not training "
                "further (raise early_stopping_patience with --set to continue)"
            )
        elif p.step >= p.total_steps or (
            cfg.max_steps is None and self.sampler.epoch >= cfg.max_epochs
        ):
            code = 1
        elif self._signal is not None:
            code = 4
        elif self.stop_at_step is not None and p.step >= self.stop_at_step:
            code = 2
        elif self.max_minutes is not None and (
            time.time() - t_start + self._final_eval_estimate() >= self.max_minutes * 60
        ):
            code = 3
        return self._STOPS[D.any_rank(code, self.env)]

    def _final_eval_estimate(self) -> float:
        """Seconds the closing evaluation will take (a forward is ~1/3 of a train micro-step),
        so that --max-minutes bounds the whole invocation, final evaluation included."""
        if self._steps_timed == 0 or self.p.last_eval_step == self.p.step:
            return 0.0
        per_micro = self._train_seconds / self._steps_timed / self.cfg.grad_accum
        n_batches = -(-len(self.val_idx) // self.cfg.batch_size)
        return n_batches * per_micro / 3

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to the training device; on CUDA through pinned memory, so the copy
        is asynchronous and overlaps the GPU work already queued."""
        if self.device.type != "cuda":
            return x.to(self.device), y.to(self.device)
        return (
            x.pin_memory().to(self.device, non_blocking=True),
            y.pin_memory().to(self.device, non_blocking=True),
        )

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy over the fixed validation windows (all ranks together)."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # never disturb the training RNG
            B = self.cfg.batch_size
            for i in range(0, len(self.val_idx), B):
                x, y = self._to_device(*self.val_windows.get_batch(self.val_idx[i : i + B]))
                with autocast(self.precision, self.device):
                    loss = self.model(x, y).loss
                total[0] += loss.double() * y.numel()
                total[1] += y.numel()
        D.all_reduce_sum(total, self.env)
        if hasattr(self.model, "reshard"):  # FSDP2 keeps the root unsharded after a no-grad forward
            self.model.reshard()
        self.model.train()
        return float(total[0] / total[1])

    def _evaluate_and_track(self, log: MetricsLog | None, counted: bool) -> tuple[bool, bool]:
        """Evaluate; update best checkpoint choice and (if `counted`) early stopping.

        Returns (improved: write checkpoints/best, early_stop).
        """
        p, cfg = self.p, self.cfg
        val = self.evaluate()
        p.last_eval_step = p.step
        if not math.isfinite(val):
            self._diverged(f"validation loss is {val} at step {p.step}")
        improved = p.best_val_loss is None or val < p.best_val_loss - cfg.early_stopping_min_delta
        if improved:
            p.best_val_loss, p.best_step = val, p.step
        early_stop = False
        if counted:
            if p.es_best is None or val < p.es_best - cfg.early_stopping_min_delta:
                p.es_best, p.es_bad = val, 0
            else:
                p.es_bad += 1
            patience = cfg.early_stopping_patience
            early_stop = patience is not None and p.es_bad >= patience
        self._log_eval(log, val)
        return improved, early_stop

    def _closing_evaluation(self, log: MetricsLog | None) -> None:
        """Evaluate and log (`"closing": true`) without touching best or early stopping."""
        val = self.evaluate()
        if not math.isfinite(val):
            self._diverged(f"validation loss is {val} at step {self.p.step}")
        self._log_eval(log, val, closing=True)

    def _log_eval(self, log: MetricsLog | None, val: float, closing: bool = False) -> None:
        p, cfg = self.p, self.cfg
        if log is None:
            return
        record = {
            "step": p.step,
            "epoch": self._epoch_float(),
            "val_loss": val,
            "val_ppl": _ppl(val),
            "best_val_loss": p.best_val_loss,
            "patience_left": (cfg.early_stopping_patience - p.es_bad)
            if cfg.early_stopping_patience
            else None,
            "elapsed_s": round(p.elapsed_s, 3),
            "tokens_seen": p.tokens_seen,
        }
        if closing:
            record["closing"] = True
        log.write(record)
        if time.time() - self._last_plot >= 30.0:  # plotting costs ~0.3 s: throttle it
            plot_loss_curve(read_metrics(self.run_dir), self.run_dir / CURVE, self.name)
            self._last_plot = time.time()

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, periodic: bool, best: bool) -> None:
        """Write checkpoints/last (and step_<N>, best) at this optimizer-step boundary."""
        osd = D.full_optimizer_state(self.raw, self.optimizer)
        model_sd = (
            D.full_model_state(self.raw)
            if self.cfg.strategy == "fsdp" and self.env.enabled
            else None
        )
        rng_all = D.all_gather_object(ckpt.capture_rng(), self.env)
        if self.main:
            tensors, optim_js = ckpt.flatten_optimizer(osd)
            for r, (_, rng_t) in enumerate(rng_all):
                for key, t in rng_t.items():
                    tensors[f"rng/{key}/rank{r}"] = t
            state = {
                "format": "lumenlm-trainer",
                "version": 1,
                **asdict(self.p),
                "sampler": self.sampler.state_dict(),
                "world_size": self.env.world_size,
                "optimizer": optim_js,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": [js for js, _ in rng_all],
                "precision": self.precision,
            }

            def write_model(d: Path) -> None:
                model = self.raw
                if model_sd is not None:
                    model = GPT(self.mcfg)
                    model.load_state_dict(model_sd)
                save_model(
                    model,
                    d,
                    tokenizer_path=self.tokenizer_path,
                    extra={
                        "training": {
                            "run": self.run_dir.name,
                            "step": self.p.step,
                            "train": asdict(self.cfg),
                        }
                    },
                )

            root = self.run_dir / CHECKPOINTS
            card = self._card(curve=None)
            ckpt.write_checkpoint(root / "last", write_model, tensors, state, card)
            if periodic:
                ckpt.write_checkpoint(
                    root / f"step_{self.p.step}", write_model, tensors, state, card
                )
                ckpt.prune_periodic(root, self.cfg.keep_checkpoints)
            if best:
                ckpt.write_checkpoint(root / "best", write_model, tensors, state, card)
            ckpt.prune_leftovers(root)  # stale .NAME.old.* / .NAME.tmp.* from a crash
            self._write_run_files(final=False)
        D.barrier(self.env)

    def _load_trainer_state(self, path: Path) -> None:
        state, tensors = ckpt.load_trainer_state(path)
        known = set(Progress.__dataclass_fields__)
        self.p = Progress(**{k: v for k, v in state.items() if k in known})
        self._saved_status = self.p.status
        self.p.status = "running"
        self.sampler.load_state_dict(state["sampler"])
        osd = ckpt.unflatten_optimizer(tensors, state["optimizer"])
        D.load_optimizer_state(self.raw, self.optimizer, osd)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rank = self.env.rank
        rng_js = state.get("rng") or []
        key = f"rng/torch_cpu/rank{rank}"
        if rank < len(rng_js) and key in tensors:
            rank_t = {
                k.split("/")[1]: v
                for k, v in tensors.items()
                if k.startswith("rng/") and k.endswith(f"/rank{rank}")
            }
            ckpt.restore_rng(rng_js[rank], rank_t)
        else:  # resumed on more ranks than saved: fresh, deterministic stream for this rank
            torch.manual_seed(self.cfg.seed + 1_000_003 * (rank + 1) + self.p.step)

    # -- run files ----------------------------------------------------------------------
    def _card(self, curve: str | None = CURVE) -> str:
        p = self.p
        records = read_metrics(self.run_dir) if self.main else []
        losses = [r["loss"] for r in records if r.get("loss") is not None]
        progress = {
            **asdict(p),
            "epoch": self.sampler.epoch,
            "precision": self.precision,
            "world_size": self.env.world_size,
            "loss": losses[-1] if losses else None,
            "best_val_ppl": _ppl(p.best_val_loss) if p.best_val_loss is not None else None,
        }
        data = {
            "dir": str(self.data_dir),
            "train_tokens": len(self.train_windows.tokens),
            "val_tokens": len(self.val_windows.tokens),
            "tokenizer": "tokenizer.json" if self.tokenizer_path else None,
        }
        return render_card(
            name=self.name,
            model=self.mcfg,
            train=self.cfg,
            n_params=self.n_params,
            data=data,
            progress=progress,
            curve=curve,
        )

    def _write_run_files(self, final: bool) -> None:
        self._update_config(
            {
                "status": self.p.status,
                "step": self.p.step,
                "best_val_loss": self.p.best_val_loss,
                "best_step": self.p.best_step,
                "total_steps": self.p.total_steps,
            }
        )
        atomic_write_text(self.run_dir / CARD, self._card())
        if final or not (self.run_dir / CURVE).exists():
            plot_loss_curve(read_metrics(self.run_dir), self.run_dir / CURVE, self.name)

    # -- small helpers ----------------------------------------------------------------
    def _epoch_float(self) -> float:
        return round(self.sampler.epoch + self.sampler.position / self.sampler.n, 4)

    def _diverged(self, what: str) -> None:
        self.p.status = "diverged"
        if self.main:
            try:
                self._write_run_files(final=True)
            except Exception:
                pass
        last = self.run_dir / CHECKPOINTS / "last"
        kept = (
            f"last good checkpoint kept at {last}"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"{what}; stopped without saving ({kept}); try a lower lr or --precision fp32"
        )

    def _say(self, msg: str) -> None:
        if self.main and msg:
            print(msg, file=sys.stderr, flush=True)

    def _announce(self) -> None:
        s = self.sampler
        self._say(
            f"run {self.run_dir} | {self.n_params:,} parameters | device {self.device} "
            f"({self.precision}{', compiled' if self.cfg.compile else ''}, {self.env.world_size} process(es), "
            f"{self.cfg.strategy if self.env.enabled else 'single'}) | "
            f"{s.steps_per_epoch} steps/epoch, {self.p.total_steps} planned, starting at step {self.p.step}"
        )

    def _final_message(self, reason: str | None) -> str:
        p = self.p
        best = (
            f", best val loss {p.best_val_loss:.4f} at step {p.best_step}"
            if p.best_val_loss is not None
            else ""
        )
        how = {
            "finished": "finished",
            "early_stopped": "early stopping (no val improvement)",
            "max_steps": "stopped at --max-steps",
            "max_minutes": "stopped at --max-minutes",
            "signal": "interrupted",
        }.get(reason or "", reason or "")
        more = (
            f"; continue with: lumenlm train --resume {self.run_dir}"
            if reason in ("max_steps", "max_minutes")
            else ""
        )
        return f"{how} at step {p.step}/{p.total_steps}{best}; run dir {self.run_dir}{more}"

    def _progress_bar(self) -> Any:
        if not (self.main and self.progress_bar):
            return None
        from tqdm.auto import tqdm

        # In a log file (not a terminal) a redraw every second would flood it.
        interval = 1.0 if sys.stderr.isatty() else 30.0
        return tqdm(
            total=self.p.total_steps,
            initial=self.p.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=interval,
        )

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM set a flag checked at the next step boundary (a second SIGINT aborts)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._signal = signum

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)
