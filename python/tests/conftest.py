"""A real h5depotd for the tests: started on a loopback port and a Unix
socket, stopped at the end. H5DEPOTD names the binary (ctest sets it)."""

import os
import socket
import subprocess
import sys

import pytest


def h5depotd_path():
    path = os.environ.get("H5DEPOTD")
    if not path:
        pytest.exit("H5DEPOTD must name the h5depotd binary (ctest sets it)", 2)
    return path


def free_port_pair():
    """A loopback port whose next port is free too (the lane's)."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port


class Server:
    """One h5depotd process; `target` is its TCP address, `unix_target`
    its Unix socket."""

    def __init__(self, directory, extra_flags=()):
        port = free_port_pair()
        self.target = f"127.0.0.1:{port}"
        self.unix_target = f"unix:{directory}/h5depotd.sock"
        self.process = subprocess.Popen(
            [h5depotd_path(), f"--listen={self.target}",
             f"--unix={directory}/h5depotd.sock", *extra_flags],
            stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        # Ready once it says how much it holds, after every listener is up.
        for line in self.process.stdout:
            if line.startswith("h5depotd holds"):
                break
        else:
            raise RuntimeError(f"h5depotd exited with {self.process.wait()}")

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()
        self.process.stdout.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture
def own_server(tmp_path):
    """A server of the test's own, which the test may kill."""
    running = Server(tmp_path)
    yield running
    running.stop()


@pytest.fixture(params=["tcp", "unix"])
def target(request, server):
    return server.target if request.param == "tcp" else server.unix_target
