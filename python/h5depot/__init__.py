"""HDF5 file images held in RAM by h5depotd, from Python.

    import h5depot, h5py, numpy

    with h5depot.Client() as depot:              # $H5DEPOT_SERVER, else 127.0.0.1:7878
        with h5py.File("run42.h5", "w", driver="core", backing_store=False) as f:
            f["x"] = numpy.arange(10)
            depot.push("run-42/packet", f)       # the open file's image
        with depot.open("run-42/packet") as f:   # an h5py.File on the fetched bytes
            print(f["x"][:])

Every call that moves bytes or waits releases the GIL, so threads overlap
their transfers. Failures raise the classes of ``h5depot.errors``, each
also the standard exception it reads as (``NotFound`` is a ``KeyError``,
``Timeout`` a ``TimeoutError``, ``Unavailable`` a ``ConnectionError``,
``InvalidArgument`` a ``ValueError``).
"""

import dataclasses
import datetime
import io
import os

from . import _native
from .errors import (
    Conflict,
    DataLoss,
    Error,
    FailedPrecondition,
    Finished,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Timeout,
    Unavailable,
)

__all__ = [
    "Client", "File", "Image", "ImageEvent", "ImageInfo", "Watch", "Error", "Conflict", "DataLoss",
    "StreamInfo", "StreamStep", "Finished",
    "FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied",
    "ResourceExhausted", "Timeout", "Unavailable",
]

DEFAULT_SERVER = "127.0.0.1:7878"

