"""A static file server for tests that honours single HTTP Range requests (as GDAL's
/vsicurl needs) and counts the requests it gets, so a test can assert none were sent."""

from __future__ import annotations

import http.server
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single Range requests; ``requests`` counts every GET (subclass it
    per test, ``type("H", (RangeHandler,), {"requests": 0})``, to count separately)."""

    requests = 0

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        type(self).requests += 1
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start : end + 1]
        else:
            self.send_response(200)
            body = data
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
