"""``hometier.notify``: real deliveries to a real SMTP server and a real HTTP webhook on
127.0.0.1, and the service's callbacks that send them (``service.notices``).

The SMTP sink is a small line-protocol server (EHLO, MAIL, RCPT, DATA, QUIT) that stores
each message; Python's ``smtplib`` talks to it exactly as to a mail relay. The webhook is
an ``http.server`` that records each POST body. Both bind 127.0.0.1 on free ports and
are stopped by the test.
"""

from __future__ import annotations

import email
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.policy import default
from typing import Any

import pytest

from hometier.notify import Notifier
from hometier.service.notices import archive_notice, chain, restore_notice


class _SmtpHandler(socketserver.StreamRequestHandler):
    def _say(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        server: SmtpSink = self.server.sink  # type: ignore[attr-defined]
        self._say("220 sink ESMTP")
        rcpt: list[str] = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._say("250 sink")
            elif verb == "MAIL":
                rcpt = []
                self._say("250 ok")
            elif verb == "RCPT":
                rcpt.append(cmd.split(":", 1)[1].strip(" <>"))
                self._say("250 ok")
            elif verb == "DATA":
                self._say("354 go on")
                data = bytearray()
                while True:
                    part = self.rfile.readline()
                    if part in (b".\r\n", b".\n", b""):
                        break
                    data += part[1:] if part.startswith(b"..") else part
                server.messages.append(
                    (rcpt, email.message_from_bytes(bytes(data), policy=default))
                )
                self._say("250 queued")
            elif verb == "QUIT":
                self._say("221 bye")
                return
            else:
                self._say("250 ok")


@dataclass
class SmtpSink:
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    port: int = 0


@dataclass
class Hook:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    status: int = 200


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.sink = sink  # type: ignore[attr-defined]
    server.daemon_threads = True
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    got = Hook()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.bodies.append({"_content_type": self.headers["Content-Type"], **json.loads(body)})
            self.send_response(got.status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield got
    server.shutdown()
    server.server_close()


def _notifier(smtp: SmtpSink | None, hook: Hook | None, **kw: Any) -> Notifier:
    n = Notifier(
        webhook_url=f"http://127.0.0.1:{hook.port}/hooks/hometier" if hook else "",
        smtp_host="127.0.0.1" if smtp else "",
        smtp_port=smtp.port if smtp else 25,
        admin_emails=["ops@example.org", "oncall@example.org"],
        user_email_template="{username}@users.example.org",
        **kw,
    )
    return n


@dataclass
class _Result:
    user: str
    outcome: str
    snapshot: str | None = "ab" * 32
    reason: str = ""
    bytes: int = 3 * 1024**3
    details: list[str] = field(default_factory=list)


@dataclass
class _Job:
    user: str
    state: str = "failed"
    reason: str | None = "damaged"
    reference: str | None = "1a2b3c4d"
    error: str | None = "Your files could not be restored: part of the archive is damaged."
    detail: str | None = "pack 12ab… not found in the repository"


def test_an_archived_home_mails_its_user_with_the_way_back(smtp: SmtpSink, hook: Hook) -> None:
    n = _notifier(smtp, hook)
    archive_notice(n, _Result("alice", "archived"), 12.0)
    n.close()
    [(to, msg)] = smtp.messages
    assert to == ["alice@users.example.org"]
    assert msg["Subject"] == "Your JupyterHub files were archived"
    body = msg.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert "log in to JupyterHub and start your server: your files come back" in body
    assert "3.0 GiB" in body and "Nothing was lost" in body
    [doc] = hook.bodies
    assert doc["_content_type"] == "application/json"
    assert doc["event"] == "archived" and doc["user"] == "alice" and doc["audience"] == "user"
    assert doc["snapshot"] == "ab" * 32 and doc["bytes"] == 3 * 1024**3


def test_failures_go_to_the_admins_once_per_quiet_period(smtp: SmtpSink, hook: Hook) -> None:
    n = _notifier(smtp, hook, quiet_for=3600)
    # A login storm against a damaged archive: fifty failed restores of the same home.
    for _ in range(50):
        restore_notice(n, _Job("carol"), None)
    restore_notice(n, _Job("dave"), None)
    archive_notice(n, _Result("erin", "failed", reason="it changed while archiving"))
    archive_notice(n, _Result("erin", "changed"))  # kept on the volume: nothing to say
    restore_notice(n, _Job("frank", state="done"), None)  # succeeded: nothing to say
    n.close()
    events = [(d["event"], d["user"]) for d in hook.bodies]
    assert events == [
        ("restore-failed", "carol"),
        ("restore-failed", "dave"),
        ("archive-failed", "erin"),
    ]
    carol = hook.bodies[0]
    assert carol["audience"] == "admins" and carol["reference"] == "1a2b3c4d"
    assert "part of the archive is damaged" in carol["text"]
    assert [to for to, _m in smtp.messages] == [["ops@example.org", "oncall@example.org"]] * 3
    assert smtp.messages[2][1]["Subject"] == "hometier: archiving erin failed"


def test_the_quiet_period_ends(hook: Hook) -> None:
    n = _notifier(None, hook, quiet_for=60)
    clock = [1000.0]
    n.clock = lambda: clock[0]
    for step in (0, 30, 61, 62):
        clock[0] = 1000.0 + step
        restore_notice(n, _Job("carol"), None)
    n.close()
    assert len(hook.bodies) == 2


def test_a_dead_channel_never_breaks_the_caller_nor_the_other_channel(hook: Hook) -> None:
    # Nothing listens on the SMTP port; the webhook answers 500: the callers return at
    # once, the webhook still gets its message, and the failures are logged.
    n = _notifier(None, hook)
    n.smtp_host, n.smtp_port = "127.0.0.1", 1
    hook.status = 500
    began = time.monotonic()
    fut = n.notify("restore-failed", "carol", "s", "t")
    assert time.monotonic() - began < 0.5
    assert fut is not None
    fut.result(timeout=30)  # delivered (or not) without raising
    assert len(hook.bodies) == 1
    on_archive = chain(lambda *a: 1 / 0, lambda r, s: archive_notice(n, r, s))
    on_archive(_Result("zoe", "archived"), 1.0)  # the first callback fails, the second runs
    n.close()
    assert [d["user"] for d in hook.bodies] == ["carol", "zoe"]


def test_no_channel_means_not_enabled_and_nothing_sent() -> None:
    n = Notifier()
    assert not n.enabled
    assert n.notify("restore-failed", "carol", "s", "t") is None
    users_only = Notifier(smtp_host="127.0.0.1", user_email_template="{username}@x.org")
    assert not users_only.enabled  # admins hear nothing: the user page must not say so
    n.close()
    users_only.close()


def test_a_loop_without_the_api_notifies_too(hook: Hook) -> None:
    from types import SimpleNamespace

    from traitlets.config import Config

    from hometier.service.notices import install_notifier

    seen: list[str] = []
    lc = SimpleNamespace(on_archive=lambda result, seconds: seen.append(result.outcome))
    config = Config()
    config.Notifier.webhook_url = f"http://127.0.0.1:{hook.port}/x"
    n = install_notifier(lc, config)
    lc.on_archive(_Result("una", "archived"), 3.0)
    n.close()
    assert seen == ["archived"]  # the callback that was there still runs
    assert [d["user"] for d in hook.bodies] == ["una"]
