"""What of an encrypted-delivery (Paillier) query the gateway sees, and which cells it blanks.

Encrypted delivery seals every measurement to the analyst's key, except one: the plan's COUNT(*)
per cell (every plan has one; ``with_group_size`` adds a hidden one). Its noisy total is unmasked
to the gateway by the same secure-aggregation session, from the same masked inputs, so it is
the very value the analyst decrypts in those slots: one release of the count measurement,
charged once in the job's noise plan. The gateway needs it for small-cell suppression, which
then needs no SDK cooperation: a cell whose noisy count is below the holders' minimum group size
is blanked in the released ciphertext (``crypto.paillier.unmask_sealed_sum``).

Both sides compute the revealed slots from the plan alone: a node never reveals a slot in the
clear because the gateway asked for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from xdp_compute.errors import InvalidQuery
from xdp_compute.query.plan import QueryPlan


def revealed_slots(plan: QueryPlan) -> tuple[int, ...]:
    """Positions of the COUNT(*) measurement of every cell (cell order) in the plan's vector;
    ``InvalidQuery`` for a plan without one (the gateway always plans one)."""
    try:
        j = plan.measurement_index("count", None)
    except KeyError:
        raise InvalidQuery("an encrypted-delivery plan needs a COUNT(*) measurement for suppression") from None
    return tuple(plan.index(c, j) for c in range(len(plan.cells)))


def small_cells(counts: Sequence[int], min_group_size: int) -> list[int]:
    """Cells whose noisy COUNT(*) is below ``min_group_size`` — the plain path's rule (the count's
    estimate, clipped at 0, below the minimum), applied to the signed noisy totals."""
    return [c for c, n in enumerate(counts) if max(int(n), 0) < min_group_size]


def cell_slots(plan: QueryPlan, cells: Iterable[int]) -> list[int]:
    """Every position of the given cells in the plan's vector (all their measurements)."""
    return [plan.index(c, j) for c in cells for j in range(len(plan.measurements))]
