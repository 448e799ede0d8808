"""REST records read like the dicts the SDK used to return: a member the gateway did not send is
absent (``get`` gives the caller's default, ``in`` is False), one it sent is there, even as null."""

from __future__ import annotations

from xdp_compute.contract.api import AnalystBudget, Budget


def test_a_member_not_sent_is_absent_as_in_the_dict() -> None:
    empty = AnalystBudget.model_validate({})  # the analyst's budget before its first job
    assert "epsilon_spent" not in empty
    assert empty.get("epsilon_spent", 0.0) == 0.0
    assert empty.epsilon_spent is None  # the typed way


def test_a_member_sent_is_present_even_as_null_and_extras_pass_through() -> None:
    b = Budget.model_validate({"dataset": "d", "nodes": [], "analyst": {"epsilon_spent": 1.5, "delta_spent": None},
                               "newer_member": 7})
    assert b["analyst"].get("epsilon_spent", 0.0) == 1.5
    assert "delta_spent" in b["analyst"] and b["analyst"].get("delta_spent", 0.0) is None
    assert "newer_member" in b and b.get("newer_member") == 7 and b["dataset"] == "d"
