"""Private set intersection for private joins (issue #16): group, blinding, tags, canonical keys.

The protocol is docs/private-joins.md (ECDH double blinding, Ion et al. 2020); ``group`` holds the
prime-order group operations, ``keys`` the per-domain key normalisation both holders apply.
"""

from xdp_compute.crypto.psi.group import (
    GROUP_ORDER,
    POINT_BYTES,
    TAG_BYTES,
    BlindingScalar,
    InvalidPoint,
    blind,
    check_point,
    hash_to_group,
    random_point,
    tag,
    tags,
)
from xdp_compute.crypto.psi.keys import normalise_key

__all__ = [
    "GROUP_ORDER",
    "POINT_BYTES",
    "TAG_BYTES",
    "BlindingScalar",
    "InvalidPoint",
    "blind",
    "check_point",
    "hash_to_group",
    "normalise_key",
    "random_point",
    "tag",
    "tags",
]
