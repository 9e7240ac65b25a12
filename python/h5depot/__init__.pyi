# Type stubs of the h5depot package, for editors and type checkers.
import datetime
import os
from typing import Any, Iterator, Optional, Union

import h5py

from .errors import (
    Conflict as Conflict,
    DataLoss as DataLoss,
    Error as Error,
    FailedPrecondition as FailedPrecondition,
    Finished as Finished,
    InvalidArgument as InvalidArgument,
    NotFound as NotFound,
    PermissionDenied as PermissionDenied,
    ResourceExhausted as ResourceExhausted,
    Timeout as Timeout,
    Unavailable as Unavailable,
)

DEFAULT_SERVER: str
_Duration = Union[float, int, datetime.timedelta]
_Path = Union[str, os.PathLike[str]]

class ImageInfo:
    image_id: str
    size: int
    generation: int
    checksum: int
    created: datetime.datetime
    expires: Optional[datetime.datetime]

class ImageEvent:
    kind: str  # "published", "replaced", "deleted", "expired", "evicted", "lost"
    sequence: int
    image_id: str
    generation: int
    size: int
    replaced_generation: int
    time: Optional[datetime.datetime]
    first_lost_sequence: int

class Watch:
    @property
    def started_after(self) -> int: ...
    def next(self, timeout: Optional[_Duration] = ...) -> ImageEvent: ...
    def __iter__(self) -> "Watch": ...
    def __next__(self) -> ImageEvent: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Watch": ...
    def __exit__(self, *exc_info: Any) -> None: ...

class StreamInfo:
    stream: str
    max_steps: int
    max_bytes: int
    when_full: str  # "block", "discard-oldest", "refuse"
    reserve_steps: int
    keep_first_step: bool
    finished: bool
    appended_steps: int
    queued_steps: int
    queued_bytes: int
    kept_steps: int
    kept_bytes: int
    groups: dict[str, dict[str, int]]

class StreamStep:
    step: int
    image: "Image"
    info: ImageInfo
    lost: list[tuple[int, int]]
    def open(self, mode: str = ...) -> h5py.File: ...
    def ack(self) -> None: ...

class Image:
    """A fetched image; read it through the buffer protocol."""
    @property
    def info(self) -> ImageInfo: ...
    @property
    def is_mapped(self) -> bool: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class ImageFile(h5py.File):
    @property
    def image_info(self) -> ImageInfo: ...

class Client:
    def __init__(
        self,
        target: Optional[str] = ...,
        *,
        connect_timeout: _Duration = ...,
        call_timeout: Optional[_Duration] = ...,
        use_data_lane: bool = ...,
        share_memory: bool = ...,
        token: str = ...,
        tls: bool = ...,
        tls_ca_file: _Path = ...,
        tls_cert_file: _Path = ...,
        tls_key_file: _Path = ...,
    ) -> None: ...
    @property
    def target(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(self, *exc_info: Any) -> None: ...
    def push(
        self,
        image_id: str,
        source: Union[h5py.File, _Path, bytes, bytearray, memoryview, Any],
        *,
        if_generation_match: Optional[int] = ...,
        ttl: Optional[_Duration] = ...,
    ) -> ImageInfo: ...
    def fetch(
        self,
        image_id: str,
        *,
        wait: Optional[_Duration] = ...,
        newer_than: Optional[int] = ...,
    ) -> Image: ...
    def fetch_to(
        self,
        image_id: str,
        destination: Union[int, Any],
        *,
        wait: Optional[_Duration] = ...,
        newer_than: Optional[int] = ...,
    ) -> ImageInfo: ...
    def open(
        self,
        image_id: str,
        mode: str = ...,
        *,
        wait: Optional[_Duration] = ...,
        newer_than: Optional[int] = ...,
    ) -> ImageFile: ...
    def stat(
        self,
        image_id: str,
        *,
        wait: Optional[_Duration] = ...,
        newer_than: Optional[int] = ...,
    ) -> ImageInfo: ...
    def wait(
        self, image_id: str, timeout: _Duration, *, newer_than: Optional[int] = ...
    ) -> ImageInfo: ...
    def ls(self, prefix: str = ..., *, page_size: int = ...) -> Iterator[ImageInfo]: ...
    def watch(self, prefix: str = ..., *, after: Optional[int] = ...) -> Watch: ...
    def rm(self, image_id: str, *, if_generation_match: Optional[int] = ...) -> None: ...
    def create_stream(
        self,
        stream: str,
        *,
        max_steps: int = ...,
        max_bytes: int = ...,
        when_full: str = ...,
        reserve_steps: int = ...,
        keep_first_step: bool = ...,
    ) -> StreamInfo: ...
    def append(
        self,
        stream: str,
        source: Union[h5py.File, _Path, bytes, bytearray, memoryview],
        *,
        wait_for_room: _Duration = ...,
    ) -> tuple[int, ImageInfo]: ...
    def next(
        self,
        stream: str,
        group: str,
        *,
        wait: Optional[_Duration] = ...,
        lease: Optional[_Duration] = ...,
        start: Union[str, int] = ...,
        ack: Optional[StreamStep] = ...,
    ) -> StreamStep: ...
    def steps(
        self,
        stream: str,
        group: str,
        *,
        wait: Optional[_Duration] = ...,
        lease: Optional[_Duration] = ...,
        start: Union[str, int] = ...,
    ) -> Iterator[StreamStep]: ...
    def finish_stream(self, stream: str) -> StreamInfo: ...
    def stat_stream(self, stream: str) -> StreamInfo: ...

def File(
    image_id: str,
    mode: str = ...,
    *,
    server: Optional[str] = ...,
    token: str = ...,
    tls: bool = ...,
    tls_ca_file: _Path = ...,
    tls_cert_file: _Path = ...,
    tls_key_file: _Path = ...,
    connect_timeout: _Duration = ...,
    call_timeout: _Duration = ...,
    page_size: int = ...,
    cache_size: int = ...,
) -> h5py.File: ...
