"""The env registry, named env sets, and validation of env options before a simulator starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError, require_module
from harness.registry import Registry

ENVS: Registry = Registry("env")
ENV_SETS: Registry = Registry("env set")  # name -> tuple of env ids

IMAGE_SIZE_RANGE = (16, 1024)
# "faithful": the simulator's own renderer and settings, the frames its benchmark's policies and
# papers see; "fast": the same scene with the costly effects off (shadows, reflections, MSAA), a
# choice a run must make explicitly (and records)
RENDER_MODES = ("faithful", "fast")
DEFAULT_RENDER = "faithful"
RENDER_ENV = "WM_HARNESS_RENDER"  # the default where no --render is given (e.g. fast on a slow test machine)


def default_render() -> str:
    """The render mode of a run that names none: ``$WM_HARNESS_RENDER`` if set, else faithful."""
    return check_render(os.environ.get(RENDER_ENV) or DEFAULT_RENDER, f"${RENDER_ENV}")


@dataclass(frozen=True)
class EnvOptions:
    """What a user may choose about an env: cameras, square image size, episode cap, renderer."""

    cameras: tuple[str, ...]
    image_size: int | None  # None: each camera at the benchmark's own size (CALVIN: static 200, gripper 84)
    max_episode_steps: int
    render: str = DEFAULT_RENDER

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "cameras": self.cameras,
            "image_size": self.image_size,
            "max_episode_steps": self.max_episode_steps,
            "render": self.render,
        }


def check_render(render: Any, flag: str = "--render") -> str:
    if render not in RENDER_MODES:
        raise HarnessError(f"{flag} {render!r} is not a render mode: use {' or '.join(RENDER_MODES)} (faithful: the "
                           f"simulator's own renderer, as its benchmark renders; fast: no shadows, reflections, MSAA)")
    return render


def env_meta(env_id: str) -> dict[str, Any]:
    """Facts about an env known without building it (task, instruction, cameras, ...)."""
    return ENVS.entry(env_id).meta


def expand_env_spec(spec: str) -> list[str]:
    """'metaworld' / 'metaworld/mt10' / 'metaworld/reach-v3,metaworld/push-v3' -> env ids."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in ENV_SETS:
            ids = list(ENV_SETS.get(part))
        elif part in ENVS:
            ids = [part]
        else:
            raise HarnessError(ENVS.unknown_message(part, extra_names=ENV_SETS.names()))
        out.extend(i for i in ids if i not in out)
    if not out:
        raise HarnessError(f"no env given in {spec!r}: name an env id or a set, e.g. 'metaworld/reach-v3'")
    return out


def resolve_env_options(
    env_id: str,
    cameras: tuple[str, ...] | list[str] | None = None,
    image_size: int | None = None,
    max_episode_steps: int | None = None,
    render: str | None = None,
    *,
    check_installed: bool = True,
) -> EnvOptions:
    """Validate user choices against what the env supports; fill defaults."""
    meta = env_meta(env_id)
    if check_installed:
        module, what, extra = meta["requires"]
        require_module(module, what, extra)
    # None -> the env's default cameras; an empty tuple (CLI: --camera none) -> state only, no rendering
    cams = tuple(meta["default_cameras"]) if cameras is None else tuple(c for c in cameras if c != "none")
    for cam in cams:
        if cam not in meta["cameras"]:
            raise HarnessError(
                f"camera {cam!r} does not exist in {env_id}; available: {', '.join(meta['cameras'])}"
            )
    size = meta["default_image_size"] if image_size is None else image_size
    lo, hi = IMAGE_SIZE_RANGE
    if size is None and image_size is None:
        pass  # the env's own size per camera
    elif isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise HarnessError(f"image size {size!r} is out of range: use an integer from {lo} to {hi} pixels")
    steps = meta["max_episode_steps"] if max_episode_steps is None else max_episode_steps
    if not isinstance(steps, int) or steps <= 0:
        raise HarnessError(f"max episode steps {steps!r} must be a positive integer")
    return EnvOptions(cams, size, steps, default_render() if render is None else check_render(render))


def make_env(env_id: str, **options: Any):
    """Build a registered env. Options: cameras, image_size, max_episode_steps, render."""
    opts = resolve_env_options(
        env_id, options.pop("cameras", None), options.pop("image_size", None),
        options.pop("max_episode_steps", None), options.pop("render", None),
    )
    return ENVS.build(env_id, **opts.as_kwargs(), **options)


