"""The Typer app every command registers on, and the progress displays they share."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Closed-loop evaluation harness for robot world models.")


def _progress(enabled: bool, total: int, label: str):
    """A rich progress bar callback, or a no-op."""
    if not enabled or total == 0:
        return None, None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), transient=False)
    task = bar.add_task(label, total=total, info="")
    return bar, task


def _train_progress(enabled: bool):
    """Progress line per phase: step, loss, throughput (stderr, overwritten in place)."""
    if not enabled:
        return None
    last = {"t": 0.0}

    def show(phase: str, step: int, total: int, numbers: dict) -> None:
        import time

        now = time.monotonic()
        if step != total and now - last["t"] < 0.5:
            return
        last["t"] = now
        extra = "  ".join(f"{k}={v:.4g}" for k, v in numbers.items() if isinstance(v, float) and k in
                          ("loss", "samples_per_s", "val_latent_mse", "copy_last_mse"))
        end = "\n" if step == total else "\r"
        typer.echo(f"{phase:<10} {step:>6}/{total}  {extra}", err=True, nl=False)
        typer.echo(end, err=True, nl=False)

    return show
