"""Streams from Python (docs/STREAMS.md), against a real h5depotd: h5py
files appended as steps reach two reader groups, one of them shared by
two processes, each step once per group and in order; the end is
``Finished``; a step not acknowledged by a reader goes to another."""

import multiprocessing
import uuid

import h5py
import numpy as np
import pytest

import h5depot


def step_file(i):
    """An in-memory h5py file whose dataset "i" holds i."""
    f = h5py.File(f"step-{i}-{uuid.uuid4().hex}.h5", "w", driver="core",
                  backing_store=False)
    f["i"] = i
    f["data"] = np.full(1000, i, dtype=np.int32)
    return f


def take_all(target, stream, group, out):
    """A worker process: takes steps of `group` until the end."""
    with h5depot.Client(target) as depot:
        for step in depot.steps(stream, group, wait=60):
            with step.open() as f:
                out.put((step.step, int(f["i"][()])))
    out.put(None)


def test_every_group_gets_every_step_once_in_order(target):
    stream = f"py/frames/{uuid.uuid4().hex}"
    steps = 40
    with h5depot.Client(target) as depot:
        info = depot.create_stream(stream, max_steps=4)
        assert info.max_steps == 4 and info.when_full == "block"
        # The groups exist from their first next(): from then on every
        # step waits for them (the workers take a while to start).
        for group in ("pool", "archive"):
            with pytest.raises(h5depot.Timeout):
                depot.next(stream, group)
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        workers = [context.Process(target=take_all,
                                   args=(target, stream, "pool", out))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        archived = []
        for i in range(steps):
            with step_file(i) as f:
                number, image_info = depot.append(stream, f)
            assert number == i
            assert image_info.image_id == f"{stream}@{i}"
            if i % 2 == 1:  # the "archive" group reads along
                for _ in range(2):
                    step = depot.next(stream, "archive", wait=60)
                    assert np.all(np.frombuffer(step.image, np.uint8)[:8]
                                  == np.frombuffer(b"\x89HDF\r\n\x1a\n",
                                                   np.uint8))
                    archived.append(step.step)
                    step.ack()
        depot.finish_stream(stream)
        with pytest.raises(h5depot.Finished):
            depot.next(stream, "archive", wait=1)
        pooled = []
        ended = 0
        while ended < len(workers):
            item = out.get(timeout=120)
            if item is None:
                ended += 1
            else:
                pooled.append(item)
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert archived == list(range(steps))
        assert sorted(number for number, _ in pooled) == list(range(steps))
        assert all(number == value for number, value in pooled)
        assert depot.stat_stream(stream).kept_steps == 0


def test_a_step_not_acknowledged_goes_to_another_member(target):
    stream = f"py/jobs/{uuid.uuid4().hex}"
    with h5depot.Client(target) as depot, h5depot.Client(target) as other:
        depot.append(stream, bytes(step_file(0).id.get_file_image()))
        held = depot.next(stream, "pool", lease=0.5, wait=10)
        assert held.step == 0
        again = other.next(stream, "pool", wait=30)  # after the lease
        assert again.step == 0
        again.ack()
        with pytest.raises(h5depot.FailedPrecondition):
            held.ack()  # its lease ran out: the step went to `other`


def test_a_full_refusing_stream_and_a_finished_one_refuse(target):
    stream = f"py/full/{uuid.uuid4().hex}"
    with h5depot.Client(target) as depot:
        depot.create_stream(stream, max_steps=1, when_full="refuse")
        image = bytes(step_file(1).id.get_file_image())
        with pytest.raises(h5depot.InvalidArgument):
            depot.append(stream, b"not an HDF5 file" * 100)
        depot.append(stream, image)
        with pytest.raises(h5depot.ResourceExhausted):
            depot.append(stream, image)
        depot.finish_stream(stream)
        with pytest.raises(h5depot.FailedPrecondition):
            depot.append(stream, image)
        with pytest.raises(h5depot.Conflict):
            depot.create_stream(stream, max_steps=2)


def test_a_deleted_stream_and_group_are_gone(target):
    stream = f"py/deleted/{uuid.uuid4().hex}"
    with h5depot.Client(target) as depot:
        image = bytes(step_file(2).id.get_file_image())
        depot.create_stream(stream)
        for group in ("g", "h"):
            with pytest.raises(h5depot.Timeout):
                depot.next(stream, group)  # makes the group
        step, _ = depot.append(stream, image)
        assert step == 0
        depot.next(stream, "h").ack()
        assert depot.stat_stream(stream).kept_steps == 1  # "g" needs it
        depot.delete_stream(stream, group="g")
        assert depot.stat_stream(stream).kept_steps == 0
        with pytest.raises(h5depot.NotFound):
            depot.delete_stream(stream, group="g")
        depot.delete_stream(stream)
        with pytest.raises(h5depot.NotFound):
            depot.stat_stream(stream)
        with pytest.raises(h5depot.NotFound):
            depot.delete_stream(stream)


def test_steps_appended_in_step_buffers_arrive_intact(target):
    """Steps copied into the client's step buffers (on the Unix socket
    handed over and reused; over TCP sent as bytes) arrive whole and in
    order, more of them than a client keeps buffers."""
    stream = f"py/buffered/{uuid.uuid4().hex}"
    rng = np.random.default_rng(7)
    images = []
    for i in range(3):
        with step_file(i) as f:
            f["payload"] = rng.integers(0, 255, 300_000 + 50_000 * i,
                                        dtype=np.uint8)
            f.flush()
            images.append(bytes(f.id.get_file_image()))
    with h5depot.Client(target) as depot, h5depot.Client(target) as reader:
        depot.create_stream(stream, max_steps=4)
        with pytest.raises(h5depot.Timeout):
            reader.next(stream, "g")
        taken = []
        for i in range(24):
            number, _ = depot.append(stream, images[i % 3], step_buffer=True)
            assert number == i
            step = reader.next(stream, "g", wait=60)
            taken.append((step.step, bytes(step.image) == images[i % 3]))
            step.ack()
        with step_file(99) as f:
            assert depot.append(stream, f, step_buffer=True)[0] == 24
        with pytest.raises(h5depot.InvalidArgument):
            depot.append(stream, "some/path.h5", step_buffer=True)
        depot.finish_stream(stream)
        assert taken == [(i, True) for i in range(24)]
        assert reader.next(stream, "g", wait=60).step == 24
