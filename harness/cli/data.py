"""`harness libero-demos`: LIBERO's own demonstration files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app

libero_demos_app = typer.Typer(no_args_is_help=True, help="LIBERO's own demonstration files (robomimic HDF5).")
app.add_typer(libero_demos_app, name="libero-demos")


@libero_demos_app.command("import")
def libero_demos_import_cmd(
    src: Annotated[Path, typer.Argument(help="a LIBERO demo file, e.g. libero_spatial/<task>_demo.hdf5")],
    out: Annotated[str, typer.Option("--out", "-o", help="harness dataset file (.h5)")],
    env: Annotated[str | None, typer.Option("--env", "-e", help="libero/<suite>/<task id> (default: from the file)")] = None,
    max_demos: Annotated[int | None, typer.Option("--max-demos", min=1)] = None,
    overwrite: bool = False,
):
    """Convert a LIBERO demo file into the harness's dataset (env-oriented images, 8-D state)."""
    from harness.data.libero_demos import import_demos

    r = import_demos(src, out, env=env, overwrite=overwrite, max_demos=max_demos)
    typer.echo(f"wrote {r['demos']} demos ({r['successful']} successful) of {r['env_id']} to {r['out']}")


@libero_demos_app.command("replay")
def libero_demos_replay_cmd(
    src: Annotated[Path, typer.Argument(help="a LIBERO demo file with data/demo_*/states")],
    env: Annotated[str | None, typer.Option("--env", "-e", help="libero/<suite>/<task id> (default: from the file)")] = None,
    max_demos: Annotated[int | None, typer.Option("--max-demos", min=1)] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="write the successful replays as a harness dataset (.h5)")] = None,
    keep_noops: Annotated[bool, typer.Option("--keep-noops", help="play and keep every action (default: drop no-ops as OpenVLA does)")] = False,
    image_size: Annotated[int | None, typer.Option("--image-size", help="pixels of the images written with --out (default 256)")] = None,
    render: Annotated[str | None, typer.Option("--render", help="images written with --out: faithful (default, as robosuite renders) or fast (no shadows, reflections, MSAA)")] = None,
    overwrite: bool = False,
    report: Annotated[Path | None, typer.Option("--report", help="write the per-demo results as JSON")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Replay each demo as OpenVLA's regenerate_libero_dataset.py does: from its first state, after
    10 wait steps, no-op actions dropped; with --out, write the successful replays.
    Exit code 1 when a demo that succeeded when recorded fails on replay."""
    from harness.data.libero_demos import replay_demos, write_report

    def show(r, i, n):
        if progress:
            verdict = f"success (first at step {r.success_step})" if r.replay_success else "failure"
            typer.echo(f"[{i}/{n}] {r.demo}: recorded {'success' if r.recorded_success else 'failure'}, "
                       f"replay {verdict}, {r.played_steps}/{r.steps} actions played ({r.noops_dropped} no-ops dropped), "
                       f"max qpos drift {r.max_state_error:.2e}", err=True)

    result = replay_demos(src, env=env, max_demos=max_demos, out=out, keep_noops=keep_noops, image_size=image_size,
                          render=render, overwrite=overwrite, on_result=show)
    if report is not None:
        write_report(result, report)
    typer.echo(f"{result['env_id']}: {result['replay_successes']}/{result['demos']} demos succeed on replay "
               f"({result['recorded_successes']} succeeded when recorded); {result['noops_dropped']} no-op actions dropped")
    if out is not None:
        typer.echo(f"wrote {result['written']} successful replays to {result['out']}")
    if not result["still_succeed"]:
        raise typer.Exit(1)
