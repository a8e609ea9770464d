"""CALVIN's evaluation chains, start states and metrics; no calvin_env needed."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from envs import calvin_sequences as cs
from envs import calvin_tasks as ct

# sha256 of CALVIN's own get_sequences(1000) output, dumped by a CALVIN user
# (RoboFlamingo's eval_sequences.json) as json.dumps([[state, [5 tasks]], ...],
# separators=(",", ":")). Our shipped chains must serialise to the same bytes.
CALVIN_SEQUENCES_SHA256 = "604957a8a2d3102941b278df07df4950bc41f340ed959077b20467d5f692318a"


def test_fnv1_32_standard_vectors():
    # The FNV reference test vectors (offset basis 0x811C9DC5)...
    basis = 0x811C9DC5
    assert cs.fnv1_32(b"", basis) == 0x811C9DC5
    assert cs.fnv1_32(b"a", basis) == 0x050C5D7E
    assert cs.fnv1_32(b"foobar", basis) == 0x31F0B262
    # ...and pyhash's start value 0: multiply (by 0x01000193) before xor.
    assert cs.fnv1_32(b"") == 0
    assert cs.fnv1_32(b"a") == 0x61
    assert cs.fnv1_32(b"ab") == ((0x61 * 0x01000193) & 0xFFFFFFFF) ^ 0x62 == 0x610098D1


def test_state_seed_hashes_the_utf16_of_dict_values():
    state = cs.start_states()[0]
    text = "dict_values([0, 0, 'right', 'closed', 'table', 'table', 'slider_right', 0])"
    assert str(state.values()) == text
    assert cs.state_seed(state) == cs.fnv1_32(text.encode("utf-16-le")) == 432992106
    # The key order of what arrives does not matter: CALVIN's order is used.
    shuffled = dict(reversed(list(state.items())))
    np.testing.assert_array_equal(cs.concrete_start_state(shuffled)[1], cs.concrete_start_state(state)[1])


def test_start_states():
    states = cs.start_states()
    assert len(states) == 192
    assert states[0] == {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed", "red_block": "table",
                         "blue_block": "table", "pink_block": "slider_right", "grasped": 0}
    for s in states:
        blocks = [s["red_block"], s["blue_block"], s["pink_block"]]
        assert blocks.count("table") in (1, 2) and blocks.count("slider_left") < 2 and blocks.count("slider_right") < 2
    assert len({tuple(s.values()) for s in states}) == 192


def test_shipped_chains_are_calvins():
    chains = cs.eval_sequences()
    assert len(chains) == 1000
    dumped = json.dumps([[state, list(seq)] for state, seq in chains], separators=(",", ":"))
    assert hashlib.sha256(dumped.encode()).hexdigest() == CALVIN_SEQUENCES_SHA256
    assert chains[0] == ({"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
                          "blue_block": "table", "pink_block": "slider_right", "grasped": 0},
                         ("rotate_blue_block_right", "move_slider_right", "lift_red_block_slider", "place_in_slider",
                          "turn_off_lightbulb"))
    for state, seq in chains:
        assert len(seq) == 5 and cs.feasible(state, seq)


def test_partial_regeneration_matches_the_data_file():
    """Chains of the first 12 start states, put where CALVIN's final shuffle sends them."""
    states = cs.start_states()
    counts = [len(p) for p in np.array_split(np.arange(1000), len(states))]
    assert counts[:40] == [6] * 40 and counts[40:] == [5] * 152
    order = list(range(1000))
    np.random.RandomState(0).shuffle(order)  # position k of the result holds unshuffled item order[k]
    unshuffled = [(i, c) for i in range(12) for c in cs.chains_for_state(states[i], counts[i], seed=i)]
    shipped = cs.eval_sequences()
    checked = 0
    for k, src in enumerate(order):
        if src < len(unshuffled):
            i, chain = unshuffled[src]
            assert shipped[k] == (states[i], chain), k
            checked += 1
    assert checked == 72


@pytest.mark.slow
def test_full_regeneration_matches_the_data_file(tmp_path):
    path = cs.write_data_file(tmp_path / "chains.json")
    assert path.read_bytes() == cs.DATA_FILE.read_bytes()


