"""The h5depot Python package against a real h5depotd (conftest.py): h5py
files of every standard driver and many kinds of data round-tripped, no
copy after arrival proven by memory, the error classes, processes, threads
and fork()."""

import io
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import textwrap
import threading
import uuid

import h5py
import numpy as np
import pytest

import h5depot
from conftest import Server


def make_file(path_or_name, driver, **kwargs):
    """An h5py file with datasets of many kinds: numbers of several types,
    strings, a compound type, a chunked compressed dataset, attributes,
    nested groups."""
    f = h5py.File(path_or_name, "w", driver=driver, **kwargs)
    rng = np.random.default_rng(7)
    f["ints"] = np.arange(1000, dtype=np.int64)
    f["floats"] = rng.standard_normal((50, 40))
    f["bytes"] = rng.integers(0, 256, 3000, dtype=np.uint8)
    f["strings"] = np.array([b"alpha", b"beta", b"gamma"])
    f["text"] = "unicode \u00e9t\u00e9"
    compound = np.zeros(5, dtype=[("id", np.int32), ("value", np.float64)])
    compound["id"] = np.arange(5)
    compound["value"] = np.linspace(0, 1, 5)
    f["compound"] = compound
    f.create_dataset("chunked", data=np.arange(20000, dtype=np.float32),
                     chunks=(1000,), compression="gzip")
    group = f.create_group("run/42")
    group.attrs["operator"] = "A"
    group.attrs["temperatures"] = np.array([1.5, 2.5])
    group["empty"] = np.zeros((0,), dtype=np.int16)
    return f


def check_file(f):
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(f["ints"][:], np.arange(1000, dtype=np.int64))
    np.testing.assert_array_equal(f["floats"][:], rng.standard_normal((50, 40)))
    np.testing.assert_array_equal(f["bytes"][:],
                                  rng.integers(0, 256, 3000, dtype=np.uint8))
    assert list(f["strings"][:]) == [b"alpha", b"beta", b"gamma"]
    assert f["text"][()].decode() == "unicode \u00e9t\u00e9"
    assert list(f["compound"]["id"]) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(f["compound"]["value"], np.linspace(0, 1, 5))
    np.testing.assert_array_equal(f["chunked"][:],
                                  np.arange(20000, dtype=np.float32))
    assert f["run/42"].attrs["operator"] == "A"
    np.testing.assert_array_equal(f["run/42"].attrs["temperatures"], [1.5, 2.5])
    assert f["run/42/empty"].shape == (0,)


@pytest.mark.parametrize("driver", ["core", "sec2", "stdio"])
def test_an_open_h5py_file_of_each_driver_round_trips(target, tmp_path, driver):
    kwargs = {"backing_store": False} if driver == "core" else {}
    name = "in-memory.h5" if driver == "core" else tmp_path / "on-disk.h5"
    with h5depot.Client(target) as depot:
        with make_file(name, driver, **kwargs) as f:
            info = depot.push(f"py/{driver}", f)
            # The file stays open and usable after the push.
            assert f["ints"][3] == 3
        assert info.image_id == f"py/{driver}"
        assert info.size > 0 and info.generation > 0 and info.expires is None
        with depot.open(f"py/{driver}") as f:
            check_file(f)
            assert f.image_info == info
            assert f.mode == "r"


def test_a_path_and_bytes_like_objects_push_the_same_image(target, tmp_path):
    path = tmp_path / "file.h5"
    make_file(path, None).close()
    data = path.read_bytes()
    with h5depot.Client(target) as depot:
        for source in (path, str(path), data, bytearray(data),
                       memoryview(data), np.frombuffer(data, np.uint8)):
            info = depot.push("py/sources", source)
            assert info.size == len(data)
            image = depot.fetch("py/sources")
            assert bytes(image) == data
        with depot.open("py/sources") as f:
            check_file(f)


