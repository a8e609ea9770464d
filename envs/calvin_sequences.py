"""CALVIN's long-horizon evaluation: the 1000 chains of 5 subtasks, their concrete start
states, the single-task start states, and the chain metrics.

Reproduces the protocol of ``calvin_agent/evaluation/multistep_sequences.py`` and
``utils.get_env_state_for_initial_condition`` (mees/calvin) exactly, written from their
description:

1. Symbolic start states: every combination of led, lightbulb, slider, drawer and the three
   block locations (table / slider_right / slider_left) with one or two blocks on the table,
   at most one block in each half of the cabinet, nothing grasped -> 192 states.
2. 1000 chains are spread over the states in order (``np.array_split``: the first 40 states
   get 6 chains, the rest 5). For state ``i``, a legacy ``RandomState(i)`` draws 5 distinct
   task names (``choice(..., replace=False)``) until a draw is feasible in sequence from the
   state (each task's precondition holds in exactly one way) with no category repeated.
3. The (state, chain) list is shuffled with ``RandomState(0)``.
4. A symbolic state becomes ``robot_obs`` (15) and ``scene_obs`` (24): fixed robot pose; the
   two table slots shuffled and the block yaws drawn from a ``RandomState`` seeded with the
   32-bit FNV-1 hash (start value 0) of the UTF-16-LE bytes of ``str(state.values())`` --
   what ``pyhash.fnv1_32()`` computes for a Python string on Linux.

The generated chains ship as ``envs/data/calvin_eval_sequences.json``;
``python -m envs.calvin_sequences`` regenerates it and the tests compare the two.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from envs import calvin_tasks as ct

DATA_FILE = Path(__file__).resolve().parent / "data" / "calvin_eval_sequences.json"

FNV_32_PRIME = 0x01000193

# Keys in CALVIN's order: the order decides str(state.values()) and hence the block poses.
STATE_KEYS = ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block", "grasped")
STATE_VALUES: dict[str, tuple] = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}

# get_env_state_for_initial_condition's constants (scene D geometry).
START_ROBOT_OBS = (0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
                   -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0)
BLOCK_YAW_RANGE = (math.pi / 2 - math.pi / 8, math.pi / 2 + math.pi / 8)
BLOCK_SLIDER_LEFT = (-2.40851662e-01, 9.24044687e-02, 4.60990009e-01)
BLOCK_SLIDER_RIGHT = (7.03416330e-02, 9.24044687e-02, 4.60990009e-01)
BLOCK_TABLE_SLOTS = ((5.00000896e-02, -1.20000177e-01, 4.59990009e-01),
                     (2.29995412e-01, -1.19995140e-01, 4.59990010e-01))
SLIDER_OPEN_LEFT = 0.28  # scene_obs[0] when the sliding door is on the left
DRAWER_OPEN = 0.22  # scene_obs[1] when the drawer is open
SWITCH_ON = 0.088  # scene_obs[3] when the lightbulb is on


# ---------------------------------------------------------------------------- hashing
def fnv1_32(data: bytes, start: int = 0) -> int:
    """32-bit FNV-1 (multiply, then xor). The standard offset basis is 0x811C9DC5; pyhash's
    ``fnv1_32()``, which CALVIN uses, starts from its seed, 0."""
    h = start & 0xFFFFFFFF
    for byte in data:
        h = (h * FNV_32_PRIME) & 0xFFFFFFFF
        h ^= byte
    return h


def state_seed(state: dict[str, Any]) -> int:
    """The seed CALVIN derives for a symbolic start state's block poses."""
    return fnv1_32(str(state.values()).encode("utf-16-le"))


# ---------------------------------------------------------------------------- symbolic planning
def _holds(state: dict[str, Any], condition: dict[str, object]) -> bool:
    return all(state[k] in v if isinstance(v, tuple) else state[k] == v for k, v in condition.items())


