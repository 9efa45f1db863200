"""What a run reports while it trains: the progress bar (rank 0) and the rows of its log.

The bar (tqdm) shows the loss, the learning rate and the smoothed throughput (``img/s``
for image data, else ``samples/s``), refreshed every 10 steps. Each log row of
``train_log.jsonl`` (:mod:`anystep.training.rundir`) holds ``step``, ``loss``, the
objective's metrics (averaged over micro-batches and ranks), ``lr``, ``time`` (seconds of
training, including those before a resume), ``steps_per_s`` and ``samples_per_s`` since
the previous row, and ``grad_norm`` (with clipping) and ``round`` (progressive PFMM) where
they apply. Nothing here touches the training's random streams.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from anystep.training.accel import samples_per_second
from anystep.training.config import TrainConfig
from anystep.training.rundir import append_jsonl

__all__ = ["TrainProgress"]


class TrainProgress:
    """The progress bar and log-row writer of one :meth:`Trainer.fit` call.

    Args:
        config: the training config (``max_steps``, ``batch_size``, ``objective``).
        data_shape: the shape of one sample (3 dimensions: images).
        step: the step the call starts at (after a resume: the checkpoint's).
        stop: the step the call stops at.
        log_path: the JSONL log, or None on ranks that do not write it.
        show_bar: whether to show the bar (it is shown only when ``step < stop``).
        elapsed_before: seconds of training before this call (from the checkpoint).
    """

    def __init__(
        self,
        config: TrainConfig,
        data_shape: tuple[int, ...],
        *,
        step: int,
        stop: int,
        log_path: Path | None,
        show_bar: bool,
        elapsed_before: float,
    ) -> None:
        self.config = config
        self.unit = "img/s" if len(data_shape) == 3 else "samples/s"
        self.log_path = log_path
        self.elapsed_before = elapsed_before
        self.bar = None
        if show_bar and step < stop:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=config.max_steps, initial=step, unit="step", dynamic_ncols=True, desc=config.objective
            )
        self.t0 = time.perf_counter()
        self.t_last, self.step_last = self.t0, step

    def elapsed(self) -> float:
        """Seconds of training so far, including those before a resume."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def stepped(self, step: int, stop: int, loss: float, lr: float) -> None:
        """Advance the bar after step ``step`` (its postfix every 10 steps and at ``stop``)."""
        bar = self.bar
        if bar is None:
            return
        bar.update(1)
        if step % 10 == 0 or step == stop:
            rate = (bar.format_dict.get("rate") or 0.0) * self.config.batch_size  # smoothed steps/s
            bar.set_postfix({"loss": f"{loss:.4g}", "lr": f"{lr:.2g}", self.unit: f"{rate:.4g}"}, refresh=False)

    def log(
        self,
        step: int,
        loss: float,
        metrics: dict[str, float],
        lr: float,
        grad_norm: float | None,
        round_index: int | None,
    ) -> None:
        """Append the row of step ``step`` (where there is a log) and restart the rate clock.

        Args:
            step: the step just done.
            loss: its loss (mean over the global batch).
            metrics: the objective's metrics (a ``"loss"`` entry is ignored), sorted by name.
            lr: its learning rate.
            grad_norm: the gradient norm before clipping, or None without clipping.
            round_index: the progressive round, or None for a run with one round.
        """
        now = time.perf_counter()
        if self.log_path is not None:
            row: dict[str, Any] = {"step": step, "loss": loss}
            for k, v in metrics.items():
                if k != "loss":
                    row[k] = v
            row.update(
                lr=lr,
                time=round(self.elapsed_before + now - self.t0, 4),
                steps_per_s=round((step - self.step_last) / max(now - self.t_last, 1e-9), 3),
                samples_per_s=round(
                    samples_per_second(self.config.batch_size * (step - self.step_last), now - self.t_last), 2
                ),
            )
            if grad_norm is not None:
                row["grad_norm"] = grad_norm
            if round_index is not None:
                row["round"] = round_index
            append_jsonl(self.log_path, row)
        self.t_last, self.step_last = now, step

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
