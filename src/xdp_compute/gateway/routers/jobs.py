"""Job routes (queries, HE queries, training) — filled in by the jobs module."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["jobs"])
