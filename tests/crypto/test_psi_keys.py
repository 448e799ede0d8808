"""Canonical join keys (crypto/psi/keys.py): both holders produce the same bytes for the same person."""

from __future__ import annotations

import pytest

from xdp_compute.crypto.psi import normalise_key


def test_every_domain_uses_nfc_and_strips_whitespace() -> None:
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    assert normalise_key("name-id", composed) == normalise_key("name-id", decomposed) == composed.encode()
    assert normalise_key("citizen-id", "  X123 \n") == b"X123"


def test_phone_keeps_digits_and_leading_plus() -> None:
    assert (
        normalise_key("phone", "+86 138-0000-0000")
        == normalise_key("phone", "+8613800000000")
        == b"+8613800000000"
    )
    assert normalise_key("phone", "(010) 1234 5678") == b"01012345678"
    assert normalise_key("phone", "+86 138") != normalise_key("phone", "86 138")
    assert normalise_key("phone", " - ") is None


def test_email_is_case_insensitive_other_domains_are_not() -> None:
    assert normalise_key("email", "Ann@Example.ORG") == b"ann@example.org"
    assert normalise_key("citizen-id", "ab12") != normalise_key("citizen-id", "AB12")


def test_integers_and_text_agree_empty_is_no_key_and_floats_are_refused() -> None:
    assert normalise_key("citizen-id", 12345) == normalise_key("citizen-id", "12345")
    assert normalise_key("citizen-id", "") is None
    assert normalise_key("citizen-id", None) is None
    with pytest.raises(TypeError, match="float"):
        normalise_key("citizen-id", 1.0)
    with pytest.raises(TypeError, match="bool"):
        normalise_key("citizen-id", True)