def test_a_fetched_image_is_read_through_the_buffer_protocol(target):
    with h5depot.Client(target) as depot:
        with make_file("mem.h5", "core", backing_store=False) as f:
            depot.push("py/buffer", f)
        image = depot.fetch("py/buffer")
        view = memoryview(image)
        assert view.readonly and view.format == "B" and len(view) == len(image)
        assert bytes(view[:8]) == b"\x89HDF\r\n\x1a\n"
        array = np.frombuffer(image, np.uint8)
        assert not array.flags.writeable
        # The array is a view of the image's own memory, not a copy.
        assert np.shares_memory(array, np.frombuffer(memoryview(image), np.uint8))
        assert image.info.size == len(image)


def read_all_in_a_thread(fd):
    """Reads `fd` to its end in a thread; the bytes once joined."""
    chunks = []

    def drain():
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            chunks.append(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    return lambda: (thread.join(), b"".join(chunks))[1]


def test_fetch_to_writes_into_a_file_a_pipe_and_a_socket(target, tmp_path):
    image = tmp_path / "image.h5"
    with h5py.File(image, "w") as f:
        # Larger than the few MiB fetch_to passes through at a time.
        f["noise"] = np.random.default_rng(3).integers(
            0, 256, 9 << 20, dtype=np.uint8)
    data = image.read_bytes()
    with h5depot.Client(target) as depot:
        pushed = depot.push("py/fetch-to", image)
        # A buffered file: what it holds unflushed goes first, and it writes
        # on after the image.
        out = tmp_path / "out.bin"
        with open(out, "wb") as f:
            f.write(b"head")
            assert depot.fetch_to("py/fetch-to", f) == pushed
            f.write(b"tail")
        assert out.read_bytes() == b"head" + data + b"tail"
        # A pipe, by its descriptor, and a socket object.
        read_end, write_end = os.pipe()
        received = read_all_in_a_thread(read_end)
        assert depot.fetch_to("py/fetch-to", write_end).size == len(data)
        os.close(write_end)
        assert received() == data
        os.close(read_end)
        ours, theirs = socket.socketpair()
        received = read_all_in_a_thread(theirs.fileno())
        depot.fetch_to("py/fetch-to", ours)
        ours.shutdown(socket.SHUT_WR)
        assert received() == data
        ours.close()
        theirs.close()


def test_fetch_to_refuses_what_it_cannot_write_and_writes_nothing_then(
        target, tmp_path):
    with h5depot.Client(target) as depot:
        with make_file("mem.h5", "core", backing_store=False) as f:
            depot.push("py/fetch-to-errors", f)
        out = tmp_path / "out.bin"
        with open(out, "wb") as f:
            with pytest.raises(h5depot.NotFound):
                depot.fetch_to("py/never-pushed", f)
        assert out.read_bytes() == b""
        with open(out, "w") as text:
            with pytest.raises(h5depot.InvalidArgument) as text_mode:
                depot.fetch_to("py/fetch-to-errors", text)
        assert "binary" in str(text_mode.value)
        with pytest.raises(h5depot.InvalidArgument) as no_descriptor:
            depot.fetch_to("py/fetch-to-errors", io.BytesIO())
        assert "descriptor" in str(no_descriptor.value)
        with open(out, "rb") as read_only:
            with pytest.raises(h5depot.Unavailable) as unwritable:
                depot.fetch_to("py/fetch-to-errors", read_only)
        assert "cannot write" in str(unwritable.value)
        assert out.read_bytes() == b""


def test_a_round_trip_through_r_plus_pushes_the_next_generation(target):
    with h5depot.Client(target) as depot:
        with make_file("mem.h5", "core", backing_store=False) as f:
            first = depot.push("py/round-trip", f)
        with depot.open("py/round-trip", "r+") as f:
            assert f.image_info.generation == first.generation
            f["added"] = np.arange(5)
            second = depot.push("py/round-trip", f,
                                if_generation_match=f.image_info.generation)
        assert second.generation > first.generation
        with depot.open("py/round-trip") as f:
            check_file(f)
            np.testing.assert_array_equal(f["added"][:], np.arange(5))
        # A push from the generation fetched loses to the one since.
        with depot.open("py/round-trip", "r+") as stale:
            depot.push("py/round-trip", stale)
            with pytest.raises(h5depot.Conflict) as lost:
                depot.push("py/round-trip", stale,
                           if_generation_match=stale.image_info.generation)
        assert lost.value.code == "ABORTED"


def test_a_consumer_following_generations_gets_every_packet_once(target):
    """The producer pushes packet i + 1 once the consumer took packet i; the
    consumer, asking for a generation newer than the last it received, gets
    each packet once, in order."""
    packets = 10
    taken = threading.Semaphore(0)
    stream = f"py/stream/{uuid.uuid4().hex}"  # new for each transport

    def produce():
        with h5depot.Client(target) as producer:
            for i in range(packets):
                if i and not taken.acquire(timeout=60):
                    return  # the consumer failed: its error says why
                producer.push(stream, packet_bytes(i))

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        with h5depot.Client(target) as depot:
            last = 0
            for i in range(packets):
                with depot.open(stream, wait=60, newer_than=last) as f:
                    assert f.image_info.generation > last
                    last = f.image_info.generation
                    assert f["i"][()] == i
                taken.release()
    finally:
        producer.join()


def test_nothing_newer_fails_at_once_or_times_out(target):
    with h5depot.Client(target) as depot:
        first = depot.push("py/newer", packet_bytes(0))
        with pytest.raises(h5depot.FailedPrecondition):
            depot.fetch("py/newer", newer_than=first.generation)
        with pytest.raises(h5depot.Timeout):
            depot.wait("py/newer", 0.1, newer_than=first.generation)
        with pytest.raises(h5depot.InvalidArgument):
            depot.fetch("py/newer", newer_than=-1)
        second = depot.push("py/newer", packet_bytes(1))
        assert depot.stat("py/newer", newer_than=first.generation) == second
        assert depot.fetch("py/newer",
                           newer_than=first.generation).info == second


def test_a_watch_reports_each_change_under_its_prefix_in_order(target):
    prefix = f"py/watch/{uuid.uuid4().hex}/"  # new for each transport
    with h5depot.Client(target) as depot:
        held = depot.push(prefix + "a", packet_bytes(0))
        with depot.watch(prefix) as watch:
            assert watch.started_after >= held.generation
            with pytest.raises(h5depot.Timeout):
                watch.next(timeout=0.01)
            replaced = depot.push(prefix + "a", packet_bytes(1))
            depot.push("py/elsewhere", packet_bytes(2))
            depot.rm(prefix + "a")
            first, second = watch.next(timeout=60), next(watch)
        assert (first.kind, first.image_id) == ("replaced", prefix + "a")
        assert first.generation == first.sequence == replaced.generation
        assert first.replaced_generation == held.generation
        assert first.size == replaced.size
        assert (second.kind, second.generation) == ("deleted",
                                                    replaced.generation)
        assert second.sequence == replaced.generation + 2
        with pytest.raises(h5depot.Unavailable):
            watch.next(timeout=60)  # closed
        # From a held generation: what came after it, replayed.
        replay = depot.watch(prefix, after=held.generation)
        assert [replay.next(60).kind for _ in range(2)] == ["replaced",
                                                           "deleted"]
        replay.close()
        with pytest.raises(h5depot.InvalidArgument):
            depot.watch(prefix, after=-1)


def test_a_stopping_server_ends_its_watches(own_server):
    with h5depot.Client(own_server.target) as depot:
        watch = depot.watch("")
        own_server.stop()
        with pytest.raises(h5depot.Unavailable):
            watch.next(timeout=60)


def packet_bytes(i):
    """The image of a small HDF5 file holding the scalar ``i``."""
    with h5py.File(f"packet-{i}.h5", "w", driver="core",
                   backing_store=False) as f:
        f["i"] = i
        f.flush()
        return f.id.get_file_image()


def test_errors_are_the_classes_of_the_contract(server, tmp_path):
    with h5depot.Client(server.target) as depot:
        with pytest.raises(KeyError) as missing:
            depot.fetch("py/never-pushed")
        assert isinstance(missing.value, h5depot.NotFound)
        assert "py/never-pushed" in str(missing.value)
        with pytest.raises(h5depot.NotFound):
            depot.stat("py/never-pushed")
        with pytest.raises(h5depot.NotFound):
            depot.rm("py/never-pushed")
        with pytest.raises(ValueError) as bad_id:
            depot.fetch("../etc/passwd")
        assert isinstance(bad_id.value, h5depot.InvalidArgument)
        with pytest.raises(h5depot.InvalidArgument) as not_hdf5:
            depot.push("py/not-hdf5", b"plain bytes")
        assert "not an HDF5 file image" in str(not_hdf5.value)
        with pytest.raises(h5depot.InvalidArgument):
            depot.push("py/not-bytes", 12345)
        with pytest.raises(h5depot.NotFound):
            depot.push("py/no-file", tmp_path / "absent.h5")
        with make_file("mem.h5", "core", backing_store=False) as f:
            depot.push("py/exists", f)
            with pytest.raises(h5depot.Conflict) as exists:
                depot.push("py/exists", f, if_generation_match=0)
        assert exists.value.code == "ALREADY_EXISTS"
        with pytest.raises(TimeoutError) as waited:
            depot.wait("py/not-yet", 0.2)
        assert isinstance(waited.value, h5depot.Timeout)
        with pytest.raises(h5depot.InvalidArgument):
            depot.open("py/exists", "w")
    with pytest.raises(h5depot.FailedPrecondition):
        depot.stat("py/exists")  # closed


def test_a_killed_server_is_unavailable_not_a_hang(own_server):
    depot = h5depot.Client(own_server.target, call_timeout=10)
    with make_file("mem.h5", "core", backing_store=False) as f:
        depot.push("py/before", f)
    own_server.kill()
    with pytest.raises(ConnectionError) as gone:
        depot.fetch("py/before")
    assert isinstance(gone.value, h5depot.Unavailable)
    with pytest.raises(h5depot.Unavailable):
        h5depot.Client(own_server.target, connect_timeout=1)


def test_ls_iterates_over_pages_in_id_order(server):
    with h5depot.Client(server.target) as depot:
        with make_file("mem.h5", "core", backing_store=False) as f:
            for i in range(7):
                depot.push(f"py/ls/{i:02d}", f)
        ids = [info.image_id for info in depot.ls("py/ls/", page_size=3)]
        assert ids == [f"py/ls/{i:02d}" for i in range(7)]
        depot.rm("py/ls/03")
        assert "py/ls/03" not in [i.image_id for i in depot.ls("py/ls/")]


def test_ttl_sets_the_expiry(server):
    with h5depot.Client(server.target) as depot:
        with make_file("mem.h5", "core", backing_store=False) as f:
            info = depot.push("py/ttl", f, ttl=3600)
        assert info.expires is not None
        assert 3500 < (info.expires - info.created).total_seconds() <= 3600


def test_the_server_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("H5DEPOT_SERVER", server.target)
    with h5depot.Client() as depot:
        assert depot.target == server.target


# Another process, which waits for an image the test pushes after it.
RECEIVER = textwrap.dedent("""
    import sys, h5depot
    with h5depot.Client(sys.argv[1]) as depot:
        print("waiting", flush=True)
        with depot.open(sys.argv[2], wait=60) as f:
            print(int(f["ints"][:].sum()), flush=True)
""")


def test_process_a_hands_a_file_to_waiting_process_b(server):
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, server.unix_target, "py/a-to-b"],
        stdout=subprocess.PIPE, text=True, env=os.environ)
    assert receiver.stdout.readline() == "waiting\n"
    with h5depot.Client(server.target) as depot:
        with make_file("mem.h5", "core", backing_store=False) as f:
            depot.push("py/a-to-b", f)
    out, _ = receiver.communicate(timeout=120)
    assert receiver.returncode == 0
    assert out == f"{sum(range(1000))}\n"


