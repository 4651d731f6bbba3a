"""A local SMTP server for the demo: it accepts every message and keeps it as a file to read.

Enough of SMTP (RFC 5321) for Django's SMTP backend and the email health check: greeting,
EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT. No TLS, no auth, no relay:
it listens on 127.0.0.1 only and is for reading what the demo's jobs sent.
"""
from __future__ import annotations

import itertools
import socketserver
import threading
import time
from pathlib import Path

MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class _Session(socketserver.StreamRequestHandler):
    server: "_Server"

    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self._reply("220 checkout-demo-mail ESMTP ready")
        sender, recipients = None, []
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            command, _, argument = raw.decode("latin-1").strip().partition(" ")
            verb = command.upper()
            if verb == "EHLO":
                self._reply("250-checkout-demo-mail")
                self._reply(f"250 SIZE {MAX_MESSAGE_BYTES}")
            elif verb == "HELO":
                self._reply("250 checkout-demo-mail")
            elif verb == "MAIL":
                sender, recipients = argument, []
                self._reply("250 OK")
            elif verb == "RCPT":
                if sender is None:
                    self._reply("503 MAIL first")
                    continue
                recipients.append(argument)
                self._reply("250 OK")
            elif verb == "DATA":
                if not recipients:
                    self._reply("503 RCPT first")
                    continue
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                message = self._read_data()
                if message is None:
                    return
                self.server.keep(message)
                sender, recipients = None, []
                self._reply("250 OK: kept")
            elif verb == "RSET":
                sender, recipients = None, []
                self._reply("250 OK")
            elif verb == "NOOP":
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply(f"502 {verb or 'empty command'} not implemented")

    def _read_data(self) -> bytes | None:
        lines, size = [], 0
        while True:
            line = self.rfile.readline(MAX_MESSAGE_BYTES)
            if not line:
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            if line.startswith(b".."):
                line = line[1:]
            size += len(line)
            if size <= MAX_MESSAGE_BYTES:
                lines.append(line)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, directory: Path):
        super().__init__(address, _Session)
        self.directory = directory
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def keep(self, message: bytes) -> None:
        with self._lock:
            number = next(self._numbers)
        path = self.directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{number:05d}.eml"
        path.write_bytes(message)


class MailSink:
    """Serve SMTP on 127.0.0.1 (port 0: any free port) in a thread; messages land in `directory`."""

    def __init__(self, directory: Path, port: int = 0):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._server = _Server(("127.0.0.1", port), directory)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-mail", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "MailSink":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def messages(self) -> list[Path]:
        return sorted(self.directory.glob("*.eml"))
