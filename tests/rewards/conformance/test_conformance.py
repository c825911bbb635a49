"""Other projects' reward test cases, run through our rewards: every row agrees with its peer's verdict, or
differs on purpose and says so.

A row (see README.md here) is one case of a peer's own test suite, re-expressed for one of our rewards.
A row without `ours` must score what the peer expects; a row with `ours` names the entry of docs/rewards.md's
conventions table that explains the difference and must score `ours`, so the table stays true. Rows run
in process (math-verify) or in the real sandbox (code), a few seconds in all.
"""

from __future__ import annotations

import json
import pickle
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rewards.registry import Reward, get_reward

HERE = Path(__file__).parent
CONVENTIONS = HERE.parents[2] / "docs" / "rewards.md"
PEERS = ("open_r1", "trl", "verl_prime_math", "verl_sandbox", "math_verify")
#: In-process options of the rewards the rows use: math-verify in this process, one sandbox thread.
RUNTIME = {"math": {"workers": 0}, "code": {"workers": 1}}


def load_rows() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for peer in PEERS:
        data = json.loads((HERE / f"{peer}.json").read_text())
        for i, row in enumerate(data["rows"]):
            out.append((f"{peer}[{i}] {row['test']}", {**row, "peer_name": data["peer"]}))
    return out


ROWS = load_rows()


def conventions() -> dict[str, str]:
    """The conventions table of docs/rewards.md: id -> the row's text."""
    text = CONVENTIONS.read_text()
    section = text[text.index("## Conventions"):]
    return {m[1]: m[0] for m in re.finditer(r"^\| (C\d+) \|.*$", section, re.MULTILINE)}


@pytest.fixture(scope="module")
def rewards() -> Iterator[dict[str, Reward]]:
    made: dict[str, Reward] = {}
    yield made
    for reward in made.values():
        reward.close()


def reward_for(cache: dict[str, Reward], row: dict[str, Any]) -> Reward:
    kwargs = {**RUNTIME.get(row["reward"], {}), **row.get("kwargs", {})}
    key = json.dumps([row["reward"], kwargs], sort_keys=True)
    if key not in cache:
        cache[key] = get_reward(row["reward"], **kwargs)
    return cache[key]


def score(reward: Reward, row: dict[str, Any]) -> tuple[float | None, str | None]:
    columns = {k: [v] for k, v in row.get("columns", {}).items()}
    if "completion_length" in row:  # the peer's `completion_ids = [[1] * n]`
        columns["completion_ids"] = [[1] * row["completion_length"]]
    if row.get("pickled"):
        reward = pickle.loads(pickle.dumps(reward))
    out: list[Any] = []
    if row.get("in_thread"):  # the peer calls it from a worker thread
        thread = threading.Thread(target=lambda: out.append(reward.score_with_errors([row["completion"]], **columns)))
        thread.start()
        thread.join(120)
    else:
        out.append(reward.score_with_errors([row["completion"]], **columns))
    (scores, errors), = out
    return scores[0], errors[0]


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_row(row: dict[str, Any], rewards: dict[str, Reward]) -> None:
    got, error = score(reward_for(rewards, row), row)
    want = row.get("ours", row["peer"])
    if want is None:
        assert got is None and error, (got, error)
    else:
        assert got == pytest.approx(want, abs=1e-9), (got, error)
    if "error" in row:
        assert error is not None and row["error"] in error, error


def test_every_difference_from_a_peer_is_a_documented_convention() -> None:
    table = conventions()
    used = {row["convention"] for _, row in ROWS if "convention" in row}
    for name, row in ROWS:
        if "ours" in row:
            assert row["ours"] != row["peer"], name
            assert row.get("convention") in table, f"{name}: convention {row.get('convention')!r} not in the table"
        else:
            assert "convention" not in row, name
    assert used == set(table), f"conventions no row shows: {sorted(set(table) - used)}"


def test_the_suite_covers_each_peer() -> None:
    counts = {peer: sum(name.startswith(f"{peer}[") for name, _ in ROWS) for peer in PEERS}
    assert all(counts.values()), counts
    assert counts["math_verify"] >= 200
    for name, row in ROWS:
        assert row["test"] and row["file"] and row["reward"] in ("math", "format", "code", "overlong"), name
