"""Running code in a kernel of a Jupyter server, over its REST API and kernel websocket.

Why this way: every single-user server JupyterHub starts (whatever the spawner, image
or language) is a jupyter_server that exposes ``/api/kernels`` and the kernel protocol
over ``/api/kernels/<id>/channels``. Driving it from hometier needs nothing installed in
the user's image (no papermill, no extension, no terminal), keeps the run's secrets
out of any file or command line, and lets hometier watch the run as it goes: outputs
are counted while they arrive, so a run that prints without end is stopped at its
limit instead of filling the home. The messages are the Jupyter messaging protocol
(5.3) in the JSON framing jupyter_server speaks by default; tornado's websocket client
carries them; ``nbformat.v4.output_from_msg`` turns them into notebook outputs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from hometier.errors import Error

log = logging.getLogger(__name__)
OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")


class KernelFailed(Error):
    """{}"""

    exit_code = 7
    http_status = 502


class KernelDied(KernelFailed):
    """The kernel died while running the job ({})."""


class OutputTooLarge(Error):
    """The run's output grew past {} bytes; it was stopped (print less, or write large
    results to files)."""

    exit_code = 7
    http_status = 413


class Kernel:
    """One kernel on a Jupyter server at ``base_url`` (``…/user/alice/job-3/``)."""

    def __init__(self, base_url: str, token: str, *, request_timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.request_timeout = request_timeout
        self.id: str | None = None
        self.ws: WebSocketClientConnection | None = None
        self.session = uuid.uuid4().hex
        self.language = "python"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}", "Content-Type": "application/json"}

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        req = HTTPRequest(
            self.base_url + path,
            method=method,
            headers=self._headers(),
            body=json.dumps(body) if body is not None else ("" if method == "POST" else None),
            request_timeout=self.request_timeout,
            follow_redirects=False,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as exc:
            text = exc.response.body.decode(errors="replace")[:300] if exc.response else ""
            raise KernelFailed(
                f"the server answered {exc.code} to {method} {path}: {text}"
            ) from None
        except OSError as exc:
            raise KernelFailed(f"the server could not be reached: {exc}") from None
        return json.loads(resp.body) if resp.body else None

    async def start(self, name: str | None, cwd: str) -> None:
        """Start a kernel (the server's default one if ``name`` is None) in ``cwd``
        (relative to the server's root) and connect to its channels."""
        body: dict[str, Any] = {"path": cwd}
        if name:
            body["name"] = name
        model = await self._call("POST", "api/kernels", body)
        self.id = str(model["id"])
        spec = await self._call("GET", "api/kernelspecs")
        kname = model.get("name") or spec.get("default")
        info = (spec.get("kernelspecs") or {}).get(kname, {}).get("spec", {})
        self.language = str(info.get("language") or "python").lower()
        ws_url = self.base_url.replace("http", "ws", 1) + f"api/kernels/{self.id}/channels"
        ws_url += "?" + urllib.parse.urlencode({"session_id": self.session})
        try:
            self.ws = await websocket_connect(
                HTTPRequest(ws_url, headers=self._headers(), request_timeout=self.request_timeout),
                max_message_size=256 * 1024 * 1024,
            )
        except (HTTPClientError, OSError) as exc:
            raise KernelFailed(f"could not connect to the kernel: {exc}") from None

    def _msg(self, msg_type: str, content: dict[str, Any]) -> tuple[str, str]:
        msg_id = uuid.uuid4().hex
        msg = {
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "hometier",
                "session": self.session,
                "date": dt.datetime.now(dt.UTC).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        }
        return msg_id, json.dumps(msg)

    async def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        on_output: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``code``; returns the ``execute_reply`` content once the kernel is idle.
        ``on_output`` gets each output (a notebook output dict) as it arrives; ``silent``
        requests keep no history and broadcast nothing. ``KernelDied`` if the kernel
        restarts or its connection closes."""
        from hometier.jobs.notebook import nbf

        nbformat = nbf()
        assert self.ws is not None, "start() first"
        msg_id, text = self._msg(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": not silent,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        await self.ws.write_message(text)
        reply: dict[str, Any] | None = None
        idle = False
        while reply is None or not idle:
            raw = await self.ws.read_message()
            if raw is None:
                raise KernelDied("its connection closed")
            if isinstance(raw, bytes):
                continue  # binary frames carry widget buffers; a job has no use for them
            msg = json.loads(raw)
            mtype = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
            content = msg.get("content", {})
            if mtype == "status" and content.get("execution_state") in ("restarting", "dead"):
                raise KernelDied(f"the server reports it {content['execution_state']}")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg.get("channel") == "shell" and mtype == "execute_reply":
                reply = content
            elif mtype == "status" and content.get("execution_state") == "idle":
                idle = True
            elif mtype in OUTPUT_TYPES and on_output is not None:
                msg.setdefault("header", {})["msg_type"] = mtype
                on_output(dict(nbformat.v4.output_from_msg(msg)))
            elif mtype == "clear_output" and on_output is not None:
                on_output({"output_type": "clear_output", "wait": content.get("wait", False)})
        return reply

    async def interrupt(self) -> None:
        if self.id is not None:
            try:
                await self._call("POST", f"api/kernels/{self.id}/interrupt")
            except KernelFailed as exc:
                log.info("interrupting kernel %s: %s", self.id, exc)

    async def shutdown(self) -> None:
        """Close the connection and delete the kernel (best effort, idempotent)."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.id is not None:
            kid, self.id = self.id, None
            try:
                await self._call("DELETE", f"api/kernels/{kid}")
            except KernelFailed as exc:
                log.info("deleting kernel %s: %s", kid, exc)
