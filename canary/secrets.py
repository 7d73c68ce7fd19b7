"""Every secret canary holds, known by value, so no message, output or record can ever carry one.

Tokens and passwords are registered where they are read (a Prometheus token or password file, a kubeconfig's
bearer token); `scrub` replaces each known value with `***` in any text. The CLI scrubs everything it prints,
and the audit records are scrubbed before they are sealed, so even an error a library raised with a header
in it (`Invalid header value b'Bearer …'`) comes out clean.
"""

from __future__ import annotations

from typing import Any

MASK = "***"
MIN_LENGTH = 4  # shorter values would mask ordinary words
_known: set[str] = set()


def register(value: str | None) -> None:
    """Remember a secret value (and its forms with surrounding whitespace trimmed) to scrub it everywhere."""
    if value is None:
        return
    for form in {value, value.strip()}:
        if len(form) >= MIN_LENGTH:
            _known.add(form)


def scrub(text: str) -> str:
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_data(value: Any) -> Any:
    """`scrub` over every string in plain JSON data (what an audit record is made of)."""
    if not _known:
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_data(v) for v in value]
    return value


def forget_all() -> None:
    """For tests: start from no known secret."""
    _known.clear()
