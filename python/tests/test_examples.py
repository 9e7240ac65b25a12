"""examples/python, run as the README shows: the consumer waits, the
producer pushes, the consumer prints the packet; and each crossed with
the C example of the other side (ctest names them in PACKET_PRODUCER and
PACKET_CONSUMER), which prints the same packet."""

import os
import pathlib
import subprocess
import sys

import pytest

import h5depot

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"

EXPECTED_PACKET = """waiting for run-42/packet
opened run-42/packet
/ @run = 42
/ @source = packet_producer
/detector @name = calorimeter
/detector/adc [4 x 6]:
     0    1    2    3    4    5
   100  101  102  103  104  105
   200  201  202  203  204  205
   300  301  302  303  304  305
/detector/energy [1000]: first 0, last 249.75, sum 124875
/detector/energy @units = GeV
"""


def python_example(name):
    return [sys.executable, str(EXAMPLES / name)]


def c_example(variable):
    path = os.environ.get(variable)
    if not path:
        pytest.skip(f"{variable} does not name the C example")
    return [path]


@pytest.mark.parametrize("producer,consumer", [
    ("python", "python"), ("python", "c"), ("c", "python")])
def test_the_consumer_prints_what_the_producer_pushed(server, producer,
                                                      consumer):
    image_id = "run-42/packet"
    target = server.unix_target
    # A fresh id per pair: the consumer must wait for it.
    with h5depot.Client(target) as depot:
        try:
            depot.rm(image_id)
        except h5depot.NotFound:
            pass
    consumer_command = (python_example("packet_consumer.py")
                        if consumer == "python" else
                        c_example("PACKET_CONSUMER"))
    producer_command = (python_example("packet_producer.py")
                        if producer == "python" else
                        c_example("PACKET_PRODUCER"))
    waiting = subprocess.Popen(consumer_command + [target, image_id, "120"],
                               stdout=subprocess.PIPE, text=True)
    first_line = waiting.stdout.readline()
    assert first_line == f"waiting for {image_id}\n"
    pushed = subprocess.run(producer_command + [target, image_id],
                            capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    rest, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0
    assert first_line + rest == EXPECTED_PACKET


def test_the_consumer_gives_up_when_nothing_is_pushed(server):
    gave_up = subprocess.run(
        python_example("packet_consumer.py") +
        [server.unix_target, "run-42/never", "0.2"],
        capture_output=True, text=True)
    assert gave_up.returncode == 3
    assert "run-42/never" in gave_up.stderr