# Measures in a process of its own how much fetching and opening an image
# raises its peak resident memory: VmHWM, the high-water mark of this
# process's own memory since its exec (ru_maxrss would count what the
# parent had resident when it forked).
HIGH_WATER = textwrap.dedent("""
    import sys, h5depot

    def high_water():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
""")

PEAK = HIGH_WATER + textwrap.dedent("""
    with h5depot.Client(sys.argv[1]) as depot:
        depot.stat(sys.argv[2])
        before = high_water()
        with depot.open(sys.argv[2]) as f:
            assert f["big"][-1] == 255
            after = high_water()
    print(after - before)
""")


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_opening_a_fetched_image_copies_nothing(server, tmp_path, transport):
    size = 512 << 20
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("big", (size,), dtype=np.uint8)
        piece = np.full(16 << 20, 255, dtype=np.uint8)
        for at in range(0, size, len(piece)):
            dataset[at:at + len(piece)] = piece
    with h5depot.Client(server.target) as depot:
        info = depot.push("py/big", path)
    path.unlink()
    target = server.target if transport == "tcp" else server.unix_target
    out = subprocess.run([sys.executable, "-c", PEAK, target, "py/big"],
                         check=True, capture_output=True, text=True,
                         env=os.environ).stdout
    grew = int(out)
    # One copy of the image at most: the bytes received (over TCP), or
    # none (over the Unix socket, a mapping of the server's memory, of
    # which only the pages read become resident).
    assert grew <= 1.1 * info.size, (
        f"opening a {info.size}-byte image raised peak RSS by {grew} bytes")
    if transport == "tcp":
        assert grew >= 0.9 * info.size, "the measurement missed the fetch"
    with h5depot.Client(server.target) as depot:
        depot.rm("py/big")


