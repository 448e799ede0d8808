"""The private join's plan (issue #16, docs/private-joins.md): sides, cells, measurements, dummies.

``plan_join`` turns a join that ``query.joins.check_join`` passed into a ``JoinPlan``: the query
planned as if over one dataset holding both sides' columns (``plan_query``: cells, measurements,
outputs, bounds, each column under its own holder's uses), split into the indicator side A and
the value side B, with the matched dummies' parameters. The packing helpers lay one signed total
per A-cell into a Paillier plaintext and read them back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from sqlglot import exp

from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec
from xdp_compute.errors import InvalidQuery
from xdp_compute.privacy import Measurement, NoisePlan, plan_noise
from xdp_compute.query.plan import (
    DEFAULT_MAX_CELLS,
    PLAN_VERSION,
    QueryPlan,
    _req,
    plan_query,
)
from xdp_compute.query.statement import sql_text, with_group_size
from xdp_compute.query.where import And, Predicate, predicate_columns, predicate_from_dict, predicate_to_dict

__all__ = ["JOIN_SLOT_BITS", "JoinPlan", "JoinSide", "dummy_shift_for", "join_cost", "join_noise_plan", "join_slots",
           "pack_slots", "plan_join", "unpack_slots"]


#: Bits of one packed slot of a join ciphertext: a signed total of up to 2^62 (the plan's fixed-point
#: headroom) plus both holders' noise, with room to spare; slot g of a plaintext is bits [gW, (g+1)W).
JOIN_SLOT_BITS = 128
JOIN_PARTIES = 2  # the fixed-point headroom of a join: one total, two noise shares
#: Share of the query's epsilon (and delta) spent on hiding the intersection size from the gateway
#: (the matched dummies); the rest calibrates the aggregates' noise.
JOIN_CARD_FRACTION = 0.1
JOIN_CARD_MAX_EPSILON = 1.0


@dataclass(frozen=True)
class JoinSide:
    """One holder's part of a join: its dataset, key, and the columns, groups and filter it evaluates."""

    dataset: str
    key: str
    join_domain: str
    max_rows: int                      # declared (public): the holder pads its list to this length
    groups: tuple[str, ...]            # this side's GROUP BY columns, in GROUP BY order
    cells: tuple[tuple[str, ...], ...]  # cross product of their declared values
    where: Predicate | None            # this side's conjuncts of WHERE
    columns: tuple[ColumnSpec, ...]    # every column of this side the query reads (its manifest's)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "key": self.key, "join_domain": self.join_domain,
                "max_rows": self.max_rows, "groups": list(self.groups), "cells": [list(c) for c in self.cells],
                "where": predicate_to_dict(self.where) if self.where is not None else None,
                "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JoinSide:
        return cls(dataset=_req(d, "dataset", str), key=_req(d, "key", str),
                   join_domain=_req(d, "join_domain", str), max_rows=_req(d, "max_rows", int),
                   groups=tuple(_req(d, "groups", list)), cells=tuple(tuple(c) for c in _req(d, "cells", list)),
                   where=predicate_from_dict(d["where"]) if d.get("where") is not None else None,
                   columns=tuple(ColumnSpec.from_dict(c) for c in _req(d, "columns", list)))


