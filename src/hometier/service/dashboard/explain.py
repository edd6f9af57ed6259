"""Errors as people read them: one sentence, the reference, the detail on demand.

The database records an error as the operator's detail (a store error names the bucket
and the key, an exception's repr names a class). The dashboard's tables show instead
one sentence chosen by what kind of failure it was, the *reference* the log line
carries, and the recorded text behind a "details" toggle, for admins only, with its
64-hex ids shortened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hometier.lifecycle.restoring import REASONS
from hometier.service.dashboard.summary import tidy

REFERENCE = re.compile(r"\breference ([0-9a-f]{6,16})\b")

# (pattern in the detail, the sentence): the first that matches wins.
KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), text)
    for p, text in (
        (
            r"unreachable|timed? ?out|connection (refused|reset)|StoreUnavailable|"
            r"could not connect|Name or service not known",
            "Object storage could not be reached.",
        ),
        (
            r"not found in the repository|NoSuchKey|ObjectNotFound|damaged|hash mismatch|"
            r"IntegrityError|VerifyFailed",
            "Part of the archive is missing or damaged.",
        ),
        (r"No space left|ENOSPC|volume-full|disk full", "The home volume is full."),
        (
            r"Permission denied|EACCES|EPERM|AccessDenied|Forbidden",
            "Access was refused (file permissions or storage credentials).",
        ),
        (r"changed while|changed during|files changed", "Files changed while they were archived."),
        (r"OperationalError|database", "The state database did not answer."),
    )
)


@dataclass(frozen=True)
class Explained:
    sentence: str
    """One sentence, no names of buckets, keys, classes or paths."""
    reference: str | None
    detail: str
    """The recorded text, tidied (ids shortened, times human): for admins."""


def explain(error: str | None, recorded: dict[str, Any] | None = None, what: str = "") -> Explained:
    """``error`` (a home's or an event's recorded text) for a person; ``recorded`` is
    the error event's detail (``reason``, ``reference``) when there is one; ``what``
    names the operation ("Restore", "Archive") to start the sentence with."""
    text = (error or "").strip()
    recorded = recorded or {}
    ref = recorded.get("reference")
    if not ref:
        m = REFERENCE.search(text)
        ref = m.group(1) if m else None
    reason = recorded.get("reason")
    sentence = ""
    if reason in REASONS and reason != "internal":
        why = REASONS[reason][0]
        sentence = why[0].upper() + why[1:] + "."
    else:
        for pattern, kind in KINDS:
            if pattern.search(text):
                sentence = kind
                break
    if not sentence:
        sentence = "The operation failed; the details say where." if text else "No message."
    if what:
        sentence = f"{what} failed: {sentence[0].lower()}{sentence[1:]}"
    return Explained(sentence, str(ref) if ref else None, tidy(text))


def event_detail(detail: dict[str, Any] | None) -> str:
    """An event's detail as ``key: value`` pairs, tidied."""
    if not detail:
        return ""
    return tidy(", ".join(f"{k}: {v}" for k, v in detail.items()))


__all__ = ["Explained", "event_detail", "explain"]
