"""Malformed rows of ``ingestd.rules`` are refused with a RuleError (which
the dispatcher logs and skips), never an AttributeError or TypeError that
stops ``ingestd serve`` at start or the rule reload afterwards; a NaN
limit is refused too (NaN != NaN made every reload look like a change and
dropped every device's state each time)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ingestd.orders.rules import Rule, RuleError


def _row(**changes: Any) -> dict[str, Any]:
    row = {
        "id": "vib", "metric": "vibration_rms", "op": ">", "threshold": 7.0,
        "kind": "bearing_vibration", "rule_type": "threshold",
        "action": "service_ticket", "params": '{"hysteresis": 1}', "product": None,
    }  # fmt: skip
    row.update(changes)
    return row


def test_a_good_row_loads() -> None:
    rule = Rule.from_row(_row())
    assert rule.signature == Rule.from_row(_row()).signature


@pytest.mark.parametrize(
    "changes",
    [
        {"params": "[1, 2]"},
        {"params": '"hello"'},
        {"params": "null"},
        {"params": '{"min_duration_s": [30]}'},
        {"params": '{"min_duration_s": {"s": 30}}'},
        {"rule_type": "count", "op": None, "threshold": None, "params": '{"g": [1]}'},
        {
            "rule_type": "state",
            "op": None,
            "threshold": None,
            "action": "downtime",
            "params": '{"states": "fault"}',
        },  # a string: its letters were the states
        {"threshold": math.nan},
        {"threshold": math.inf},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_a_malformed_row_is_a_rule_error(changes: dict[str, Any]) -> None:
    with pytest.raises(RuleError):
        Rule.from_row(_row(**changes))