Image = _native.Image


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the server knows about one generation of an image."""

    image_id: str
    size: int
    generation: int
    checksum: int  # XXH3-64 of the whole image
    created: datetime.datetime
    expires: "datetime.datetime | None"  # None: never

    @classmethod
    def _from_native(cls, fields):
        def when(seconds):
            if seconds is None:
                return None
            return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        return cls(fields["image_id"], fields["size"], fields["generation"],
                   fields["checksum"], when(fields["created"]),
                   when(fields["expires"]))


@dataclasses.dataclass(frozen=True)
class ImageEvent:
    """One change a watch reports (Client.watch).

    ``kind`` is "published", "replaced", "deleted", "expired", "evicted",
    or "lost":
    not a change, but word that the changes ``first_lost_sequence`` through
    ``sequence`` were not delivered (the server no longer kept them); look
    again with ls or stat and go on. Every change takes the next number of
    the server's one counter, its ``sequence``; a publish's sequence is the
    generation it made. ``generation`` and ``size`` are the new
    generation's (published, replaced) or the removed one's (deleted,
    expired, evicted); ``replaced_generation`` the one a replace replaced.
    """

    kind: str
    sequence: int
    image_id: str
    generation: int
    size: int
    replaced_generation: int
    time: "datetime.datetime | None"
    first_lost_sequence: int

    @classmethod
    def _from_native(cls, fields):
        seconds = fields["time"]
        when = None if seconds is None else datetime.datetime.fromtimestamp(
            seconds, datetime.timezone.utc)
        return cls(fields["kind"], fields["sequence"], fields["image_id"],
                   fields["generation"], fields["size"],
                   fields["replaced_generation"], when,
                   fields["first_lost_sequence"])


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """A stream's policy, queue and reader groups (docs/STREAMS.md).
    ``groups`` maps each group's name to a dict of ``next_step``,
    ``acked_below``, ``leased_steps`` and ``waiting_steps``."""

    stream: str
    max_steps: int
    max_bytes: int
    when_full: str  # "block", "discard-oldest" or "refuse"
    reserve_steps: int
    keep_first_step: bool
    finished: bool
    appended_steps: int
    queued_steps: int
    queued_bytes: int
    kept_steps: int
    kept_bytes: int
    groups: dict

    @classmethod
    def _from_native(cls, fields):
        return cls(**fields)


class StreamStep:
    """One step of a stream, leased to this reader (Client.next) until
    ``ack()``: ``step`` is its number, ``image`` the Image (read through
    the buffer protocol, or ``open()`` as an h5py.File), ``info`` its
    ImageInfo, ``lost`` the (first, last) ranges of steps the group lost
    to discard-oldest since it was last told."""

    def __init__(self, client, stream, group, native):
        self.step, self.image, self.lost, self._consumer = native
        self.lost = [tuple(r) for r in self.lost]
        self.info = _image_info(self.image)
        self._client = client
        self._stream = stream
        self._group = group

    def open(self, mode="r"):
        """The step as an ``h5py.File`` in the memory it arrived in (the
        buffer goes to HDF5: ``image`` is empty afterwards)."""
        import h5py
        if mode not in ("r", "r+"):
            raise InvalidArgument(
                f'open: mode must be "r" or "r+", not {mode!r}',
                "INVALID_ARGUMENT")
        fields = self.image._native_info
        file = _image_file_class()(h5py.h5f.FileID(
            _native.open_image(self.image, mode == "r+")))
        file._image_fields = fields
        return file

    def ack(self):
        """Done with the step: the group will not get it again."""
        self._client.ack(self._stream, self._group, self.step, self._consumer)


class Watch:
    """The changes under a prefix, in order (Client.watch). Iterating
    blocks for each next change; ``next(timeout)`` gives up with
    ``Timeout`` and the watch goes on. It ends with ``Unavailable`` when
    the server stops, or after ``cancel()`` or ``close()``."""

    def __init__(self, native):
        self._native = native

    @property
    def started_after(self):
        """The changes reported have sequences after this one."""
        return self._native.started_after

    def next(self, timeout=None):
        """The next ImageEvent, waiting up to ``timeout`` (seconds or a
        timedelta; None: for ever)."""
        return ImageEvent._from_native(
            self._native.next(_seconds(timeout, "timeout")))

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def cancel(self):
        """Ends the watch; may be called from another thread."""
        self._native.cancel()

    close = cancel

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.cancel()


def _image_info(image):
    return ImageInfo._from_native(image._native_info)


Image.info = property(_image_info, doc="The ImageInfo of the generation fetched.")


def _seconds(duration, what):
    """A duration given as seconds or a timedelta, as seconds (None stays)."""
    if duration is None:
        return None
    if isinstance(duration, datetime.timedelta):
        duration = duration.total_seconds()
    if duration < 0:
        raise InvalidArgument(f"{what} must not be negative", "INVALID_ARGUMENT")
    return float(duration)


def _generation(generation, what):
    """A generation number given as an int (None: 0, none given)."""
    if generation is None:
        return 0
    if isinstance(generation, bool) or not isinstance(generation, int) \
            or not 0 <= generation < 1 << 64:
        raise InvalidArgument(f"{what} must be a generation number (an int "
                              f"from 0 to 2**64 - 1), not {generation!r}",
                              "INVALID_ARGUMENT")
    return generation


def _is_h5py_file(source):
    h5py = _h5py_if_loaded()
    return h5py is not None and isinstance(source, h5py.File)


def _seekable(stream):
    seekable = getattr(stream, "seekable", None)
    return seekable is not None and seekable()


def _h5py_if_loaded():
    import sys
    return sys.modules.get("h5py")


def File(image_id, mode="r", *, server=None, token="", tls=False,
         tls_ca_file="", tls_cert_file="", tls_key_file="",
         connect_timeout=10.0, call_timeout=30.0, page_size=64 << 10,
         cache_size=64 << 20):
    """An ``h5py.File`` on image ``image_id`` through the remote driver
    (docs/REMOTE_DRIVER.md): reads fetch the pages they need, and writes
    stay in this process until the file is flushed or closed, which commits
    the whole image as a new generation, atomically, and only if nobody
    pushed the image since it was opened (or last committed).

    ``mode`` is h5py's: "r", "r+", "w" (create or replace), "w-" or "x"
    (create, failing if it exists), "a" (open or create). ``server`` as
    Client's ``target``; the other options as Client's, plus the driver's
    page and cache sizes in bytes. Call ``f.flush()`` before closing to
    learn whether the commit succeeded: it raises if it lost the race,
    while a commit that fails inside ``close()`` can only be reported on
    stderr (HDF5 1.10 cannot fail a close).
    """
    import h5py
    if mode not in ("r", "r+", "w", "w-", "x", "a"):
        raise InvalidArgument(f"File: unknown mode {mode!r}", "INVALID_ARGUMENT")
    settings = _native.RemoteSettings()
    settings.target = server or os.environ.get("H5DEPOT_SERVER") or DEFAULT_SERVER
    settings.token = token
    settings.use_tls = bool(tls)
    settings.tls_ca_file = os.fspath(tls_ca_file)
    settings.tls_cert_file = os.fspath(tls_cert_file)
    settings.tls_key_file = os.fspath(tls_key_file)
    settings.connect_timeout = _seconds(connect_timeout, "connect_timeout")
    settings.call_timeout = _seconds(call_timeout, "call_timeout")
    settings.page_size = page_size
    settings.cache_size = cache_size
    file_id = h5py.h5f.FileID(_native.open_remote(image_id, mode, settings))
    return _remote_file_class()(file_id)


_IMAGE_FILE_CLASS = None


def _image_file_class():
    """h5py.File, with the ImageInfo of the generation it was fetched at
    (made when first asked for: a small open need not pay for it)."""
    global _IMAGE_FILE_CLASS
    if _IMAGE_FILE_CLASS is None:
        import h5py

        class ImageFile(h5py.File):
            """An h5py.File on a fetched image (Client.open)."""

            @property
            def image_info(self):
                """The ImageInfo of the generation this file was opened at."""
                return ImageInfo._from_native(self._image_fields)

        _IMAGE_FILE_CLASS = ImageFile
    return _IMAGE_FILE_CLASS


_REMOTE_FILE_CLASS = None


def _remote_file_class():
    """h5py.File, whose flush raises the driver's failure as the class of
    h5depot.errors it names (a lost commit race: Conflict)."""
    global _REMOTE_FILE_CLASS
    if _REMOTE_FILE_CLASS is None:
        import h5py

        class RemoteFile(h5py.File):
            """An h5py.File through the remote driver (h5depot.File)."""

            def flush(self):
                try:
                    super().flush()
                except (RuntimeError, OSError) as error:
                    from .errors import _from_driver_message
                    raise (_from_driver_message(str(error)) or error) from error

        _REMOTE_FILE_CLASS = RemoteFile
    return _REMOTE_FILE_CLASS


class Client:
    """A connection to one h5depotd.

    ``target`` is ``HOST:PORT`` or ``unix:/PATH``; by default the
    ``H5DEPOT_SERVER`` environment variable, else ``127.0.0.1:7878``. The
    options are the C++ client's (``h5depot/client.h``): timeouts in
    seconds (``call_timeout=None``: no limit), the data lane and shared
    memory (both on), a bearer ``token`` (default: ``H5DEPOT_TOKEN`` or the
    file ``H5DEPOT_TOKEN_FILE`` names) and TLS (``tls=True`` or any of the
    files; default: the ``H5DEPOT_TLS*`` variables). Raises ``Unavailable``
    if the server cannot be reached within ``connect_timeout``.

    Thread-safe; usable as a context manager, which closes it. A child of
    ``os.fork()`` may use the client it inherited: it makes connections of
    its own.
    """

    def __init__(self, target=None, *, connect_timeout=10.0, call_timeout=30.0,
                 use_data_lane=True, share_memory=True, token="", tls=False,
                 tls_ca_file="", tls_cert_file="", tls_key_file=""):
        if target is None:
            target = os.environ.get("H5DEPOT_SERVER") or DEFAULT_SERVER
        options = _native.ClientOptions()
        options.connect_timeout = _seconds(connect_timeout, "connect_timeout")
        options.call_timeout = _seconds(call_timeout, "call_timeout")
        options.use_data_lane = bool(use_data_lane)
        options.share_memory = bool(share_memory)
        options.token = token
        options.use_tls = bool(tls)
        options.tls_ca_file = os.fspath(tls_ca_file)
        options.tls_cert_file = os.fspath(tls_cert_file)
        options.tls_key_file = os.fspath(tls_key_file)
        self._native = _native.Client(target, options)

    @property
    def target(self):
        """The server this client talks to."""
        return self._client().target

    def close(self):
        """Closes the connections. Images fetched or opened stay usable."""
        self._native = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def push(self, image_id, source, *, if_generation_match=None, ttl=None):
        """Stores ``source`` as a new generation of ``image_id``; returns
        its ImageInfo.

        ``source`` is an open ``h5py.File`` (of the core, sec2 or stdio
        driver: its image, the file flushed and left open), a path to an
        HDF5 file (sent as it is read), or any bytes-like object (sent from
        its own memory). ``if_generation_match``: push only if that
        generation is current (0: only if the image does not exist yet),
        else ``Conflict``. ``ttl``: seconds or a timedelta after which the
        server deletes the image.
        """
        ttl = _seconds(ttl, "ttl")
        client = self._client()
        if _is_h5py_file(source):
            return ImageInfo._from_native(client.push_hdf5_file(
                image_id, source.id.id, if_generation_match, ttl))
        if isinstance(source, (str, os.PathLike)):
            return ImageInfo._from_native(client.push_path(
                image_id, os.fspath(source), if_generation_match, ttl))
        try:
            view = memoryview(source)
        except TypeError:
            raise InvalidArgument(
                f"push: cannot push a {type(source).__name__}: give an "
                "h5py.File, a path or a bytes-like object",
                "INVALID_ARGUMENT") from None
        return ImageInfo._from_native(client.push_bytes(
            image_id, view, if_generation_match, ttl))

    def fetch(self, image_id, *, wait=None, newer_than=None):
        """The current generation of ``image_id`` as an Image (buffer
        protocol, no copy). ``wait``: seconds or a timedelta to wait for
        the image to be pushed if it does not exist yet (else ``NotFound``
        at once; ``Timeout`` when the wait runs out).

        ``newer_than``: a generation; only a newer one will do: the
        current one if it is newer, else the first pushed within ``wait``
        (``Timeout`` if none is; without a wait, ``FailedPrecondition`` at
        once). A consumer passing the generation it last received misses
        no push; if several came meanwhile it gets the newest::

            image = client.fetch("packets/latest", wait=3600)
            while True:
                handle(image)
                image = client.fetch("packets/latest", wait=3600,
                                     newer_than=image.info.generation)
        """
        return self._client().fetch(image_id, _seconds(wait, "wait"),
                                    _generation(newer_than, "newer_than"))

    def fetch_to(self, image_id, destination, *, wait=None, newer_than=None):
        """Writes the current generation of ``image_id`` to ``destination``
        as its bytes arrive, through a buffer of a few MiB whatever the
        image's size; returns its ImageInfo. ``wait`` and ``newer_than`` as
        for fetch.

        ``destination`` is a binary file object that has a descriptor (a
        file opened with "wb" or "ab", a pipe's or a socket's file, a
        ``socket.socket``) or a descriptor (an int); the bytes go from where
        it stands, and it is left open. Into a pipe the bytes move without
        a copy where the kernel allows. The bytes are verified as they
        pass, so a damaged image is known only after its last byte was
        written: ``DataLoss`` then, and a failed write ``Unavailable``;
        discard what was written (as with a download)::

            with open("run.h5", "wb") as f:
                client.fetch_to("run-42/packet", f)
        """
        if isinstance(destination, int) and not isinstance(destination, bool):
            fd = destination
        else:
            if isinstance(destination, io.TextIOBase):
                raise InvalidArgument(
                    "fetch_to: the destination is a text file; open it in "
                    'binary mode ("wb")', "INVALID_ARGUMENT")
            try:
                fd = destination.fileno()
            except (AttributeError, io.UnsupportedOperation):
                raise InvalidArgument(
                    "fetch_to: the destination needs a descriptor (a file, "
                    f"pipe or socket, or an int), not a {type(destination).__name__}",
                    "INVALID_ARGUMENT") from None
            flush = getattr(destination, "flush", None)
            if flush is not None:
                flush()  # what it buffered goes first
        try:
            return ImageInfo._from_native(self._client().fetch_to_fd(
                image_id, fd, _seconds(wait, "wait"),
                _generation(newer_than, "newer_than")))
        finally:
            if not isinstance(destination, int) and _seekable(destination):
                # A buffered file learns where its descriptor now stands,
                # also after a failure that wrote part of the image.
                destination.seek(0, os.SEEK_CUR)

    def open(self, image_id, mode="r", *, wait=None, newer_than=None):
        """Fetches ``image_id`` and opens it as an ``h5py.File`` in the
        memory it arrived in: HDF5 takes the buffer (nothing is copied) and
        frees it when the file closes.

        ``mode`` "r" opens it read-only; "r+" read-write, in memory only:
        push the file back to store the changes, with
        ``if_generation_match=f.image_info.generation`` to lose nothing to
        a concurrent writer. The returned file's ``image_info`` is the
        ImageInfo of the generation fetched.
        """
        if mode not in ("r", "r+"):
            raise InvalidArgument(
                f'open: mode must be "r" or "r+", not {mode!r}',
                "INVALID_ARGUMENT")
        import h5py
        image = self.fetch(image_id, wait=wait, newer_than=newer_than)
        fields = image._native_info
        file = _image_file_class()(
            h5py.h5f.FileID(_native.open_image(image, mode == "r+")))
        file._image_fields = fields
        return file

    def stat(self, image_id, *, wait=None, newer_than=None):
        """The ImageInfo of the current generation of ``image_id``;
        ``wait`` and ``newer_than`` as for fetch."""
        return ImageInfo._from_native(
            self._client().stat(image_id, _seconds(wait, "wait"),
                                _generation(newer_than, "newer_than")))

    def wait(self, image_id, timeout, *, newer_than=None):
        """Waits up to ``timeout`` (seconds or a timedelta) for
        ``image_id`` to exist (with ``newer_than``, for a generation newer
        than that); returns its ImageInfo, or raises ``Timeout``."""
        return self.stat(image_id, wait=timeout, newer_than=newer_than)

    def ls(self, prefix="", *, page_size=0):
        """Iterates over the ImageInfo of every image whose id starts with
        ``prefix``, in id order, a page of the server's at a time."""
        client = self._client()
        token = ""
        while True:
            infos, token = client.list(prefix, token, page_size)
            for fields in infos:
                yield ImageInfo._from_native(fields)
            if not token:
                return

    def watch(self, prefix="", *, after=None):
        """A Watch of every change (publish, replace, delete, expiry) to
        the images whose ids start with ``prefix``, from now on, or with
        ``after``, every change after that sequence (a generation you
        hold, or the last event's sequence) that the server still keeps.
        The watch runs on the server when this returns."""
        if after is not None:
            after = _generation(after, "after")
        return Watch(self._client().watch(prefix, after))

    def create_stream(self, stream, *, max_steps=0, max_bytes=0,
                      when_full="block", reserve_steps=0,
                      keep_first_step=False):
        """Creates ``stream`` (docs/STREAMS.md) with its queue limits (0:
        the server's defaults, 8 steps and 256 MiB), what a full queue
        does (``when_full``: "block", "discard-oldest" or "refuse"), the
        acknowledged steps kept for late groups (``reserve_steps``) and
        whether step 0 is kept for every new group. Again with the same
        policy is fine; with another, ``Conflict``. Optional: a first
        append creates the stream with the defaults."""
        return StreamInfo._from_native(self._client().create_stream(
            stream, max_steps, max_bytes, when_full, reserve_steps,
            keep_first_step))

    def append(self, stream, source, *, wait_for_room=30.0,
               step_buffer=False):
        """Appends ``source`` (an open h5py.File, a path, or bytes-like, as
        for push) as the stream's next step; returns (step, ImageInfo).
        A full stream that blocks makes it wait up to ``wait_for_room``
        seconds (then ``Timeout``); one that refuses raises
        ``ResourceExhausted``; a finished one ``FailedPrecondition``.
        With ``step_buffer=True`` (an h5py.File or bytes-like), the step is
        copied into one of the client's step buffers and handed over: on
        the server's host, the way to append many large steps
        (docs/STREAMS.md, "Step buffers")."""
        wait = _seconds(wait_for_room, "wait_for_room")
        client = self._client()
        if _is_h5py_file(source):
            step, info = client.append_hdf5_file(stream, source.id.id, wait,
                                                 bool(step_buffer))
        elif isinstance(source, (str, os.PathLike)):
            if step_buffer:
                raise InvalidArgument(
                    "append: step_buffer=True takes an h5py.File or bytes, "
                    "not a path", "INVALID_ARGUMENT")
            step, info = client.append_path(stream, os.fspath(source), wait)
        else:
            try:
                view = memoryview(source)
            except TypeError:
                raise InvalidArgument(
                    f"append: cannot append a {type(source).__name__}: give "
                    "an h5py.File, a path or a bytes-like object",
                    "INVALID_ARGUMENT") from None
            step, info = client.append_bytes(stream, view, wait,
                                             bool(step_buffer))
        return step, ImageInfo._from_native(info)

    def next(self, stream, group, *, wait=None, lease=None, start="oldest",
             ack=None):
        """The next step of ``stream`` for reader ``group``, leased to this
        client until its ``ack()`` (or for ``lease`` seconds, default 60,
        after which another member of the group gets it). ``wait``: how
        long to wait for one (``Timeout`` after it). ``Finished`` once the
        stream is finished and the group has had every step. ``start``
        ("oldest", "latest" or a step number): where a new group starts.
        ``ack``: a StreamStep this client holds, acknowledged in the same
        round trip first."""
        if start in ("oldest", "latest"):
            kind, at = start, 0
        else:
            kind, at = "step", _generation(start, "start")
        native = self._client().next_step(
            stream, group, _seconds(wait, "wait"), _seconds(lease, "lease"),
            kind, at, None if ack is None else ack.step)
        return StreamStep(self._client(), stream, group, native)

    def steps(self, stream, group, *, wait=None, lease=None, start="oldest"):
        """Iterates over the steps of ``stream`` for ``group`` until the
        stream is finished, each acknowledged when the next one is asked
        for. A step the loop leaves (break, an exception) is not
        acknowledged: ``ack()`` it, or another member gets it when its
        lease runs out."""
        step = None
        while True:
            try:
                # The last step's acknowledgement rides on this request.
                step = self.next(stream, group, wait=wait, lease=lease,
                                 start=start, ack=step)
            except Finished:
                return
            yield step

    def finish_stream(self, stream):
        """Ends ``stream``: readers get the steps appended, then
        ``Finished``."""
        return StreamInfo._from_native(self._client().finish_stream(stream))

    def delete_stream(self, stream, *, group=None):
        """Deletes ``stream`` (its steps and reader groups), or with
        ``group`` only that reader group; readers and writers waiting on
        it get ``NotFound``. ``NotFound`` if there is no such stream or
        group; ``FailedPrecondition``, deleting nothing, while an append
        to the stream is under way."""
        self._client().delete_stream(stream, group)

    def stat_stream(self, stream):
        """The StreamInfo of ``stream``."""
        return StreamInfo._from_native(self._client().stat_stream(stream))

    def rm(self, image_id, *, if_generation_match=None):
        """Deletes ``image_id`` (``NotFound`` if absent); with
        ``if_generation_match``, only if that generation is current (else
        ``Conflict``)."""
        self._client().delete(image_id, if_generation_match)

    def _client(self):
        if self._native is None:
            raise FailedPrecondition("the client is closed",
                                     "FAILED_PRECONDITION")
        return self._native
