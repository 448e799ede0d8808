"""Names and regions that people read on approval screens, cards and logs: one spelling each.

A node name is ASCII letters, digits, ``.``, ``_`` and ``-`` (no look-alikes from other scripts,
no zero-width or control characters, no markup), at most 63 characters; two names that differ
only in case are the same name for the gateway. A region is an ISO 3166-1 alpha-2 country code,
optionally followed by a subdivision (``CN-FJ``, ``DE-BE``), upper case.
"""

from __future__ import annotations

import re

from xdp_compute.errors import BadRequest

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
REGION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,8})?$")


def check_node_name(name: object) -> str:
    """``name`` if it is a valid node name; BadRequest saying what is allowed otherwise."""
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise BadRequest("a node name is 1-63 ASCII letters, digits, '.', '_' or '-', starting with a letter "
                         f"or digit; got {name!r}")
    return name


def check_region(region: object) -> str:
    """``region`` if it is an upper-case ISO 3166 code (``CN`` or ``CN-FJ``); BadRequest otherwise."""
    if not isinstance(region, str) or not REGION.fullmatch(region):
        raise BadRequest(f"a region is an ISO 3166 code such as 'CN' or 'CN-FJ' (upper case); got {region!r}")
    return region
