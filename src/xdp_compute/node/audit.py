"""A node's own journal against the gateway's release log (``xdp node audit``; issue #12).

Every task a node accepted (``node.ledger``: job, principal, plan digest, epsilon, delta, time)
must appear in the release log, which records every decision about a job — released, denied,
failed. A journal entry with no log entry for its job is a computation on this holder's data
that the operator did not log; an entry whose logged cost is below what this node charged is a
log that understates what was spent here. Pure: the caller fetches the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from xdp_compute.node.ledger import JournalEntry

COST_SLACK = 1e-9


@dataclass
class AuditReport:
    checked: int = 0
    missing: list[JournalEntry] = field(default_factory=list)
    understated: list[tuple[JournalEntry, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.understated

    def lines(self) -> list[str]:
        out = [f"job {e.job_id} ({e.kind} on {e.dataset!r}, principal {e.principal or '?'}, plan "
               f"{e.plan_digest[:16]}, epsilon {e.epsilon:.6g}, delta {e.delta:.3g}, at {e.time:.0f}) is missing "
               "from the gateway's release log" for e in self.missing]
        out += [f"job {e.job_id}: the release log records epsilon {logged:.6g}, this node charged {e.epsilon:.6g}"
                for e, logged in self.understated]
        return out


def audit_journal(journal: Iterable[JournalEntry], log_entries: Iterable[dict[str, Any]]) -> AuditReport:
    """Check that each journal entry's job is in ``log_entries`` and is logged at no lower cost."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for e in log_entries:
        if isinstance(e, dict) and e.get("job_id"):
            by_job.setdefault(str(e["job_id"]), []).append(e)
    report = AuditReport()
    for j in journal:
        report.checked += 1
        logged = [x for x in by_job.get(j.job_id, []) if j.dataset in (x.get("datasets") or [])]
        if not logged:
            report.missing.append(j)
            continue
        cost = max(float((x.get("privacy_cost") or {}).get("epsilon") or 0.0) for x in logged)
        if cost + COST_SLACK < j.epsilon:
            report.understated.append((j, cost))
    return report


__all__ = ["AuditReport", "audit_journal"]
