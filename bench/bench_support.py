"""What the Python-driven benchmarks (cli_bench.sh, python_bench.sh)
share: starting an h5depotd on loopback, its lane on the next port as
deployed."""

import socket
import subprocess


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


def start_server(build, *flags):
    """Starts `build`'s h5depotd on a free loopback port (and `flags`);
    returns the process and its TCP target once it is ready."""
    port = free_port_pair()
    server = subprocess.Popen(
        [f"{build}/server/h5depotd", f"--listen=127.0.0.1:{port}", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        if line.startswith("h5depotd holds"):
            break
    return server, f"127.0.0.1:{port}"


def stop(server):
    server.terminate()
    server.wait()
