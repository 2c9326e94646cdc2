"""For the env integration tests: an index that can stall in the middle of a build, and
:func:`run_in` to run a line of Python in a built env.

The index serves a wheelhouse as a package index (the "simple" API of PEP 503: ``/<project>/``
lists that project's wheels) over HTTP on 127.0.0.1, and holds every wheel download until
released, so a test can catch uv in the middle of a build. With it as uv's only index
(``offline_uv(index.url)``), nothing is asked of any other host.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

STALL_LIMIT_S = 30.0  # a stalled request never outlives a test by much


def run_in(python: Path, code: str) -> str:
    """What ``code`` prints, run by ``python``; fails the test if it fails."""
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class StallingIndex:
    def __init__(self, wheelhouse: Path, delay_s: float | None = None) -> None:
        self.wheelhouse = wheelhouse
        self.delay_s = delay_s  # None: hold downloads until release()
        self.wheel_requested = threading.Event()
        self.released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def release(self) -> None:
        self.released.set()

    def wheels_of(self, project: str) -> list[Path]:
        """The wheelhouse's wheels of ``project`` (any spelling of its name)."""
        wanted = canonicalize_name(project)
        return [
            path
            for path in sorted(self.wheelhouse.glob("*.whl"))
            if parse_wheel_filename(path.name)[0] == wanted
        ]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[0] == "files" and len(parts) == 2:
                    path = index.wheelhouse / parts[1]
                    if not path.is_file():
                        self.send_error(404)
                        return
                    index.wheel_requested.set()
                    index.released.wait(STALL_LIMIT_S if index.delay_s is None else index.delay_s)
                    data = path.read_bytes()
                    content_type = "application/octet-stream"
                elif len(parts) == 1:
                    wheels = index.wheels_of(parts[0])
                    if not wheels:
                        self.send_error(404)
                        return
                    links = "".join(f'<a href="/files/{p.name}">{p.name}</a>\n' for p in wheels)
                    data = f"<html><body>\n{links}</body></html>\n".encode()
                    content_type = "text/html"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler

    @contextmanager
    def running(self) -> Iterator[StallingIndex]:
        self._thread.start()
        try:
            yield self
        finally:
            self.release()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