# fetch_to's peak: the same measure around a fetch into a file.
FETCH_TO_PEAK = HIGH_WATER + textwrap.dedent("""
    with h5depot.Client(sys.argv[1]) as depot:
        depot.stat(sys.argv[2])
        before = high_water()
        with open(sys.argv[3], "wb") as out:
            depot.fetch_to(sys.argv[2], out)
        print(high_water() - before)
""")


def test_fetch_to_holds_a_few_mib_whatever_the_image(server, tmp_path):
    size = 256 << 20
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("big", (size,), dtype=np.uint8)
        dataset[-1] = 255
    with h5depot.Client(server.target) as depot:
        info = depot.push("py/big-to-file", path)
    out = tmp_path / "out.h5"
    grew = int(subprocess.run(
        [sys.executable, "-c", FETCH_TO_PEAK, server.target, "py/big-to-file",
         str(out)], check=True, capture_output=True, text=True,
        env=os.environ).stdout)
    assert out.stat().st_size == info.size
    assert out.read_bytes() == path.read_bytes()
    assert grew < 32 << 20, (
        f"writing a {info.size}-byte image raised peak RSS by {grew} bytes")
    with h5depot.Client(server.target) as depot:
        depot.rm("py/big-to-file")


def test_threads_push_and_fetch_at_once(target):
    errors = []

    def work(depot, n):
        try:
            data = make_image_bytes(n)
            for round in range(5):
                depot.push(f"py/thread/{n}", data)
                if bytes(depot.fetch(f"py/thread/{n}")) != data:
                    errors.append(f"thread {n}: other bytes")
        except Exception as error:  # reported below
            errors.append(f"thread {n}: {error!r}")

    with h5depot.Client(target) as depot:
        threads = [threading.Thread(target=work, args=(depot, n))
                   for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def make_image_bytes(seed):
    with h5py.File(f"seed{seed}.h5", "w", driver="core",
                   backing_store=False) as f:
        f["data"] = np.full(100000 + seed, seed, dtype=np.uint8)
        f.flush()
        return f.id.get_file_image()


def test_a_forked_child_uses_the_client_it_inherited(server):
    with h5depot.Client(server.unix_target) as depot:
        depot.push("py/fork/parent", make_image_bytes(1))
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                depot.push("py/fork/child", make_image_bytes(2))
                if bytes(depot.fetch("py/fork/parent")) == make_image_bytes(1):
                    status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert bytes(depot.fetch("py/fork/child")) == make_image_bytes(2)
        # The parent's client kept working.
        assert bytes(depot.fetch("py/fork/parent")) == make_image_bytes(1)


def fetch_size_in_worker(target_and_id):
    target, image_id = target_and_id
    with h5depot.Client(target) as depot:
        with depot.open(image_id) as f:
            return int(f["data"][0]), len(depot.fetch(image_id))


def test_multiprocessing_workers_open_images(server):
    with h5depot.Client(server.target) as depot:
        for n in range(4):
            depot.push(f"py/pool/{n}", make_image_bytes(n))
        context = multiprocessing.get_context("fork")
        with context.Pool(2) as pool:
            results = pool.map(fetch_size_in_worker,
                               [(server.target, f"py/pool/{n}") for n in range(4)])
        assert [value for value, _ in results] == [0, 1, 2, 3]


def test_the_remote_driver_creates_reads_and_appends(target):
    with h5depot.File("py/remote/new", "w", server=target) as f:
        f["x"] = np.arange(100)
        f.attrs["made_by"] = "h5depot.File"
    with h5depot.Client(target) as depot:
        first = depot.stat("py/remote/new")
        with depot.open("py/remote/new") as f:
            np.testing.assert_array_equal(f["x"][:], np.arange(100))
    with h5depot.File("py/remote/new", "a", server=target) as f:
        f["y"] = np.ones(3)
    with h5depot.File("py/remote/new", "r", server=target) as f:
        assert sorted(f.keys()) == ["x", "y"]
        assert f.attrs["made_by"] == "h5depot.File"
    with h5depot.Client(target) as depot:
        assert depot.stat("py/remote/new").generation > first.generation
    with pytest.raises(h5depot.Conflict):
        h5depot.File("py/remote/new", "x", server=target)
    with pytest.raises(KeyError):
        h5depot.File("py/remote/absent", "r", server=target)
    with pytest.raises(ValueError):
        h5depot.File("py/remote/bad//id", "r", server=target)


def test_a_remote_commit_that_lost_the_race_is_a_conflict(server):
    with h5depot.File("py/remote/race", "w", server=server.target) as f:
        f["x"] = np.arange(10)
    f = h5depot.File("py/remote/race", "r+", server=server.target)
    with h5depot.Client(server.target) as depot:
        depot.push("py/remote/race", make_image_bytes(3))
    f["mine"] = 1
    with pytest.raises(h5depot.Conflict) as lost:
        f.flush()
    assert "py/remote/race" in str(lost.value)
    f.close()  # the failed commit is reported on stderr, not raised
    with h5depot.Client(server.target) as depot:
        assert bytes(depot.fetch("py/remote/race")) == make_image_bytes(3)


def test_a_cluster_target_places_two_copies_and_survives_a_killed_server(
        tmp_path):
    servers = []
    try:
        for i in range(3):
            (tmp_path / f"s{i}").mkdir()
            servers.append(Server(tmp_path / f"s{i}"))
        target = "cluster:" + ",".join(s.target for s in servers) + "?replicas=2"
        with h5depot.Client(target) as depot:
            for i in range(12):
                with make_file(f"c{i}.h5", "core", backing_store=False) as f:
                    depot.push(f"py/cluster/{i}", f)
            # Each image is on exactly two servers.
            held = 0
            for s in servers:
                with h5depot.Client(s.target) as direct:
                    held += len(list(direct.ls("py/cluster/")))
            assert held == 24
            servers[0].kill()
            for i in range(12):
                with depot.open(f"py/cluster/{i}") as f:
                    check_file(f)
            assert [info.image_id for info in depot.ls("py/cluster/")] == \
                sorted(f"py/cluster/{i}" for i in range(12))
    finally:
        for s in servers:
            s.stop()


def test_a_watch_of_a_cluster_reports_each_change_once(tmp_path):
    servers = []
    try:
        for i in range(3):
            (tmp_path / f"s{i}").mkdir()
            servers.append(Server(tmp_path / f"s{i}"))
        target = "cluster:" + ",".join(s.target for s in servers) + "?replicas=2"
        with h5depot.Client(target) as depot:
            with depot.watch("py/cw/") as watch:
                pushed = [depot.push(f"py/cw/{i}", packet_bytes(i))
                          for i in range(5)]
                depot.rm("py/cw/0")
                events = [watch.next(timeout=60) for _ in range(6)]
                with pytest.raises(h5depot.Timeout):
                    watch.next(timeout=1)  # no replica's second report
            assert sorted((e.kind, e.image_id, e.generation) for e in events) \
                == sorted([("published", p.image_id, p.generation)
                           for p in pushed] +
                          [("deleted", "py/cw/0", pushed[0].generation)])
            with pytest.raises(ValueError):
                depot.watch("py/cw/", after=1)
    finally:
        for s in servers:
            s.stop()
