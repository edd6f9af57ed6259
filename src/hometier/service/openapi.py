"""The OpenAPI 3.1 description of the API, served at ``{prefix}api/openapi.json``."""

from __future__ import annotations

from typing import Any

from hometier import __version__
from hometier.service.api.jobs import openapi_paths as jobs_paths
from hometier.state import HOME_STATES
from hometier.state.listing import MAX_LIMIT, SORTS

_USER = {"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}
_SNAP = {
    "name": "snapshot",
    "in": "path",
    "required": True,
    "description": "A snapshot id, a unique prefix of at least 6 hex digits, or `latest`.",
    "schema": {"type": "string"},
}
_PATH = [
    {
        "name": "path",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Path inside the snapshot.",
    },
    {
        "name": "path_b64",
        "in": "query",
        "schema": {"type": "string"},
        "description": "The path, base64 (names that are not UTF-8).",
    },
]
_ERR = {
    "description": "Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _op(
    summary: str,
    scope: str,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    ok: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs: {scope}.",
        "parameters": params or [],
        "responses": {
            ok: {"description": "OK"},
            "400": _ERR,
            "401": _ERR,
            "403": _ERR,
            "404": _ERR,
            "503": {
                **_ERR,
                "description": "The state database or object storage is "
                "unreachable; retry after the Retry-After header's seconds",
            },
        },
        "security": [{"token": []}],
    }
    if body is not None:
        op["requestBody"] = {"content": {"application/json": {"schema": body}}}
    return op


OWN = "the home's own user (access to the service), or custom:hometier:{} for that user, or custom:hometier:admin"


def openapi(prefix: str) -> dict[str, Any]:
    lease_body = {
        "type": "object",
        "properties": {
            "holder": {"type": "string"},
            "purpose": {"type": "string"},
            "duration": {"oneOf": [{"type": "string", "examples": ["2h"]}, {"type": "number"}]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hometier",
            "version": __version__,
            "description": "Archive idle JupyterHub homes and restore them at login.",
        },
        "servers": [{"url": prefix.rstrip("/") or "/"}],
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <JupyterHub API token>`",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "kind": {"type": "string"},
                        "reference": {
                            "type": "string",
                            "description": "Quote it to the administrators: the log line "
                            "with the detail carries it.",
                        },
                        "detail": {"type": "string", "description": "Admins only."},
                    },
                }
            },
        },
        "paths": {
            "/api/homes": {
                "get": _op(
                    "List homes: one page, filtered, sorted and paged by the database",
                    "custom:hometier:admin",
                    [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(HOME_STATES)},
                        },
                        {
                            "name": "q",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "Part of the user name, any case.",
                        },
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(SORTS), "default": "user"},
                            "description": "A leading `-` sorts descending (as order=desc). "
                            "`size` is the measured size, else the newest snapshot's. Missing "
                            "values sort last; ties by creation.",
                        },
                        {
                            "name": "order",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["asc", "desc"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": 500,
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "The previous page's `next_cursor`: the next page, "
                            "stable while homes change (preferred to offset).",
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                    ],
                )
            },
            "/api/homes/{user}": {
                "get": _op("State of a home and its active leases", OWN.format("read"), [_USER])
            },
            "/api/homes/{user}/restore": {
                "post": _op(
                    "Request a restore (idempotent: joins one in flight)",
                    OWN.format("restore"),
                    [_USER],
                    ok="202",
                ),
                "get": _op("Follow a restore by polling", OWN.format("restore"), [_USER]),
            },
            "/api/homes/{user}/restored": {
                "post": _op(
                    "Record that an init container unpacked the home into its volume",
                    OWN.format("restore"),
                    [_USER],
                )
            },
            "/api/homes/{user}/restore/events": {
                "get": _op("Follow a restore as server-sent events", OWN.format("restore"), [_USER])
            },
            "/api/homes/{user}/leases": {
                "get": _op("Active leases", OWN.format("lease"), [_USER]),
                "post": _op(
                    "Acquire a lease (restores an archived home)",
                    OWN.format("lease"),
                    [_USER],
                    lease_body,
                    ok="201",
                ),
            },
            "/api/homes/{user}/leases/{lease}": {
                "put": _op(
                    "Renew a lease",
                    OWN.format("lease"),
                    [
                        _USER,
                        {
                            "name": "lease",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    lease_body,
                ),
                "delete": _op(
                    "Release a lease",
                    OWN.format("lease"),
                    [
                        _USER,
                        {
                            "name": "lease",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                ),
            },
            "/api/homes/{user}/snapshots": {
                "get": _op("Snapshots of a home, newest first", OWN.format("read"), [_USER])
            },
            "/api/homes/{user}/snapshots/{snapshot}/tree": {
                "get": _op(
                    "Entries of a folder in a snapshot", OWN.format("read"), [_USER, _SNAP, *_PATH]
                )
            },
            "/api/homes/{user}/snapshots/{snapshot}/file": {
                "get": _op("Download one file", OWN.format("read"), [_USER, _SNAP, *_PATH])
            },
            "/api/homes/{user}/snapshots/{snapshot}/archive": {
                "get": _op(
                    "Download a folder as tar (full fidelity) or zip",
                    OWN.format("read"),
                    [
                        _USER,
                        _SNAP,
                        *_PATH,
                        {"name": "format", "in": "query", "schema": {"enum": ["tar", "zip"]}},
                    ],
                )
            },
            "/api/homes/{user}/archive": {
                "post": _op("Archive now (all safety checks)", "custom:hometier:admin", [_USER])
            },
            "/api/homes/{user}/exempt": {
                "put": _op(
                    "Never archive this home",
                    "custom:hometier:admin",
                    [_USER],
                    {"type": "object", "properties": {"reason": {"type": "string"}}},
                ),
                "delete": _op("Lift the exemption", "custom:hometier:admin", [_USER]),
            },
            **jobs_paths(_op),
            "/health": {
                "get": {
                    "summary": "Liveness and database reachability",
                    "responses": {
                        "200": {"description": "OK"},
                        "503": {**_ERR, "description": "The state database is unreachable"},
                    },
                }
            },
            "/metrics": {
                "get": _op(
                    "Prometheus metrics", "custom:hometier:admin (unless metrics are public)"
                )
            },
        },
    }