def next_states(state: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """Every state the task can lead to from ``state`` (one per applicable rule)."""
    return [{**state, **effect} for condition, effect in ct.RULES[task] if _holds(state, condition)]


def feasible(state: dict[str, Any], tasks: tuple[str, ...] | list[str]) -> bool:
    """CALVIN's check: each task applies in exactly one way, in turn, and no category repeats."""
    for task in tasks:
        states = next_states(state, task)
        if len(states) != 1:
            return False
        state = states[0]
    categories = [ct.CATEGORIES[t] for t in tasks]
    return len(set(categories)) == len(categories)


def start_states() -> list[dict[str, Any]]:
    """The 192 symbolic start states, in CALVIN's order."""
    def allowed(values: tuple) -> bool:
        return values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2

    combos = itertools.product(*(STATE_VALUES[k] for k in STATE_KEYS))
    return [dict(zip(STATE_KEYS, values)) for values in combos if allowed(values)]


def chains_for_state(state: dict[str, Any], count: int, seed: int) -> list[tuple[str, ...]]:
    """``count`` feasible chains drawn for one start state from ``RandomState(seed)``.

    ``choice(names, 5, replace=False)`` is the first 5 of ``permutation(len(names))``, which
    is an in-place shuffle of ``arange``; shuffling a reused buffer draws the same numbers
    ~4x faster. Most draws fail on their first task, so that is tested first.
    """
    rng = np.random.RandomState(seed)
    names = ct.TASKS
    first_ok = [len(next_states(state, t)) == 1 for t in names]
    order, identity = np.empty(len(names), dtype=np.int64), np.arange(len(names))
    chains: list[tuple[str, ...]] = []
    while len(chains) < count:
        order[:] = identity
        rng.shuffle(order)
        if not first_ok[order[0]]:
            continue
        draw = tuple(names[j] for j in order[:ct.CHAIN_LENGTH])
        if feasible(state, draw):
            chains.append(draw)
    return chains


def generate_sequences(num_chains: int = ct.NUM_CHAINS) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """CALVIN's evaluation chains: ``[(symbolic start state, (5 task names)), ...]``."""
    states = start_states()
    counts = [len(part) for part in np.array_split(np.arange(num_chains), len(states))]
    pairs = [(state, chain) for i, (state, n) in enumerate(zip(states, counts))
             for chain in chains_for_state(state, n, seed=i)]
    np.random.RandomState(0).shuffle(pairs)  # a list: shuffled in place by swaps, as CALVIN's
    return pairs


def write_data_file(path: Path = DATA_FILE) -> Path:
    chains = [{"start": state, "subtasks": list(chain)} for state, chain in generate_sequences()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chains, indent=None, separators=(",", ":")).replace("},{", "},\n{") + "\n")
    return path


@lru_cache(maxsize=1)
def eval_sequences() -> tuple[tuple[dict[str, Any], tuple[str, ...]], ...]:
    """The shipped 1000 chains (from the data file; ``generate_sequences()`` recomputes them)."""
    data = json.loads(DATA_FILE.read_text())
    return tuple(({k: item["start"][k] for k in STATE_KEYS}, tuple(item["subtasks"])) for item in data)


