"""Integers from untrusted text (URLs, query strings, JSON strings), refused before they cost anything.

Python refuses to convert more than 4300 digits (ValueError) and a long conversion costs quadratic time,
so the length is checked first: a hostile number is simply out of range.
"""

from __future__ import annotations

INT_MAX = 2**31 - 1  # PostgreSQL's integer columns (ids, user ids, counts)


def parse_int(text: str, minimum: int, maximum: int) -> int | None:
    """The integer written in ``text`` (ASCII digits only) if it lies in [minimum, maximum], else None."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits)
    return value if minimum <= value <= maximum else None