def _register_metaworld() -> None:
    from envs import metaworld_tasks as mw

    requires = ("metaworld", "Meta-World", "metaworld")
    for task in mw.TASKS:
        ENVS.register(
            f"metaworld/{task}",
            "envs.metaworld:MetaWorldEnv",
            description=mw.INSTRUCTIONS[task],
            kwargs={"task": task},
            meta={
                "family": "metaworld",
                "task": task,
                "instruction": mw.INSTRUCTIONS[task],
                "cameras": mw.CAMERAS,
                "default_cameras": mw.DEFAULT_CAMERAS,
                "default_image_size": 128,
                "max_episode_steps": mw.MAX_EPISODE_STEPS,
                "action_dim": 4,
                "requires": requires,
            },
        )

    def ids(tasks):
        return tuple(f"metaworld/{t}" for t in tasks)

    ENV_SETS.register("metaworld", ids(mw.DEFAULT_SET),
                      description="default set: reach, push, pick-place, drawer-open, door-open")
    ENV_SETS.register("metaworld/mt10", ids(mw.MT10), description="Meta-World MT10 (10 tasks)")
    ENV_SETS.register("metaworld/mt50", ids(mw.TASKS), description="Meta-World MT50 (all 50 v3 tasks)")
    for level, tasks in mw.DIFFICULTY.items():
        ENV_SETS.register(f"metaworld/{level}", ids(tasks),
                          description=f"difficulty group '{level}' of Seo et al. ({len(tasks)} tasks)")


def _register_calvin() -> None:
    from envs import calvin_tasks as ct

    ct.add_calvin_env_root_to_path()  # a CALVIN_ENV_ROOT checkout counts as installed
    # calvin_env is not on PyPI: the "what" names the clone + editable install; the extra adds its deps.
    requires = ("calvin_env", f"CALVIN ({ct.INSTALL_HINT})", "calvin")
    base = {"family": "calvin", "cameras": ct.CAMERAS, "default_cameras": ct.DEFAULT_CAMERAS,
            "default_image_size": ct.DEFAULT_IMAGE_SIZE, "action_dim": 7, "requires": requires}
    for task in ct.TASKS:
        # Seven tasks start with set-up subtasks (e.g. lift a block before placing it).
        n_sub = ct.SUBTASKS_PER_TASK_EPISODE[task]
        ENVS.register(f"calvin/{task}", "envs.calvin:CalvinEnv", description=ct.INSTRUCTIONS[task],
                      kwargs={"task": task},
                      meta={**base, "task": task, "instruction": ct.INSTRUCTIONS[task],
                            "num_init_states": ct.TASK_START_STATES[task],
                            "max_episode_steps": n_sub * ct.STEPS_PER_SUBTASK})
    ENVS.register("calvin/chains", "envs.calvin:CalvinEnv",
                  description="CALVIN long-horizon evaluation: 1000 chains of 5 instructions",
                  kwargs={"task": "chains"},
                  meta={**base, "task": "chains", "instruction": ct.CHAINS_INSTRUCTION,
                        "num_init_states": ct.NUM_CHAINS,
                        "max_episode_steps": ct.CHAIN_LENGTH * ct.STEPS_PER_SUBTASK})
    ENV_SETS.register("calvin", ("calvin/chains",), description="CALVIN's chain evaluation (calvin/chains)")
    ENV_SETS.register("calvin/tasks", tuple(f"calvin/{t}" for t in ct.TASKS),
                      description="all 34 CALVIN tasks, one at a time")


def _register_libero() -> None:
    from envs import libero_tasks as lt

    requires = ("libero", "LIBERO", "libero")
    for suite in lt.SUITES:
        for task_id, (task, instruction) in enumerate(lt.TASKS[suite]):
            ENVS.register(
                lt.env_id(suite, task_id), "envs.libero:LiberoEnv", description=instruction,
                kwargs={"suite": suite, "task_id": task_id},
                meta={"family": "libero", "suite": suite, "task_id": task_id, "task": task,
                      "instruction": instruction, "cameras": lt.CAMERAS, "default_cameras": lt.DEFAULT_CAMERAS,
                      "default_image_size": lt.DEFAULT_IMAGE_SIZE, "max_episode_steps": lt.MAX_EPISODE_STEPS[suite],
                      "num_steps_wait": lt.NUM_STEPS_WAIT, "action_dim": 7, "requires": requires,
                      "default_episodes": lt.NUM_INIT_STATES, "num_init_states": lt.NUM_INIT_STATES},
            )
        ENV_SETS.register(f"libero/{suite}", tuple(lt.env_id(suite, i) for i in range(len(lt.TASKS[suite]))),
                          description=f"all {len(lt.TASKS[suite])} tasks of {suite}")
    ENV_SETS.register("libero", tuple(lt.env_id(s, i) for s in lt.STANDARD_SUITES for i in range(len(lt.TASKS[s]))),
                      description="LIBERO's four standard suites: spatial, object, goal, 10 (40 tasks)")


_register_metaworld()
_register_calvin()
_register_libero()
