"""CALVIN task facts that do not need the simulator: names, instructions, symbolic effects.

Kept as data so `harness list`, input validation and the evaluation-sequence generator work
without calvin_env installed. Sources (facts, not code):

- task names and their order: CALVIN's ``new_playtable_tasks.yaml`` (the same order as the
  ``tasks`` table of ``calvin_agent/evaluation/multistep_sequences.py``; the order matters,
  since the sequence generator draws task names from it with a seeded RNG);
- instructions: the first annotation of each task in ``new_playtable_validation.yaml``, the
  one CALVIN's evaluation gives the policy;
- categories and symbolic preconditions/effects: ``multistep_sequences.py``.

`tests/test_calvin_env.py` checks names and instructions against an installed calvin_env.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BLOCKS = ("red", "blue", "pink")

INSTRUCTIONS: dict[str, str] = {
    "rotate_red_block_right": "take the red block and rotate it to the right",
    "rotate_red_block_left": "take the red block and rotate it to the left",
    "rotate_blue_block_right": "take the blue block and rotate it to the right",
    "rotate_blue_block_left": "take the blue block and rotate it to the left",
    "rotate_pink_block_right": "take the pink block and rotate it to the right",
    "rotate_pink_block_left": "take the pink block and rotate it to the left",
    "push_red_block_right": "go push the red block right",
    "push_red_block_left": "go push the red block left",
    "push_blue_block_right": "go push the blue block right",
    "push_blue_block_left": "go push the blue block left",
    "push_pink_block_right": "go push the pink block right",
    "push_pink_block_left": "go push the pink block left",
    "move_slider_left": "push the sliding door to the left side",
    "move_slider_right": "push the sliding door to the right side",
    "open_drawer": "pull the handle to open the drawer",
    "close_drawer": "push the handle to close the drawer",
    "lift_red_block_table": "grasp and lift the red block",
    "lift_red_block_slider": "lift the red block from the sliding cabinet",
    "lift_red_block_drawer": "Take the red block from the drawer",
    "lift_blue_block_table": "grasp and lift the blue block",
    "lift_blue_block_slider": "lift the blue block from the sliding cabinet",
    "lift_blue_block_drawer": "Take the blue block from the drawer",
    "lift_pink_block_table": "grasp and lift the pink block",
    "lift_pink_block_slider": "lift the pink block from the sliding cabinet",
    "lift_pink_block_drawer": "Take the pink block from the drawer",
    "place_in_slider": "store the grasped block in the sliding cabinet",
    "place_in_drawer": "store the grasped block in the drawer",
    "stack_block": "stack the grasped block",
    "unstack_block": "remove the stacked block",
    "turn_on_lightbulb": "use the switch to turn on the light bulb",
    "turn_off_lightbulb": "use the switch to turn off the light bulb",
    "turn_on_led": "press the button to turn on the led light",
    "turn_off_led": "press the button to turn off the led light",
    "push_into_drawer": "slide the block that it falls into the drawer",
}

TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)  # CALVIN's order; 34 tasks

# A chain never holds two tasks of one category (e.g. open and close the drawer).
CATEGORIES: dict[str, int] = {
    **{f"{verb}_{c}_block_{side}": 1 for verb in ("rotate", "push") for c in BLOCKS for side in ("right", "left")},
    "move_slider_left": 2, "move_slider_right": 2,
    "open_drawer": 3, "close_drawer": 3,
    **{f"lift_{c}_block_table": 4 for c in BLOCKS},
    **{f"lift_{c}_block_slider": 5 for c in BLOCKS},
    **{f"lift_{c}_block_drawer": 6 for c in BLOCKS},
    "place_in_slider": 7, "place_in_drawer": 7,
    "turn_on_lightbulb": 8, "turn_off_lightbulb": 8, "turn_on_led": 8, "turn_off_led": 8,
    "push_into_drawer": 9,
    "stack_block": 10,
    "unstack_block": 11,
}

# Symbolic scene: led/lightbulb 0|1, slider right|left, drawer closed|open, each block
# table|slider_right|slider_left|drawer|grasped|stacked_top|stacked_bottom, grasped 0|1.
# A rule is (condition, effect); a condition value that is a tuple means "any of these".
Rule = tuple[dict[str, object], dict[str, object]]


def _block(c: str) -> str:
    return f"{c}_block"


def _rules() -> dict[str, list[Rule]]:
    rules: dict[str, list[Rule]] = {}
    on_table = {c: ({_block(c): "table", "grasped": 0}, {_block(c): "table"}) for c in BLOCKS}
    for verb in ("rotate", "push"):
        for c in BLOCKS:
            for side in ("right", "left"):
                rules[f"{verb}_{c}_block_{side}"] = [on_table[c]]
    rules["move_slider_left"] = [({"slider": "right", "grasped": 0}, {"slider": "left"})]
    rules["move_slider_right"] = [({"slider": "left", "grasped": 0}, {"slider": "right"})]
    rules["open_drawer"] = [({"drawer": "closed", "grasped": 0}, {"drawer": "open"})]
    rules["close_drawer"] = [({"drawer": "open", "grasped": 0}, {"drawer": "closed"})]
    for c in BLOCKS:
        lifted = {_block(c): "grasped", "grasped": 1}
        rules[f"lift_{c}_block_table"] = [({_block(c): "table", "grasped": 0}, lifted)]
        # A block in the cabinet is reachable only where the sliding door does not cover it.
        rules[f"lift_{c}_block_slider"] = [
            ({_block(c): "slider_left", "slider": "right", "grasped": 0}, lifted),
            ({_block(c): "slider_right", "slider": "left", "grasped": 0}, lifted),
        ]
        rules[f"lift_{c}_block_drawer"] = [({_block(c): "drawer", "drawer": "open", "grasped": 0}, lifted)]
    rules["place_in_slider"] = [
        ({_block(c): "grasped", "slider": side, "grasped": 1}, {_block(c): f"slider_{side}", "grasped": 0})
        for c in BLOCKS for side in ("right", "left")
    ]
    rules["place_in_drawer"] = [
        ({_block(c): "grasped", "drawer": "open", "grasped": 1}, {_block(c): "drawer", "grasped": 0})
        for c in BLOCKS
    ]
    pairs = [(top, bottom) for top in BLOCKS for bottom in BLOCKS if bottom != top]
    rules["stack_block"] = [
        ({_block(t): "grasped", _block(b): "table", "grasped": 1},
         {_block(t): "stacked_top", _block(b): "stacked_bottom", "grasped": 0})
        for t, b in pairs
    ]
    rules["unstack_block"] = [
        ({_block(t): "stacked_top", _block(b): "stacked_bottom", "grasped": 0},
         {_block(t): "table", _block(b): "table"})
        for t, b in pairs
    ]
    for light in ("lightbulb", "led"):
        rules[f"turn_on_{light}"] = [({light: 0, "grasped": 0}, {light: 1})]
        rules[f"turn_off_{light}"] = [({light: 1, "grasped": 0}, {light: 0})]
    in_slider = ("slider_right", "slider_left")
    rules["push_into_drawer"] = [
        ({_block(c): "table", **{_block(o): in_slider for o in BLOCKS if o != c}, "drawer": "open", "grasped": 0},
         {_block(c): "drawer", "grasped": 0})
        for c in BLOCKS
    ]
    return {name: rules[name] for name in TASKS}


RULES: dict[str, list[Rule]] = _rules()

# Single-task episodes (``calvin_sequences.task_episodes``): how many start states each task
# has, and how many subtasks its episodes hold (1 = the task alone; more = set-up subtasks
# first, for tasks that start from a grasped block, a block in the drawer or a stack).
# Stored so the registry knows them without planning; a test recomputes them.
_SETUP_SUBTASKS = {
    **{f"lift_{c}_block_drawer": 2 for c in BLOCKS},
    "place_in_slider": 2, "place_in_drawer": 2, "stack_block": 2, "unstack_block": 3,
}
SUBTASKS_PER_TASK_EPISODE: dict[str, int] = {t: _SETUP_SUBTASKS.get(t, 1) for t in TASKS}
TASK_START_STATES: dict[str, int] = {
    **{t: 96 for t in TASKS},
    **{f"lift_{c}_block_slider": 48 for c in BLOCKS},
    **{f"lift_{c}_block_drawer": 16 for c in BLOCKS},
    "place_in_slider": 192, "stack_block": 192, "unstack_block": 192, "push_into_drawer": 48,
}
CHAINS_INSTRUCTION = "five instructions in a row (CALVIN evaluation chain)"

CAMERAS = ("static", "gripper")
DEFAULT_CAMERAS = ("static", "gripper")
# Each camera's square side in calvin_env's conf/cameras/cameras/*.yaml, as CALVIN's dataset and
# evaluation render them: what CalvinEnv renders when no image size is given (image_size=None).
CAMERA_SIZES: dict[str, int] = {"static": 200, "gripper": 84}
# The size the registry fills in when a user gives none: None, each camera at CALVIN's own size
# (--image-size N renders every camera at N).
DEFAULT_IMAGE_SIZE = None
STEPS_PER_SUBTASK = 360  # EP_LEN of CALVIN's evaluate_policy.py
CHAIN_LENGTH = 5
NUM_CHAINS = 1000
SCENES = ("A", "B", "C", "D")
DEFAULT_SCENE = "D"  # CALVIN evaluates on scene D (D->D, ABC->D, ABCD->D)


def camera_sizes(cameras: tuple[str, ...], image_size: int | None) -> dict[str, int]:
    """Each camera's square side: ``image_size`` for every camera, or CALVIN's own (None)."""
    return {cam: CAMERA_SIZES[cam] if image_size is None else int(image_size) for cam in cameras}


INSTALL_HINT = ("git clone https://github.com/mees/calvin_env && pip install -e ./calvin_env, "
                "or set CALVIN_ENV_ROOT to a checkout")


def calvin_env_root_from_env() -> Path | None:
    """The checkout named by ``CALVIN_ENV_ROOT``, when it holds the calvin_env package."""
    value = os.environ.get("CALVIN_ENV_ROOT")
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    return root if (root / "calvin_env" / "__init__.py").is_file() else None


def add_calvin_env_root_to_path() -> None:
    """Make a ``CALVIN_ENV_ROOT`` checkout importable (cheap: no import happens here)."""
    root = calvin_env_root_from_env()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
