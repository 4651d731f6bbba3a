"""A small TCP proxy (a thread per direction of each connection) that a test can cut and restore.

Put in front of PostgreSQL, it is the network between the workers and their database:
`cut()` closes every open connection (each backend sees its client go, each client
"server closed the connection unexpectedly") and refuses new ones, or, with
`blackhole=True`, accepts them and never answers (the client's connect timeout decides);
`restore()` lets connections through again.
"""
from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

from tests.faults.redis_server import spare_port

OPEN, REFUSE, BLACKHOLE = "open", "refuse", "blackhole"


def _close(sock: socket.socket, *, reset: bool = False) -> None:
    try:
        if reset:  # an RST, as a host that went away answers, rather than an orderly FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. Counts: accepted, refused, severed (open ones cut)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432), port: int | None = None,
                 skip_ports: tuple[int, ...] = ()) -> None:
        self.target = target
        self.port = port or spare_port(skip=skip_ports)
        self.mode = OPEN
        self.accepted = self.refused = self.severed = 0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def url_through(self, url: str) -> str:
        """The same URL with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self, *, blackhole: bool = False) -> int:
        """Close every open connection and stop letting new ones through; how many were closed."""
        with self._lock:
            self.mode = BLACKHOLE if blackhole else REFUSE
            pairs, self._pairs = list(self._pairs), set()
        for client, upstream in pairs:
            _close(client, reset=True)
            _close(upstream)
        self.severed += len(pairs)
        return len(pairs)

    def restore(self) -> None:
        with self._lock:
            self.mode = OPEN
            held, self._held = self._held, []
        for sock in held:  # their clients gave up, or will see them close now
            _close(sock, reset=True)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self.cut()
        self.restore()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                mode = self.mode
                if mode == BLACKHOLE:
                    self._held.append(client)
            if mode == REFUSE:
                self.refused += 1
                _close(client, reset=True)
            elif mode == OPEN:
                self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client, reset=True)
            return
        upstream.settimeout(None)
        pair = (client, upstream)
        with self._lock:
            if self.mode != OPEN:  # cut while connecting
                _close(client, reset=True)
                _close(upstream)
                return
            self._pairs.add(pair)
            self.accepted += 1
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            mine = pair in self._pairs
            self._pairs.discard(pair)
        if mine:  # an orderly end from either side: pass it on
            _close(src)
            _close(dst)
