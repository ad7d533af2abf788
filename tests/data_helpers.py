"""Shared helpers for the data-pipeline tests: local corpora, a Range-capable HTTP server."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`$LUMENLM_DATA`, else the repo's ../shared/data, else None."""
    for candidate in (os.environ.get("LUMENLM_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def require_shared(name: str) -> Path:
    """The shared local copy of a dataset folder, or skip the test with the reason."""
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"local dataset copy {name!r} not found ($LUMENLM_DATA or ../shared/data)")
    return root / name


STORIES = [
    "Once upon a time, a little fox found a red ball. She played all day.",
    "Tom had a big dog named Max. Max liked to run in the park with Tom.",
    "The sun was hot. Lily ate ice cream. \u201cYum!\u201d she said, and smiled.",
    "A small bird sat on a tree. It sang a song to the wind and the sky.",
    "Ben and Sue built a tall tower of blocks. Then it fell down. They laughed.",
    "Caf\u00e9 owners in Z\u00fcrich serve \u00e9clairs \u2014 and na\u00efve tourists pay \u20ac5.",
]


def write_stories(path: Path, n: int = 60, sep: str = "<|endoftext|>") -> list[str]:
    """A TinyStories-layout file with n distinct stories; returns the stories."""
    stories = [f"{STORIES[i % len(STORIES)]} Story number {i}." for i in range(n)]
    path.write_text("".join(f"{s}\n{sep}\n" for s in stories), encoding="utf-8")
    return stories


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with HTTP Range support; records requests; can cut a response short."""

    requests: list[tuple[str, str | None]]  # (path, Range header)
    cut_after: int | None = None  # when set, the next response stops after this many bytes

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        type(self).requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextmanager
def serve_folder(folder: Path) -> Iterator[tuple[str, type[RangeHandler]]]:
    """Run a threaded HTTP server on 127.0.0.1 serving `folder`; yields (base URL, handler class)."""
    handler = type("Handler", (RangeHandler,), {"requests": [], "cut_after": None})

    def factory(*args: object, **kwargs: object) -> RangeHandler:
        return handler(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
