"""Errors that carry their own message, exit code and HTTP status.

Every error hometier reports on purpose is an ``Error``: its docstring is the message
template (formatted with the constructor's arguments), ``exit_code`` is what the CLI exits
with and ``http_status`` what the API answers. One handler in the CLI and one in the API
turn them into output; nothing else calls ``sys.exit``.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar


class Error(Exception):
    """Error: {}"""

    exit_code: ClassVar[int] = 2
    http_status: ClassVar[int] = 500

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.args = args

    def get_message(self) -> str:
        # The first paragraph of the docstring, as one line whatever its wrapping.
        template = " ".join((type(self).__doc__ or "{}").strip().split("\n\n")[0].split())
        try:
            return template.format(*self.args)
        except (IndexError, KeyError, ValueError):
            return " ".join([template, *map(str, self.args)])

    def __str__(self) -> str:
        return self.get_message()


class UsageError(Error):
    """{}"""

    exit_code = 2
    http_status = 400


class NotFound(Error):
    """{}"""

    exit_code = 3
    http_status = 404


class Conflict(Error):
    """{}"""

    exit_code = 4
    http_status = 409


class IntegrityError(Error):
    """Repository integrity error: {}"""

    exit_code = 5
    http_status = 500


def new_reference() -> str:
    """A short id that ties what a user was shown to the log line holding the detail."""
    return secrets.token_hex(4)
