"""Store errors and the classification of backend exceptions into them."""

from __future__ import annotations

import re

import obstore.exceptions as obx

from hometier.errors import Conflict, Error, IntegrityError, NotFound


class StoreError(Error):
    """Object storage error: {}"""

    exit_code = 6
    http_status = 502


class ShortRead(StoreError, IntegrityError):
    """Object {} is shorter than expected (range {}-{} returned {} bytes)."""


class StoreUnavailable(StoreError):
    """Object storage at {} did not answer after {} attempts: {}"""

    http_status = 503


class AccessDenied(StoreError):
    """Access to {} was denied: check the credentials (AWS_*, GOOGLE_*, AZURE_* variables). {}"""

    http_status = 502


class BucketNotFound(StoreError):
    """The bucket or container of {} does not exist: {}"""


class ObjectNotFound(StoreError, NotFound):
    """Object {} not found in the repository."""

    exit_code = 3
    http_status = 404


class ObjectExists(StoreError, Conflict):
    """Object {} already exists."""

    exit_code = 4
    http_status = 409


_STATUS = re.compile(r"status code: (\d{3})")
_PERMANENT_CODES = (
    "NoSuchBucket",
    "InvalidBucketName",
    "ContainerNotFound",
    "AccountIsDisabled",
    # A range outside the object (memory and local stores say so without a status code).
    "InvalidRange",
    "Invalid range",
    "Requested range was invalid",
)


def status_code(exc: BaseException) -> int | None:
    """The HTTP status in a backend error's text (obstore's GenericError has no field)."""
    m = _STATUS.search(str(exc))
    return int(m.group(1)) if m else None


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same request may succeed (network, throttling, 5xx)."""
    if isinstance(
        exc,
        FileNotFoundError
        | obx.NotFoundError
        | obx.PermissionDeniedError
        | obx.UnauthenticatedError
        | obx.AlreadyExistsError
        | obx.PreconditionError
        | obx.InvalidPathError
        | obx.NotSupportedError
        | obx.UnknownConfigurationKeyError
        | FileExistsError
        | PermissionError
        | IsADirectoryError
        | NotADirectoryError
        # Invalid arguments (obstore: an empty or inverted range) never heal.
        | ValueError
        | TypeError,
    ):
        return False
    if type(exc).__name__ == "PanicException":
        # A bug in the Rust client (obstore slicing a coalesced range read of an object
        # that is shorter than asked for) happens again on every retry.
        return False
    text = str(exc)
    if any(code in text for code in _PERMANENT_CODES):
        return False
    status = status_code(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
        # Local filesystem: a full disk or read-only volume will not heal by retrying.
        return False
    # Connection refused/reset, timeouts, truncated bodies: obstore raises GenericError.
    return True


def short(exc: BaseException) -> str:
    """The first line of a backend error, without obstore's debug dump."""
    text = str(exc).split("\n\nDebug source:")[0].strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