@dataclass(frozen=True)
class JoinPlan:
    """A private join-aggregate: sides A (indicators) and B (values), cells, measurements, dummies.

    ``inner`` is the query planned as if over one dataset holding both sides' columns: its
    cells (the cross product of the group columns' declared values, in GROUP BY order), its
    measurements and its outputs are the released ones, and its sensitivities hold for a join
    because one person is one row on each side (duplicated keys are dropped by their holder),
    hence at most one matched pair (docs/private-joins.md, "Privacy accounting"). Cell c of
    ``inner`` is A-cell ``cell_pairs[c][0]`` × B-cell ``cell_pairs[c][1]``; each B-cell and
    measurement is one ciphertext whose slot g holds A-cell g.

    ``card_epsilon``/``card_delta`` price the matched dummies that hide the intersection size
    from the gateway: D = clip(``dummy_shift`` + DiscreteLaplace(1/card_epsilon), 0, 2·shift).
    """

    sql: str
    inner: QueryPlan
    a: JoinSide
    b: JoinSide
    query_epsilon: float
    query_delta: float
    card_epsilon: float
    card_delta: float
    dummy_shift: int
    hidden_count: bool = False          # COUNT(*) was added for suppression, not asked for
    slot_bits: int = JOIN_SLOT_BITS
    version: int = PLAN_VERSION

    @property
    def cell_pairs(self) -> tuple[tuple[int, int], ...]:
        """(A-cell, B-cell) of each cell of ``inner``."""
        g = self.inner.group_columns
        out = []
        for cell in self.inner.cells:
            av = tuple(cell[g.index(c)] for c in self.a.groups)
            bv = tuple(cell[g.index(c)] for c in self.b.groups)
            out.append((self.a.cells.index(av), self.b.cells.index(bv)))
        return tuple(out)

    @property
    def dummy_max(self) -> int:
        """Most matched dummies a job can draw: each side's lists carry exactly this many extra tags."""
        return 2 * self.dummy_shift

    def side(self, name: str) -> JoinSide:
        return {"A": self.a, "B": self.b}[name]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "sql": self.sql, "inner": self.inner.to_dict(), "a": self.a.to_dict(),
                "b": self.b.to_dict(), "query_epsilon": self.query_epsilon, "query_delta": self.query_delta,
                "card_epsilon": self.card_epsilon, "card_delta": self.card_delta, "dummy_shift": self.dummy_shift,
                "hidden_count": self.hidden_count, "slot_bits": self.slot_bits}

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON: names this exact join in approvals, tasks and the log."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, d: Any) -> JoinPlan:
        """Rebuild from the wire form; ``InvalidQuery`` on anything malformed (structure only)."""
        try:
            if not isinstance(d, dict) or d.get("version") != PLAN_VERSION:
                raise InvalidQuery("malformed join plan: unknown version")
            plan = cls(sql=_req(d, "sql", str), inner=QueryPlan.from_dict(d["inner"]),
                       a=JoinSide.from_dict(d["a"]), b=JoinSide.from_dict(d["b"]),
                       query_epsilon=float(d["query_epsilon"]), query_delta=float(d["query_delta"]),
                       card_epsilon=float(d["card_epsilon"]), card_delta=float(d["card_delta"]),
                       dummy_shift=_req(d, "dummy_shift", int), hidden_count=_req(d, "hidden_count", bool),
                       slot_bits=_req(d, "slot_bits", int))
            if plan.slot_bits != JOIN_SLOT_BITS or not 0 <= plan.dummy_shift <= 1 << 20:
                raise InvalidQuery("malformed join plan: slot_bits or dummy_shift out of range")
            plan.cell_pairs  # noqa: B018 - every cell must map to a pair of side cells
            return plan
        except InvalidQuery:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidQuery(f"malformed join plan: {type(e).__name__}: {e}") from None


def dummy_shift_for(card_epsilon: float, card_delta: float) -> int:
    """The shift of the truncated discrete Laplace dummy count: P(|Z| > shift) <= card_delta.

    For Z ~ DLap(1/ε), P(|Z| >= k) <= 2·e^(-ε·k)/(1 + e^(-ε)) < 2·e^(-ε·k); truncation at ±shift
    changes the output distribution by at most that mass, the δ of the shifted, truncated
    mechanism (the "shifted and truncated" Laplace of e.g. Bun & Steinke 2019 / Ion et al. 2020).
    """
    return max(1, math.ceil(math.log(2.0 / card_delta) / card_epsilon) + 1)


