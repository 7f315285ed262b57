"""HTTP servers on 127.0.0.1 for download tests (fixtures; import them into a test module to use them)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def serve(request):
    """A function that serves a folder over HTTP on 127.0.0.1 and returns its base URL.

    The server binds port 0 (a free port chosen by the kernel) and prints it; the finalizer stops it.
    """

    def start(folder: Path) -> str:
        server = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        request.addfinalizer(lambda: (server.terminate(), server.wait(timeout=10)))
        banner = server.stdout.readline()
        match = re.search(r"port (\d+)", banner)
        assert match, f"http.server did not start: {banner!r}"
        return f"http://127.0.0.1:{match.group(1)}"

    return start


ENDLESS_SERVER = r'''
import http.server, sys, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no Content-Length

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        block = b"+1 1:1 2:1\n" * 10000
        if sys.argv[1] == "slow":  # one block, then nothing: the client is left waiting in a read
            self.wfile.write(block)
            self.wfile.flush()
            time.sleep(120)
            return
        while True:
            self.wfile.write(block)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
'''


@pytest.fixture
def stream_server(request):
    """A function mode -> base URL of a server that answers every GET without Content-Length, with an
    endless body ("endless") or with one block and then silence ("slow")."""

    def start(mode: str) -> str:
        server = subprocess.Popen([sys.executable, "-u", "-c", ENDLESS_SERVER, mode], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        request.addfinalizer(lambda: (server.kill(), server.wait(timeout=10)))
        match = re.search(r"port (\d+)", server.stdout.readline())
        assert match, "the test server did not start"
        return f"http://127.0.0.1:{match.group(1)}"

    return start


