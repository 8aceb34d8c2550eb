"""Linux inotify(7) through ctypes: the three system calls the document ingester needs.

``inotify_init1``, ``inotify_add_watch`` and ``inotify_rm_watch`` from the C library, and
``read(2)`` of the descriptor parsed into :class:`Event` (``struct inotify_event``: wd, mask,
cookie, len, then ``len`` bytes of NUL-padded name). The descriptor is non-blocking and
close-on-exec; :meth:`Inotify.read` waits with ``poll`` up to a timeout. No package beyond the
standard library: the embedder's lock and the controller's tests stay as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
from dataclasses import dataclass

# <sys/inotify.h>
ACCESS = 0x00000001
MODIFY = 0x00000002
ATTRIB = 0x00000004
CLOSE_WRITE = 0x00000008
CLOSE_NOWRITE = 0x00000010
OPEN = 0x00000020
MOVED_FROM = 0x00000040
MOVED_TO = 0x00000080
CREATE = 0x00000100
DELETE = 0x00000200
DELETE_SELF = 0x00000400
MOVE_SELF = 0x00000800
UNMOUNT = 0x00002000
Q_OVERFLOW = 0x00004000
IGNORED = 0x00008000
ONLYDIR = 0x01000000
DONT_FOLLOW = 0x02000000
EXCL_UNLINK = 0x04000000
ISDIR = 0x40000000
NONBLOCK = os.O_NONBLOCK
CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")
# Room for many events per read (each is 16 bytes plus a name of up to NAME_MAX + 1).
_BUFFER = 64 * 1024


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: bytes

    def has(self, flags: int) -> bool:
        return bool(self.mask & flags)


def parse(data: bytes) -> list[Event]:
    """The events in one read's bytes."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset : offset + length].rstrip(b"\0")
        offset += length
        events.append(Event(wd, mask, cookie, name))
    return events


class Inotify:
    """One inotify instance; a context manager that closes its descriptor."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._libc.inotify_init1.argtypes = [ctypes.c_int]
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = self._libc.inotify_init1(NONBLOCK | CLOEXEC)
        if fd < 0:
            number = ctypes.get_errno()
            raise OSError(number, f"inotify_init1: {os.strerror(number)}")
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def add_watch(self, path: str | bytes, mask: int) -> int:
        """Watch descriptor of ``path`` (the same one again for a path already watched)."""
        raw = os.fsencode(path)
        wd = self._libc.inotify_add_watch(self.fd, raw, mask)
        if wd < 0:
            number = ctypes.get_errno()
            raise OSError(number, f"inotify_add_watch: {os.strerror(number)}", os.fsdecode(raw))
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; one the kernel already dropped (its directory is gone) is no error."""
        if self._libc.inotify_rm_watch(self.fd, wd) < 0:
            number = ctypes.get_errno()
            if number != errno.EINVAL:
                raise OSError(number, f"inotify_rm_watch: {os.strerror(number)}")

    def read(self, timeout: float | None) -> list[Event]:
        """Events that are queued, waiting up to ``timeout`` seconds (None: until one comes)."""
        millis = -1 if timeout is None else max(0, int(timeout * 1000))
        if not self._poll.poll(millis):
            return []
        try:
            data = os.read(self.fd, _BUFFER)
        except BlockingIOError:
            return []
        return parse(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