def plan_join(sql: str, stmt: exp.Select, left: DatasetSpec, right: DatasetSpec, key_left: str, key_right: str,
              epsilon: float, delta: float, *, left_alias: str | None = None, right_alias: str | None = None,
              max_cells: int = DEFAULT_MAX_CELLS) -> JoinPlan:
    """Plan an inner join checked by ``query.joins.check_join``; ``InvalidQuery`` (400) otherwise.

    The statement is rewritten into one over a virtual dataset holding both sides' columns (keys
    excluded: a key is never selected, grouped or filtered) and planned with ``plan_query``, so
    every column keeps its own holder's uses and bounds. Then: B (value side) is the side of the
    aggregated columns (the right dataset for COUNT alone); aggregates over both sides' columns
    are refused, as is a WHERE conjunct that reads both sides.
    """
    names = {left.name.lower(): "L", right.name.lower(): "R"}
    if left_alias:
        names[left_alias.lower()] = "L"
    if right_alias:
        names[right_alias.lower()] = "R"
    specs = {"L": left, "R": right}
    keys = {"L": key_left.lower(), "R": key_right.lower()}
    owner: dict[str, set[str]] = {}
    for side, spec in specs.items():
        for c in spec.columns:
            if c.name.lower() != keys[side]:
                owner.setdefault(c.name.lower(), set()).add(side)
    work = stmt.copy()
    work.set("joins", None)
    virtual = f"{left.name}__join__{right.name}"
    work.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(virtual))))
    side_of: dict[str, str] = {}
    for col in work.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            continue
        name = col.name.lower()
        table = (col.table or "").lower()
        if table:
            side = names.get(table)
            if side is None:
                raise InvalidQuery(f"unknown table '{col.table}': the join reads '{left.name}' and '{right.name}'",
                                   construct="unknown table")
        else:
            sides = owner.get(name, set())
            if len(sides) > 1:
                raise InvalidQuery(f"column '{col.name}' is in both datasets: name it with its dataset, "
                                   "e.g. a.{0} or b.{0}".format(col.name), construct="ambiguous column")
            side = next(iter(sides)) if sides else ("L" if name == keys["L"] else "R" if name == keys["R"] else "")
            if not side:
                continue  # an output alias or unknown column: plan_query names it
        if name == keys[side]:
            raise InvalidQuery(f"join key '{specs[side].name}.{col.name}' is read outside ON: a key never leaves "
                               "its holder except blinded, so it cannot be selected, grouped or filtered",
                               construct="join key use", column=col.name)
        if side not in owner.get(name, {side}):
            raise InvalidQuery(f"unknown column '{col.name}': dataset '{specs[side].name}' declares no such column",
                               construct="unknown column", column=col.name)
        if name in side_of and side_of[name] != side:
            raise InvalidQuery(f"column '{col.name}' is read from both datasets in one query: not supported in a "
                               "join (the planner names columns once)", construct="ambiguous column")
        side_of[name] = side
        col.set("table", None)
    cols = [c for s in ("L", "R") for c in specs[s].columns
            if c.name.lower() in side_of and side_of[c.name.lower()] == s]
    vspec = replace(right, name=virtual, columns=tuple(cols), max_rows=min(left.max_rows, right.max_rows),
                    min_group_size=max(left.min_group_size, right.min_group_size))
    work, hidden = with_group_size(work)
    text = sql_text(work)
    inner = plan_query(text, vspec, statement=work, max_rows_per_node=vspec.max_rows, max_parties=JOIN_PARTIES,
                       max_cells=max_cells)
    aggregated = {side_of[m.column.lower()] for m in inner.measurements if m.column is not None}
    if len(aggregated) > 1:
        raise InvalidQuery("aggregates over columns of both datasets are not supported in a join yet: aggregate "
                           "one dataset's columns (the other may group and filter)", construct="join aggregate")
    b_side = next(iter(aggregated)) if aggregated else "R"
    a_side = "L" if b_side == "R" else "R"
    conjuncts: dict[str, list[Predicate]] = {"L": [], "R": []}
    if inner.where is not None:
        items = inner.where.items if isinstance(inner.where, And) else (inner.where,)
        for item in items:
            sides = {side_of[c.lower()] for c in predicate_columns(item)}
            if len(sides) != 1:
                raise InvalidQuery("a WHERE condition of a join may read one dataset only (each holder evaluates "
                                   "its own conditions): split it with AND", construct="join filter", clause="WHERE")
            conjuncts[sides.pop()].append(item)

    def side(s: str) -> JoinSide:
        spec = specs[s]
        groups = tuple(g for g in inner.group_columns if side_of[g.lower()] == s)
        values = [spec.column(g).values or () for g in groups]  # type: ignore[union-attr]
        where = conjuncts[s]
        return JoinSide(dataset=spec.name, key=spec.column(keys[s]).name,  # type: ignore[union-attr]
                        join_domain=str(spec.column(keys[s]).join_domain),  # type: ignore[union-attr]
                        max_rows=spec.max_rows, groups=groups,
                        cells=tuple(tuple(c) for c in itertools.product(*values)),
                        where=None if not where else where[0] if len(where) == 1 else And(tuple(where)),
                        columns=tuple(c for c in inner.columns if side_of[c.name.lower()] == s))

    card_eps = min(epsilon * JOIN_CARD_FRACTION, JOIN_CARD_MAX_EPSILON)
    card_delta = delta * JOIN_CARD_FRACTION
    return JoinPlan(sql=sql, inner=inner, a=side(a_side), b=side(b_side), query_epsilon=epsilon - card_eps,
                    query_delta=delta - card_delta, card_epsilon=card_eps, card_delta=card_delta,
                    dummy_shift=dummy_shift_for(card_eps, card_delta), hidden_count=hidden)


