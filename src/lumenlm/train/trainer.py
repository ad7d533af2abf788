"""The training loop.

`Trainer.fit()` reads top to bottom like nanoGPT's train.py: for each optimizer step,
accumulate gradients over micro-batches, clip, step, log, evaluate, checkpoint. Every
other job has its own owner: the batch order (`data.StepSampler`), the learning rate
(`schedule`), early stopping (`early_stop`), the checkpoint files and the state packed
into them (`checkpoint`), the run's config.json (`runs.RunRecord`), the terminal
(`console`), signals (`lumenlm.signals`), and the reasons to stop (`stop`).

Exact resume: everything the next step depends on is saved at optimizer-step
boundaries (weights, AdamW moments, RNG states, sampler epoch/position, counters,
best metric, early-stopping counter); the learning rate is a pure function of the
step and the batch order a pure function of (seed, epoch, position). A resumed run
therefore ends with weights bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lumenlm.config import ModelConfig, TrainConfig
from lumenlm.model import GPT
from lumenlm.modelio import load_state_into, save_model
from lumenlm.signals import StopRequest
from lumenlm.train import checkpoint as ckpt
from lumenlm.train import distributed as D
from lumenlm.train import metrics
from lumenlm.train.card import run_card
from lumenlm.train.checkpoint import Progress
from lumenlm.train.console import Console, final_message
from lumenlm.train.data import TrainData
from lumenlm.train.early_stop import EarlyStopping
from lumenlm.train.loss import accumulate
from lumenlm.train.muon import lr_scale
from lumenlm.train.optim import build_optimizer
from lumenlm.train.precision import configure_matmul, make_scaler, resolve_precision
from lumenlm.train.runs import CHECKPOINTS, CURVE, RunFiles, RunRecord
from lumenlm.train.schedule import lr_at, plan_decay
from lumenlm.train.stop import (
    StopReason,
    TimeBudget,
    TrainingInterrupted,
    diverged_error,
    write_error,
)
from lumenlm.train.validate import validation_loss

if TYPE_CHECKING:
    from lumenlm.train.sft_data import SFTTrainData


class Trainer:
    """Trains one run directory; `fit()` runs the loop until done, stopped or interrupted.

    `stop_at_step` and `max_minutes` bound this invocation only (the schedule is
    `train_cfg.max_steps` / `max_epochs`). `on_step(trainer)` runs after every
    optimizer step (tests use it to act mid-run). `record` is the run's config.json
    (by default the one in `run_dir`, or a new one). `data` replaces the windows of
    `data_dir` (fine-tuning passes its packed, masked rows); `init_state` are starting
    weights for a new run (fine-tuning, `--init-from`), and `origin` what the card says
    about them and the data. `clock` times the `max_minutes` budget (tests inject one).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data_dir: str | Path,
        run_dir: str | Path,
        *,
        env: D.DistEnv | None = None,
        record: RunRecord | None = None,
        resume_from: Path | None = None,
        stop_at_step: int | None = None,
        max_minutes: float | None = None,
        progress_bar: bool = True,
        replan: bool = False,
        on_step: Callable[[Trainer], None] | None = None,
        clock: Callable[[], float] = time.time,
        data: TrainData | SFTTrainData | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        cfg = self.cfg = train_cfg
        self.mcfg = model_cfg
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.env = env or D.DistEnv()
        self.device, self.main = self.env.device, self.env.is_main
        self.files = RunFiles(record or RunRecord.open(self.run_dir, write=self.main), self.main)
        self.stop_at_step, self.max_minutes, self.on_step = stop_at_step, max_minutes, on_step
        self.clock = clock
        self.console = Console(self.main, progress_bar)
        self.precision = resolve_precision(
            cfg.precision, self.device, model_cfg, cfg.batch_size, self.env.world_size
        )  # auto on a native-bf16 CPU probes this model at these shapes (cached)
        # -- data: windows, the resumable batch order, the fixed validation windows --
        self.data = data or TrainData(
            self.data_dir, model_cfg.context_length, model_cfg.vocab_size, cfg, self.env
        )
        self.origin = origin
        self.console.notice(self.data.notice() or "")
        self.sampler = self.data.sampler

        # -- model, optimizer, precision --------------------------------------------
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = GPT(model_cfg)
        if resume_from is not None:
            load_state_into(model, resume_from / "model.safetensors")
        elif init_state is not None:
            model.load_state_dict(init_state)
        model.to(self.device)
        self.n_params = model.num_parameters()
        self.mfu = metrics.mfu_meter(model, cfg, self.device, self.precision, self.env.world_size)
        self.raw = model  # the GPT itself (sharded in place under FSDP): named state lives here
        # Wrap first, then compile: torch.compile(DDP(m)) lets Dynamo split graphs at
        # bucket boundaries, and FSDP2's fully_shard must see the plain modules. Weights
        # and optimizer state are saved from self.raw, so no "_orig_mod." prefix appears.
        model = D.wrap(model, cfg.strategy, self.env)
        self.model = torch.compile(model) if cfg.compile else model
        self.optimizer = build_optimizer(self.raw, cfg, self.device)
        self.scaler = make_scaler(self.precision, self.device)
        torch.manual_seed(cfg.seed + self.env.rank)  # per-rank dropout streams
        self.live = ckpt.Live(self.raw, self.optimizer, self.scaler, self.sampler, self.env)

        # -- counters, or the saved state when resuming --------------------------
        self.early = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
        planned = cfg.max_steps or cfg.max_epochs * self.sampler.steps_per_epoch
        self.p = Progress(total_steps=planned)
        self._saved_status: str | None = None
        if resume_from is not None:
            self.p = ckpt.restore_state(resume_from, self.early, self.live, cfg.seed)
            self._saved_status, self.p.status = self.p.status, "running"
            if replan and planned != self.p.total_steps:
                self.console.notice(
                    f"planned steps change from {self.p.total_steps} to {planned}; the "
                    f"{cfg.schedule} learning-rate schedule is re-planned from step "
                    f"{self.p.step} (the lr may jump)"
                )
                self.p.total_steps, self.p.decay_steps = planned, None
        self.stop = StopRequest()

    # =============================================================================
    def fit(self) -> Path:
        """Train until the planned steps/epochs are done, early stopping, a limit or a signal.

        The run's config.json records `status: running` with this process's pid and host
        while it trains, and `status: crashed` with the error if an exception ends it.
        """
        self.files.mark_running(self.p.total_steps)
        restore_matmul = configure_matmul(self.device, self.cfg.tf32)
        try:
            return self._fit()
        except (TrainingInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.files.mark_failed(exc, diverged=self.p.status == "diverged")
            if (failed_write := write_error(exc, self.run_dir)) is not None:
                raise failed_write from exc  # disk full, read-only: the checkpoint is intact
            raise
        finally:
            self.files.close()  # flush TensorBoard events also when the run fails
            restore_matmul()

    def _fit(self) -> Path:
        cfg, p, sampler = self.cfg, self.p, self.sampler
        self.files.open_metrics(p.step, cfg.tensorboard)
        where = cfg.strategy if self.env.enabled else "single"
        setup = f"{self.precision}{', compiled' if cfg.compile else ''}, "
        setup += f"{self.env.world_size} process(es), {where}"
        self.console.announce(self.run_dir, self.n_params, self.device, setup, sampler, p)
        bar = self.console.progress_bar(p, self.max_minutes)
        self.budget = TimeBudget(self.max_minutes, self.clock)
        self.since_log = metrics.Throughput()
        elapsed0 = p.elapsed_s
        self.model.train()
        with self.stop:
            try:
                while (reason := self._should_stop()) is None:
                    t_step = self.budget.now()
                    lr = lr_at(
                        p.step,
                        lr=cfg.lr,
                        total_steps=p.total_steps,
                        warmup_steps=cfg.warmup_steps,
                        min_lr_ratio=cfg.min_lr_ratio,
                        schedule=cfg.schedule,
                        decay_fraction=cfg.decay_fraction,
                        decay_steps=p.decay_steps,
                    )
                    loss, grad_norm = self._step(lr)
                    p.step += 1
                    p.tokens_seen += sampler.windows_per_step * self.mcfg.context_length
                    epoch_end = sampler.advance()
                    p.elapsed_s = elapsed0 + self.budget.elapsed()
                    self.budget.step_done(self.budget.now() - t_step)
                    self._plan_decay()
                    self._log_step(loss, grad_norm, lr)
                    if bar is not None:
                        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "epoch": sampler.epoch}
                        self.console.advance(bar, p, self.budget.elapsed(), postfix)
                    if self._at_boundary(epoch_end):
                        reason = StopReason.EARLY_STOPPED
                        break
                    if self.on_step is not None:
                        self.on_step(self)
            finally:
                if bar is not None:
                    bar.close()
        if reason is StopReason.TIME_LIMIT and p.decay_steps is not None:
            # The decay was fitted to the budget, so the budget is the run's end: steps
            # slower than measured may leave a few of it undone, and the run still
            # finishes here (its last weights are its result, and best/ knows them).
            p.total_steps = p.step
            reason = StopReason.FINISHED
        return self._leave(reason)

    def _plan_decay(self) -> None:
        """Under `--max-minutes`, fix a wsd schedule's decay (its start is now, its length
        from the measured step rate) once 1 - decay_fraction of the time is spent; the
        run's planned end becomes the decay's end, and both are saved for resume."""
        p, cfg, budget = self.p, self.cfg, self.budget
        if cfg.schedule != "wsd" or budget.limit_s is None or p.decay_steps is not None:
            return
        if p.step < cfg.warmup_steps:
            return
        eval_batches = -(-len(self.data.val_idx) // cfg.batch_size)
        planned = plan_decay(
            p.step,
            p.total_steps,
            elapsed_s=budget.elapsed(),
            limit_s=budget.limit_s,
            steps_done=budget.steps,
            decay_fraction=cfg.decay_fraction,
            reserve_s=budget.reserve(cfg.grad_accum, eval_batches),
        )
        if self.env.enabled:  # one clock decides for every rank
            planned = D.broadcast_object(planned, self.env)
        if planned is None:
            return
        p.total_steps, p.decay_steps = planned
        self.console.notice(
            f"wsd: the learning-rate decay starts at step {p.step} and ends at step "
            f"{p.total_steps} ({p.decay_steps} steps, sized to end within --max-minutes)"
        )

    def _step(self, lr: float) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches; (mean loss, grad norm)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr * lr_scale(group, cfg.lr, cfg.muon_lr)
        batches = [self.data.train.get_batch(idx) for idx in self.sampler.step_indices()]
        loss_sum = accumulate(
            self.model,
            batches,
            env=self.env,
            precision=self.precision,
            strategy=cfg.strategy,
            ignore_index=self.mcfg.ignore_index,
            scaler=self.scaler,
        )
        loss_sum = D.all_reduce_mean(loss_sum, self.env)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(
            self.raw.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf")
        )
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        # One device-to-host sync per step for both numbers (clipping never changes the
        # loss, so checking it after the clip loses nothing).
        loss_value, grad_norm = torch.stack([loss_sum.float(), norm.float()]).tolist()
        step = self.p.step + 1
        if not math.isfinite(loss_value):
            self._diverged(f"loss is {loss_value} at step {step}")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step on inf/nan gradients
            self.scaler.update()
        elif not math.isfinite(grad_norm):
            self._diverged(f"gradient norm is {grad_norm} at step {step}")
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    def _log_step(self, loss: float, grad_norm: float, lr: float) -> None:
        """Write a metrics record every log_interval steps (and at the first and last)."""
        p, since = self.p, self.since_log
        since.add(loss)
        if not (p.step % self.cfg.log_interval == 0 or p.step == 1 or p.step >= p.total_steps):
            return
        tps = since.tokens_per_s(self.sampler.windows_per_step * self.mcfg.context_length)
        if self.main:
            mfu = self.mfu(tps)
            scale = self.scaler.get_scale() if self.scaler is not None else None
            epoch, loss = self._epoch_float(), since.mean_loss()
            self.files.log(metrics.train_record(p, epoch, loss, lr, grad_norm, tps, mfu, scale))
        since.reset()

    def _at_boundary(self, epoch_end: bool) -> bool:
        """Evaluate and checkpoint when due at this step boundary; True to stop early."""
        cfg, p = self.cfg, self.p
        periodic = p.step % cfg.checkpoint_interval == 0 or (
            epoch_end and cfg.checkpoint_each_epoch
        )
        do_eval = p.step % cfg.eval_interval == 0 or (epoch_end and cfg.eval_each_epoch)
        improved = early_stop = False
        t_pause = time.time()
        if do_eval:
            counted = cfg.early_stopping_on == "eval" or epoch_end
            improved, early_stop = self._evaluate_and_track(counted)
        if periodic or do_eval or early_stop:
            self._save(periodic=periodic, best=improved)
        self.since_log.exclude(time.time() - t_pause)  # evaluation/saving is not training
        return early_stop

    def _leave(self, reason: StopReason) -> Path:
        """Evaluate if needed, save last, write the run files and say how it ended.

        A finished or early-stopped run evaluates its last step like any other. A paused
        one only logs a closing val loss, so that best/ and early stopping never depend
        on where a run was paused; until a counted evaluation has chosen a best, its
        weights are a provisional best/ (best_val_loss stays unset). On a signal: save
        last and leave at once.
        """
        p = self.p
        improved = False
        if reason is not StopReason.SIGNAL and p.last_eval_step != p.step and p.step > 0:
            if reason.paused:
                self._evaluate_and_track(counted=False, closing=True)
                improved = p.best_val_loss is None
            else:
                improved, _ = self._evaluate_and_track(counted=False)
        p.status = reason.status
        if p.step > 0:
            self._save(periodic=False, best=improved)
        if self.main:
            self._write_run_files(final=True)
        D.barrier(self.env)
        self.console.say(final_message(reason, p, self.run_dir))
        if reason is StopReason.SIGNAL:
            sig = self.stop.signum or 15
            raise TrainingInterrupted(
                f"interrupted by {self.stop.name} at step {p.step}; checkpoint saved; "
                f"resume with: lumenlm train --resume {self.run_dir}",
                self.run_dir,
                int(sig),
            )
        return self.run_dir

    def _should_stop(self) -> StopReason | None:
        """Why this invocation stops before the next step (the same answer on every rank)."""
        p, cfg = self.p, self.cfg
        if self.early.patience is None:  # a resumed run that had early-stopped
            early_stopped = self._saved_status == "early_stopped"
        else:  # ... unless its patience was raised
            early_stopped = self.early.stopped
        closing_eval = p.last_eval_step != p.step
        eval_batches = -(-len(self.data.val_idx) // cfg.batch_size) if closing_eval else 0
        reason = StopReason.first(
            early_stopped=early_stopped,
            done=p.step >= p.total_steps
            or (cfg.max_steps is None and self.sampler.epoch >= cfg.max_epochs),
            signalled=self.stop.signum is not None,
            step_limit=self.stop_at_step is not None and p.step >= self.stop_at_step,
            time_limit=self.budget.used_up(cfg.grad_accum, eval_batches),
        )
        if reason is StopReason.EARLY_STOPPED:
            self.console.say(
                f"this run already stopped early at step {p.step} ({self.early.bad} "
                f"evaluation(s) without improvement, patience {cfg.early_stopping_patience}); "
                "not training further (raise early_stopping_patience with --set to continue)"
            )
        agreed = D.any_rank(int(reason or 0), self.env)
        return StopReason(agreed) if agreed else None

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self) -> float:
        """Mean cross-entropy over the trained targets of the fixed validation windows
        (all ranks together): every token in pretraining, assistant tokens in fine-tuning."""
        d = self.data
        return validation_loss(
            self.model,
            d.val,
            d.val_idx,
            self.cfg.batch_size,
            self.precision,
            self.env,
            self.mcfg.ignore_index,
        )

    def _evaluate_and_track(self, counted: bool, closing: bool = False) -> tuple[bool, bool]:
        """Evaluate and log; update the best checkpoint choice and (if `counted`) early
        stopping. A `closing` evaluation (of a paused run) touches neither.

        Returns (improved: write checkpoints/best, early_stop).
        """
        p = self.p
        val = self.evaluate()
        if not math.isfinite(val):
            self._diverged(f"validation loss is {val} at step {p.step}")
        improved = early_stop = False
        if not closing:
            p.last_eval_step = p.step
            improved = p.best_val_loss is None or val < p.best_val_loss - self.early.min_delta
            if improved:
                p.best_val_loss, p.best_step = val, p.step
            early_stop = counted and self.early.update(val)
        epoch, left = self._epoch_float(), self.early.patience_left
        self.files.log(metrics.eval_record(p, epoch, val, left, closing), plot=True)
        return improved, early_stop

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, periodic: bool, best: bool) -> None:
        """Write checkpoints/last (and step_<N>, best) at this optimizer-step boundary;
        never weights that are non-finite or exploded (the last good checkpoint stays)."""
        worst = ckpt.largest_weight(self.raw)
        if D.any_rank(int(not worst < ckpt.EXPLODED), self.env):
            self._diverged(f"weights exploded (max |w| = {worst:.3g}) at step {self.p.step}")
        packed = ckpt.gather_state(self.p, self.early, self.live, self.precision)
        fsdp = self.cfg.strategy == "fsdp" and self.env.enabled
        model_sd = D.full_model_state(self.raw) if fsdp else None  # collective too
        if packed is not None:
            model = self.raw
            if model_sd is not None:
                with torch.random.fork_rng(devices=[]):  # its init must not move the RNG
                    model = GPT(self.mcfg)
                model.load_state_dict(model_sd)
            training = {"run": self.run_dir.name, "step": self.p.step, "train": asdict(self.cfg)}

            extra = {"training": training, **self.data.model_extra}

            def write_model(d: Path) -> None:
                tok = self.data.tokenizer_path
                save_model(model, d, tokenizer_path=tok, extra=extra)

            names = ["last"] + [f"step_{self.p.step}"] * periodic + ["best"] * best
            root, card = self.run_dir / CHECKPOINTS, self._card(curve=None)
            ckpt.write_checkpoints(
                root, names, write_model, *packed, card, self.cfg.keep_checkpoints
            )
            self._write_run_files(final=False)
        D.barrier(self.env)

    # -- run files ----------------------------------------------------------------------
    def _card(self, curve: str | None = CURVE) -> str:
        return run_card(
            self.run_dir,
            model=self.mcfg,
            train=self.cfg,
            n_params=self.n_params,
            progress=self.p,
            epoch=self.sampler.epoch,
            precision=self.precision,
            world_size=self.env.world_size,
            data=self.data.card(),
            origin=self.origin,
            curve=curve,
        )

    def _write_run_files(self, final: bool) -> None:
        self.files.write(self.p, self._card(), final)

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
        raise diverged_error(what, self.run_dir, self.cfg.lr)