# ---------------------------------------------------------------------------- concrete states
def concrete_start_state(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(robot_obs[15], scene_obs[24])`` for a symbolic start state, as CALVIN computes it.

    scene_obs: slider, drawer, button, switch, lightbulb, led, then xyz + euler xyz of the
    red, blue and pink blocks.
    """
    state = {k: state[k] for k in STATE_KEYS}  # CALVIN's key order, whatever arrived
    rng = np.random.RandomState(state_seed(state))
    slots = [np.array(s) for s in BLOCK_TABLE_SLOTS]
    rng.shuffle(slots)
    scene = np.zeros(24)
    scene[0] = SLIDER_OPEN_LEFT if state["slider"] == "left" else 0.0
    scene[1] = DRAWER_OPEN if state["drawer"] == "open" else 0.0
    scene[3] = SWITCH_ON if state["lightbulb"] == 1 else 0.0
    scene[4] = state["lightbulb"]
    scene[5] = state["led"]
    in_slider = {"slider_right": np.array(BLOCK_SLIDER_RIGHT), "slider_left": np.array(BLOCK_SLIDER_LEFT)}
    # Blocks on the table take the shuffled slots: red the first, pink the second, blue the
    # second if red is on the table and the first otherwise. One yaw draw per block, in order.
    red, blue, pink = state["red_block"], state["blue_block"], state["pink_block"]
    scene[6:9] = in_slider.get(red, slots[0])
    scene[11] = rng.uniform(*BLOCK_YAW_RANGE)
    scene[12:15] = in_slider.get(blue, slots[1] if red == "table" else slots[0])
    scene[17] = rng.uniform(*BLOCK_YAW_RANGE)
    scene[18:21] = in_slider.get(pink, slots[1])
    scene[23] = rng.uniform(*BLOCK_YAW_RANGE)
    return np.array(START_ROBOT_OBS), scene


# ---------------------------------------------------------------------------- single tasks
MAX_SETUP_TASKS = 2


@cache
def task_episodes(task: str) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Start states for a single task: ``((start state index, subtasks), ...)``.

    Where the task's precondition holds in a start state, the episode is the task alone.
    Seven tasks start from a scene no start state has (a grasped block, a block in the
    drawer, a stack); their episodes begin with the shortest feasible set-up (e.g. lift a
    block, then place it), the first in CALVIN's task order, and succeed when the last
    subtask does. Every episode of a task has the same number of subtasks.
    """
    if task not in ct.RULES:
        raise ValueError(f"unknown CALVIN task {task!r}")
    states = start_states()
    for n_setup in range(MAX_SETUP_TASKS + 1):
        episodes = []
        for i, state in enumerate(states):
            for setup in itertools.product(ct.TASKS, repeat=n_setup):
                if task not in setup and feasible(state, (*setup, task)):
                    episodes.append((i, (*setup, task)))
                    break
        if episodes:
            return tuple(episodes)
    raise ValueError(f"no start state leads to {task!r} within {MAX_SETUP_TASKS} set-up tasks")


# ---------------------------------------------------------------------------- metrics
def chain_metrics(completed: list[int], chains: list[tuple[str, ...]] | None = None) -> dict[str, Any]:
    """CALVIN's numbers for a set of chains, from the count of subtasks each completed in a row.

    ``avg_len``: mean successful length (0..5); ``success_rates[k]``: fraction of chains with
    at least k subtasks done (k = 1..5), CALVIN's "k instructions in a row". With ``chains``
    (the subtask names of each chain), ``tasks`` counts each subtask's successes over its
    attempts, as CALVIN's ``print_and_save`` does.
    """
    n = len(completed)
    if any(not 0 <= c <= ct.CHAIN_LENGTH for c in completed):
        raise ValueError(f"completed subtasks must lie in 0..{ct.CHAIN_LENGTH}, got {completed}")
    out: dict[str, Any] = {
        "chains": n,
        "avg_len": float(np.mean(completed)) if n else 0.0,
        "success_rates": {k: (sum(c >= k for c in completed) / n if n else 0.0)
                          for k in range(1, ct.CHAIN_LENGTH + 1)},
    }
    if chains is not None:
        if len(chains) != n:
            raise ValueError(f"{len(chains)} chains for {n} results")
        success: Counter = Counter()
        attempts: Counter = Counter()
        for c, chain in zip(completed, chains):
            success.update(chain[:c])
            attempts.update(chain[:c + 1])
        out["tasks"] = {t: {"success": success[t], "total": attempts[t]} for t in sorted(attempts)}
    return out


if __name__ == "__main__":
    print(f"wrote {write_data_file()}")