def join_noise_plan(plan: JoinPlan) -> NoisePlan:
    """The noise each holder adds on its own (docs/private-joins.md, "Privacy accounting"): the
    plan's measurements over all cells, calibrated for one honest share, so either holder's share
    alone meets (query_epsilon, query_delta). The gateway computes the same for the intervals."""
    ms = [Measurement(name=m.key, l2_sensitivity=m.sensitivity, dim=len(plan.inner.cells),
                      l1_sensitivity=m.sensitivity) for m in plan.inner.measurements]
    return plan_noise(plan.query_epsilon, plan.query_delta, ms, 1)


def join_cost(plan: JoinPlan) -> tuple[float, float]:
    """(epsilon, delta) a join charges on each of the two ledgers: the aggregates' noise plus the
    matched dummies that hide the intersection size from the gateway."""
    noise = join_noise_plan(plan)
    return noise.epsilon + plan.card_epsilon, noise.delta + plan.card_delta


def join_slots(n_bits: int, slot_bits: int = JOIN_SLOT_BITS) -> int:
    """A-cells one join ciphertext holds: slots of ``slot_bits`` below 2^(n_bits - 2), so that every
    packed signed total stays below n/2 in magnitude and decodes unambiguously."""
    return (n_bits - 2) // slot_bits


def pack_slots(values: list[int], n: int, slot_bits: int = JOIN_SLOT_BITS) -> int:
    """Signed slot values -> one Paillier plaintext in [0, n): sum of v_g * 2^(g*W), reduced mod n."""
    return sum(int(v) << (g * slot_bits) for g, v in enumerate(values)) % n


def unpack_slots(plaintext: int, n: int, count: int, slot_bits: int = JOIN_SLOT_BITS) -> list[int]:
    """Inverse of ``pack_slots`` for sums of packed plaintexts, as long as every slot stays in
    (-2^(W-1), 2^(W-1)): the plaintext is read as signed (above n/2 is negative), then each slot
    is the signed low W bits and is removed before the next (the borrow of a negative slot)."""
    p = plaintext - n if plaintext > n // 2 else plaintext
    out = []
    half, full = 1 << (slot_bits - 1), 1 << slot_bits
    for _ in range(count):
        s = p & (full - 1)
        if s >= half:
            s -= full
        out.append(s)
        p = (p - s) >> slot_bits
    if p != 0:
        raise InvalidQuery("a join total does not decode: a slot overflowed (wrong key or a deviating party)")
    return out