def test_concrete_start_state_of_the_first_chain():
    state, _ = cs.eval_sequences()[0]  # slider left, drawer open, lightbulb on, led on; red left, blue table, pink right
    robot, scene = cs.concrete_start_state(state)
    np.testing.assert_array_equal(robot, cs.START_ROBOT_OBS)
    assert robot.shape == (15,) and scene.shape == (24,)
    np.testing.assert_allclose(scene[:6], [0.28, 0.22, 0.0, 0.088, 1.0, 1.0])
    np.testing.assert_allclose(scene[6:9], cs.BLOCK_SLIDER_LEFT)
    np.testing.assert_allclose(scene[18:21], cs.BLOCK_SLIDER_RIGHT)
    # blue is on the table and red is not: blue takes the first of the two shuffled slots
    rng = np.random.RandomState(cs.state_seed(state))
    slots = [0, 1]
    rng.shuffle(slots)
    np.testing.assert_allclose(scene[12:15], cs.BLOCK_TABLE_SLOTS[slots[0]])
    np.testing.assert_allclose(scene[[11, 17, 23]], [1.8859410064104645, 1.488143437705632, 1.4683986863194542])
    lo, hi = cs.BLOCK_YAW_RANGE
    assert all(lo <= y <= hi for y in scene[[11, 17, 23]])
    assert not scene[[9, 10, 15, 16, 21, 22]].any()


def test_two_blocks_on_the_table_take_both_slots():
    state = cs.start_states()[0]  # red and blue on the table, pink in the right cabinet
    _, scene = cs.concrete_start_state(state)
    slots = {tuple(np.round(s, 6)) for s in cs.BLOCK_TABLE_SLOTS}
    assert {tuple(np.round(scene[6:9], 6)), tuple(np.round(scene[12:15], 6))} == slots
    np.testing.assert_allclose(scene[18:21], cs.BLOCK_SLIDER_RIGHT)
    assert scene[0] == 0.0 and scene[1] == 0.0 and scene[3] == 0.0


def test_symbolic_rules():
    s = cs.start_states()[0]
    assert cs.next_states(s, "open_drawer") == [{**s, "drawer": "open"}]
    assert cs.next_states(s, "close_drawer") == []
    assert cs.next_states(s, "lift_pink_block_slider") == []  # the door covers the right half
    assert cs.feasible(s, ("lift_red_block_table", "place_in_slider"))
    assert not cs.feasible(s, ("open_drawer", "close_drawer"))  # same category
    assert len(ct.TASKS) == 34 and set(ct.RULES) == set(ct.CATEGORIES) == set(ct.TASKS)


def test_task_episodes_match_the_registered_facts():
    for task in ct.TASKS:
        episodes = cs.task_episodes(task)
        assert len(episodes) == ct.TASK_START_STATES[task], task
        assert {len(sub) for _, sub in episodes} == {ct.SUBTASKS_PER_TASK_EPISODE[task]}, task
        states = cs.start_states()
        for i, sub in episodes:
            assert sub[-1] == task and cs.feasible(states[i], sub)
    assert cs.task_episodes("open_drawer")[0] == (0, ("open_drawer",))
    assert cs.task_episodes("place_in_slider")[0] == (0, ("lift_red_block_table", "place_in_slider"))
    assert cs.task_episodes("unstack_block")[0][1] == ("lift_red_block_table", "stack_block", "unstack_block")


def test_chain_metrics_against_hand_computed_values():
    m = cs.chain_metrics([0, 1, 2, 5, 5])
    assert m["chains"] == 5
    assert m["avg_len"] == pytest.approx(13 / 5)
    assert m["success_rates"] == pytest.approx({1: 0.8, 2: 0.6, 3: 0.4, 4: 0.4, 5: 0.4})
    chains = [("a", "b", "c", "d", "e"), ("a", "c", "b", "d", "e"), ("b", "a", "c", "d", "e")]
    m = cs.chain_metrics([0, 2, 5], chains)
    assert m["avg_len"] == pytest.approx(7 / 3)
    assert m["success_rates"] == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1 / 3, 4: 1 / 3, 5: 1 / 3})
    assert m["tasks"] == {"a": {"success": 2, "total": 3}, "b": {"success": 1, "total": 2},
                          "c": {"success": 2, "total": 2}, "d": {"success": 1, "total": 1},
                          "e": {"success": 1, "total": 1}}
    assert cs.chain_metrics([])["avg_len"] == 0.0
    with pytest.raises(ValueError):
        cs.chain_metrics([6])
