"""Fixtures for the browser tests: Chromium, pages, real buses and a page server on another origin."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from support import BusProcess, require_file, start_bus

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000  # the longest any single browser wait may take


def require_chromium() -> None:
    """Skip without Chromium, except in CI where a missing browser is a failure."""
    require_file(CHROMIUM, f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module.

    Not per session: the sync Playwright API marks its event loop as running on this
    thread while it is open, which the asyncio tests in other modules cannot share.
    """
    require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile for one test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught errors of every page opened with ``new_page``; the test fails if any occur."""
    return []


@pytest.fixture
def new_page(context: BrowserContext, page_errors: list[str]) -> Iterator[Callable[[], Page]]:
    """Open tabs in the test's profile, recording uncaught page errors."""

    def factory() -> Page:
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        return page

    yield factory
    assert page_errors == []


@pytest.fixture
def page(new_page: Callable[[], Page]) -> Page:
    """One tab."""
    return new_page()


@pytest.fixture(scope="module")
def shared_bus() -> Iterator[BusProcess]:
    """A real `devbus run` shared by the tests of a module (each uses its own event types)."""
    bus = start_bus()
    yield bus
    bus.stop()
    if bus.proc.stdout is not None:
        bus.proc.stdout.close()


class PageServer:
    """Serve files from a directory on http://localhost:<port>, an origin other than the bus."""

    def __init__(self, root: Path) -> None:
        handler = _quiet_handler(root)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.root = root
        self.origin = f"http://localhost:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, text: str) -> str:
        """Write a file and return its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return f"{self.origin}/{name}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PageServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _quiet_handler(root: Path) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[PageServer]:
    """A page server on another origin, as a Next.js or Vite dev server would be."""
    with PageServer(tmp_path) as server:
        yield server


class CuttableProxy:
    """A loopback TCP proxy to the bus whose connections a test can cut, like a network loss."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refusing = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._refusing:
                    client.close()
                    continue
                upstream = socket.create_connection(self._upstream)
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, target), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            self._drop(source, target)

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                if sock in self._open:
                    self._open.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until ``restore``."""
        with self._lock:
            self._refusing = True
            connections = list(self._open)
        self._drop(*connections)

    def restore(self) -> None:
        """Let connections through again."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        """Drop everything and stop listening."""
        self.cut()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def cuttable_proxy(shared_bus: BusProcess) -> Iterator[CuttableProxy]:
    """A proxy in front of the shared bus."""
    parts = urllib.parse.urlsplit(shared_bus.url)
    assert parts.hostname is not None and parts.port is not None
    proxy = CuttableProxy((parts.hostname, parts.port))
    yield proxy
    proxy.close()


def post_json(url: str, body: object, *, token: str | None = None) -> dict[str, Any]:
    """POST JSON to the bus and return the decoded answer (errors included)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_MS / 1000) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            answer = json.load(error)
    return answer


def emit(bus: BusProcess, event_type: str, data: dict[str, Any] | None = None) -> str:
    """Post one event to the bus over HTTP and return its id."""
    answer = post_json(f"{bus.url}/api/dev/webhook", {"event_type": event_type, "data": data or {}})
    assert answer["success"], answer
    event_id: str = answer["id"]
    return event_id
