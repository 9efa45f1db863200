"""``anystep train``: parse arguments, build the config, delegate to :class:`Trainer`.

Also runnable as a module for multi-process training::

    torchrun --nproc_per_node=2 -m anystep.training.cli checkerboard-velocity --out runs/v

(the arguments are those of ``anystep train``).
"""

from __future__ import annotations

import json
import sys

import click

from anystep.training.presets import list_presets


def _epilog() -> str:
    width = max(len(p.name) for p in list_presets())
    lines = ["\b", "Presets (PRESET_OR_CONFIG may also be a JSON TrainConfig file):"]
    lines += [f"  {p.name:<{width}}  {p.description}" for p in list_presets()]
    lines += [
        "",
        "\b",
        "Examples:",
        "  anystep train checkerboard-velocity --out runs/velocity",
        "  anystep train checkerboard-lmd --teacher runs/velocity --out runs/lmd",
        "  anystep train checkerboard-fmm4 --out runs/fmm4 --set model.backbone.width=256 --max-steps 20000",
        "  anystep train checkerboard-fmm4 --out runs/fmm4 --resume",
        "  torchrun --nproc_per_node=2 -m anystep.training.cli checkerboard-velocity --out runs/v2",
    ]
    return "\n".join(lines)


class TrainInputError(click.ClickException):
    """Bad input: one line ``error: ...`` on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


FROM_CONFIG = "from the preset/config"


@click.command(
    "train",
    epilog=_epilog(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("preset_or_config", metavar="PRESET_OR_CONFIG")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory; becomes a model directory when training ends.")
@click.option("--resume", is_flag=True, default=False, show_default="off", help="Continue the run in --out from its checkpoint (exactly); a run killed before its first checkpoint starts again at step 0.")
@click.option("--restart", is_flag=True, default=False, show_default="off", help="Discard the run in --out (checkpoint, log, train_config.json, model files; nothing else) and start it again.")
@click.option("--max-steps", type=int, default=None, show_default=FROM_CONFIG, help="Number of optimisation steps.")
@click.option("--teacher", type=click.Path(), default=None, show_default=FROM_CONFIG, help="Model directory of the frozen teacher (distillation objectives).")
@click.option("--init-from", type=click.Path(), default=None, show_default=FROM_CONFIG, help="Model directory whose weights initialise the model (pfmm: the teacher). A velocity model starts a flow map at v_st = b_s, one Euler step (MLP backbone, residual ansatz).")
@click.option("--batch-size", type=int, default=None, show_default=FROM_CONFIG, help="Global batch size.")
@click.option("--lr", type=float, default=None, show_default=FROM_CONFIG, help="Peak learning rate.")
@click.option("--seed", type=int, default=None, show_default=FROM_CONFIG, help="Seed of every random stream.")
@click.option("--device", type=str, default=None, show_default=FROM_CONFIG, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, show_default=FROM_CONFIG, help="Autocast dtype of the backbone forwards (JVPs stay fp32; fp16 adds loss scaling).")
@click.option("--channels-last", is_flag=True, default=False, show_default="off", help="NHWC image batches and weights (faster convolutions on NVIDIA GPUs).")
@click.option("--compile", "compile_mode", type=click.Choice(["off", "default", "max-autotune-no-cudagraphs"]), default="off", show_default=True, help="torch.compile the backbone (in place; checkpoints unchanged).")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    show_default="none",
    help="Override any config field (dotted key, JSON value), e.g. --set model.backbone.width=64 --set objective_hparams.window=4. Repeatable.",
)
@click.option("--no-progress", is_flag=True, default=False, show_default="off", help="Hide the progress bar.")
@click.option("--print-config", is_flag=True, default=False, show_default="off", help="Print the resolved config as JSON and exit.")
def train(
    preset_or_config: str,
    out_dir: str,
    resume: bool,
    restart: bool,
    max_steps: int | None,
    teacher: str | None,
    init_from: str | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    device: str | None,
    precision: str | None,
    channels_last: bool,
    compile_mode: str,
    assignments: tuple[str, ...],
    no_progress: bool,
    print_config: bool,
) -> None:
    """Train a velocity model or a flow map from a PRESET name or a JSON config file.

    The run directory --out receives train_config.json, train_log.jsonl (loss, lr,
    time per logged step), checkpoint/ (safetensors + JSON) and, at the end, the model
    directory files config.json + model.safetensors (EMA weights). Bad settings are
    reported before training starts.
    """
    from anystep.errors import USER_ERRORS

    if resume and restart:
        raise TrainInputError("--resume continues the run in --out and --restart discards it; pass one of them")
    try:
        from anystep.training.accel import AccelOptions

        _run(
            preset_or_config, out_dir, resume, max_steps, teacher, init_from, batch_size, lr, seed, device,
            assignments, not no_progress, print_config, restart=restart,
            precision=precision, accel=AccelOptions(channels_last=channels_last, compile=compile_mode),
        )
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainInputError(msg) from None


def _run(
    preset_or_config: str,
    out_dir: str,
    resume: bool,
    max_steps: int | None,
    teacher: str | None,
    init_from: str | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    device: str | None,
    assignments: tuple[str, ...],
    progress: bool,
    print_config: bool,
    restart: bool = False,
    precision: str | None = None,
    accel: object = None,
) -> None:
    from pathlib import Path

    from anystep.training.config import TrainConfig, apply_overrides
    from anystep.training.presets import PRESETS, get_preset

    if preset_or_config in PRESETS:
        config = get_preset(preset_or_config)
    elif preset_or_config.endswith(".json") or Path(preset_or_config).is_file():
        config = TrainConfig.load(preset_or_config)
    else:
        config = get_preset(preset_or_config)  # raises with the list of presets
    flags = {
        "max_steps": max_steps,
        "teacher": teacher,
        "init_from": init_from,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": device,
        "precision": precision,
    }
    overrides = list(assignments) + [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if overrides:
        config = apply_overrides(config, overrides)
    if print_config:
        click.echo(config.to_json(), nl=False)
        return

    from anystep.training import ddp
    from anystep.training.trainer import Trainer

    if restart:
        from anystep.training.checkpoint import discard_run

        removed = discard_run(out_dir)
        if removed:
            click.echo(f"--restart: removed {', '.join(removed)} from {out_dir}", err=True)

    info = ddp.init_from_env(config.device)
    try:
        result = Trainer(config, out_dir, resume=resume, progress=progress, dist=info, accel=accel).fit()
    finally:
        ddp.shutdown()
    if info.is_main:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.6g}"
        evals = "".join(f", {k}={v:.4g}" for k, v in result.eval.items())
        click.echo(f"trained {result.steps} steps (final loss {loss}{evals}); model directory: {result.out_dir}")


if __name__ == "__main__":  # torchrun -m anystep.training.cli ...
    from anystep.cli import main

    main(["train", *sys.argv[1:]])
