"""A job's notebook: parameters injected papermill's way, secrets masked, sizes bounded.

Parameters follow papermill's convention so that notebooks written for it run
unchanged: a code cell tagged ``injected-parameters`` that assigns each parameter is
inserted after the first cell tagged ``parameters`` (at the top when there is none),
replacing an injected cell left by an earlier run. Values are JSON (strings, numbers,
booleans, null, lists, objects) written as Python literals, so the kernel must speak
Python. Secrets are never parameters: they go to the kernel's environment
(``secrets_code``), in a silent request that keeps no history, and every value is
replaced by ``***`` wherever it would show up in an output (as CI systems mask theirs).
"""

from __future__ import annotations

import base64
import json
import keyword
import math
import re
from typing import Any

from hometier.errors import UsageError

MAX_PARAMETERS_JSON = 64 * 1024
MASK = "***"
MIN_MASKED = 4
"""Shorter secret values are not masked (masking "a" would garble every output)."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def nbf() -> Any:
    """nbformat, imported when first needed (the CLI starts without it), untyped."""
    import nbformat

    return nbformat


class BadParameters(UsageError):
    """Invalid parameters: {}."""


class NotANotebook(UsageError):
    """{!r} is not a Jupyter notebook this hometier can run: {}."""


def check_parameters(params: Any) -> dict[str, Any]:
    """``params`` if it is an object of Python-identifier names to finite JSON values."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadParameters("they must be an object of names to values")
    if len(json.dumps(params)) > MAX_PARAMETERS_JSON:
        raise BadParameters(f"they take more than {MAX_PARAMETERS_JSON} bytes")
    for name, value in params.items():
        if not _NAME.match(name) or keyword.iskeyword(name):
            raise BadParameters(f"{name[:40]!r} is not a Python variable name")
        _check_value(name, value)
    return params


def _check_value(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadParameters(f"{name} is not a finite number")
    if isinstance(value, list):
        for v in value:
            _check_value(name, v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadParameters(f"{name} has a key that is not a string")
            _check_value(name, v)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise BadParameters(f"{name} is not a JSON value")


def check_secret_name(name: Any) -> str:
    """A secret's name is the environment variable the kernel sees."""
    if not isinstance(name, str) or not _ENV.match(name):
        raise UsageError(
            f"invalid secret name {str(name)[:40]!r}: letters, digits and _, not first a digit"
        )
    return name


def load(data: bytes, path: str) -> Any:
    """The notebook in ``data`` (nbformat 4), validated."""
    nbformat = nbf()
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several kinds; all mean "cannot run this"
        raise NotANotebook(path, str(exc).splitlines()[0][:200]) from None
    return nb


def from_script(code: str) -> Any:
    """A one-cell notebook holding a script, so both kinds run the same way."""
    nbformat = nbf()
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(code))
    return nb


def inject_parameters(nb: Any, params: dict[str, Any]) -> None:
    """Insert (or replace) the ``injected-parameters`` cell; see the module docstring."""
    nbformat = nbf()
    cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    if params:
        lines = ["# Parameters (injected by hometier)"]
        lines += [f"{name} = {value!r}" for name, value in params.items()]
        cell = nbformat.v4.new_code_cell("\n".join(lines) + "\n")
        cell.metadata["tags"] = ["injected-parameters"]
        at = next(
            (i + 1 for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), 0
        )
        cells.insert(at, cell)
    nb.cells = cells


def secrets_code(values: dict[str, str]) -> str:
    """Python that puts ``values`` into the kernel's environment (and so into the
    environment of every process it starts). Base64 keeps quoting out of it."""
    blob = base64.b64encode(json.dumps(values).encode()).decode()
    return (
        "import os as _h_os, json as _h_json, base64 as _h_b64\n"
        f"_h_os.environ.update(_h_json.loads(_h_b64.b64decode('{blob}')))\n"
        "del _h_os, _h_json, _h_b64\n"
    )


class Masker:
    """Replaces secret values (and their JSON-escaped forms) in text."""

    def __init__(self, values: list[str]) -> None:
        forms: set[str] = set()
        for v in values:
            if len(v) >= MIN_MASKED:
                forms.add(v)
                forms.add(json.dumps(v)[1:-1])
                forms.update(line for line in v.splitlines() if len(line) >= MIN_MASKED)
        # Longest first, so a value that contains another is masked whole.
        self.forms = sorted(forms, key=len, reverse=True)

    def text(self, s: str) -> str:
        for form in self.forms:
            if form in s:
                s = s.replace(form, MASK)
        return s

    def any(self, obj: Any) -> Any:
        """``obj`` (outputs: dicts, lists, strings) with every string masked."""
        if not self.forms:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            return [self.any(o) for o in obj]
        if isinstance(obj, dict):
            return obj.__class__({k: self.any(v) for k, v in obj.items()})
        return obj


def output_size(output: Any) -> int:
    """Bytes an output takes in the saved notebook (roughly its JSON)."""
    return len(json.dumps(output, default=str))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def as_log(nb: Any) -> str:
    """A script run's log: what it printed, and the traceback if it failed."""
    out: list[str] = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif o.get("output_type") == "error":
                out.append(_ANSI.sub("", "\n".join(o.get("traceback", []))) + "\n")
            elif "data" in o and "text/plain" in o["data"]:
                out.append(str(o["data"]["text/plain"]) + "\n")
    return "".join(out)
