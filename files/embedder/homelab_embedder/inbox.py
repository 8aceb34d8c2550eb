"""The document inbox under inotify: which files to look at, and when.

Every directory of the tree is watched (new ones as they appear; symbolic links are never
followed). An event only schedules a look at its path; what the look finds on disk decides
(a file there is read and compared, a file gone is removed): a delete followed at once by a
new file of the same name is one change, not two.

When a file counts as complete:

- ``close_write`` (the writer closed it) or ``moved_to`` (renamed into place): after a short
  debounce (``DEBOUNCE``), for writers that close and reopen;
- a file being written (``create`` or ``modify`` seen, no close yet) waits for its close,
  however slow the copy; only a writer silent for ``writer_quiet`` seconds without closing
  is taken as done (a writer that died holding the file; its close would bring it back);
- a file found by a scan (at start, after a queue overflow, in a directory moved in, at each
  periodic rescan) with no event: once its modification time is ``settle`` seconds old, and
  the reader checks that size and time did not move while it read.

Hidden names (``.name``, as rsync and many tools write before renaming) and names ending in
``.part``, ``.partial``, ``.tmp``, ``.crdownload``, ``.download``, ``.swp`` or ``~`` are not
documents: copying to such a name and renaming it when done is the reliable way in.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from homelab_embedder import inotify
from homelab_embedder.documents import format_of

LOG = logging.getLogger("document-ingest")

DEBOUNCE = 0.25
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".swp", "~")
MASK = (
    inotify.CLOSE_WRITE | inotify.MOVED_TO | inotify.MOVED_FROM | inotify.CREATE
    | inotify.DELETE | inotify.MODIFY | inotify.ATTRIB | inotify.DELETE_SELF | inotify.MOVE_SELF
    | inotify.ONLYDIR | inotify.DONT_FOLLOW | inotify.EXCL_UNLINK
)  # fmt: skip


class InboxGone(RuntimeError):
    """The inbox directory itself was deleted or moved: the service restarts."""


@dataclass(frozen=True)
class Signature:
    """What identifies a version of a file without reading it."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Entry:
    due: float | None  # monotonic time of the look; None: waiting for the writer's close
    writing: bool = False
    activity: float = 0.0  # last write seen (monotonic)


def skipped(name: str) -> bool:
    """A name that is never a document: hidden, temporary, or not valid UTF-8."""
    if name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES):
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes (surrogate escapes): not JSON-safe
        return True
    return False


def is_document(name: str) -> bool:
    return not skipped(name) and format_of(name) is not None


class Inbox:
    def __init__(
        self,
        root: Path,
        watcher: inotify.Inotify,
        settle: float = 2.0,
        writer_quiet: float = 30.0,
    ) -> None:
        self.root = root
        self.watcher = watcher
        self.settle = settle
        self.writer_quiet = writer_quiet
        self.watches: dict[int, str] = {}  # wd -> directory relative to the root ("" = root)
        self.entries: dict[str, Entry] = {}
        self.overflowed = False
        self.gone_directories: list[str] = []

    # --- the tree ---------------------------------------------------------------------------

    def start(self) -> dict[str, Signature]:
        """Watch the whole tree (before looking, so nothing written meanwhile is missed); the
        documents found, each scheduled by the scan rule."""
        self._watch("")
        return self.scan()

    def _watch(self, rel: str) -> None:
        path = self.root / rel if rel else self.root
        try:
            wd = self.watcher.add_watch(str(path), MASK)
        except OSError as error:
            if not rel:
                raise
            # Gone again, not a directory any more, or out of watches (fs.inotify.max_user_
            # watches): the periodic rescan still finds what is in it.
            LOG.warning("cannot watch %s: %s", path, error)
            return
        self.watches[wd] = rel
        for entry in self._entries(path):
            if entry.is_dir(follow_symlinks=False) and not skipped(entry.name):
                self._watch(f"{rel}/{entry.name}" if rel else entry.name)

    @staticmethod
    def _entries(path: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                return list(entries)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as error:
            LOG.warning("cannot list %s: %s", path, error)
            return []

    def files(self) -> dict[str, Signature]:
        """Every document under the root (regular files, links not followed)."""
        found: dict[str, Signature] = {}
        for rel, st in self._walk(""):
            found[rel] = Signature.of(st)
        return found

    def _walk(self, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        for entry in self._entries(self.root / rel if rel else self.root):
            if skipped(entry.name):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(child)
                elif entry.is_file(follow_symlinks=False) and format_of(entry.name):
                    yield child, entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue

    def scan(self, now: float | None = None, wall: float | None = None) -> dict[str, Signature]:
        """All documents, each scheduled by the scan rule unless being written already."""
        found = self.files()
        for rel in found:
            self.found(rel, now=now, wall=wall)
        return found

    # --- scheduling -------------------------------------------------------------------------

    def found(self, rel: str, now: float | None = None, wall: float | None = None) -> None:
        """Schedule a file seen by a scan: once its modification time is ``settle`` old."""
        now = time.monotonic() if now is None else now
        wall = time.time() if wall is None else wall
        entry = self.entries.get(rel)
        if entry is not None and entry.writing:
            return
        try:
            st = (self.root / rel).stat(follow_symlinks=False)
            age = wall - st.st_mtime
        except OSError:
            age = self.settle  # gone: look at once (its chunks go)
        due = now + max(0.0, self.settle - age)
        if entry is None or entry.due is None or due < entry.due:
            self.entries[rel] = Entry(due)

    def look(self, rel: str, at: float) -> None:
        """Schedule a look at ``rel`` at monotonic time ``at`` (a retry, a removal)."""
        entry = self.entries.get(rel)
        if entry is not None and (entry.writing or (entry.due is not None and entry.due <= at)):
            return  # its writer's close, or an earlier look, comes first
        self.entries[rel] = Entry(at)

    def handle(self, event: inotify.Event, now: float) -> None:
        if event.has(inotify.Q_OVERFLOW):
            self.overflowed = True
            return
        if event.has(inotify.IGNORED):  # the kernel dropped the watch (directory gone)
            self.watches.pop(event.wd, None)
            return
        directory = self.watches.get(event.wd)
        if directory is None:
            return
        if event.has(inotify.DELETE_SELF | inotify.MOVE_SELF):
            if directory == "":
                raise InboxGone(f"the inbox {self.root} was deleted or moved away")
            return  # a subdirectory: its parent reported it (delete or moved_from)
        name = os.fsdecode(event.name)
        if skipped(name):
            return
        rel = f"{directory}/{name}" if directory else name
        if event.has(inotify.ISDIR):
            self._directory_event(event, rel, now)
        elif format_of(name) is not None:
            self._file_event(event, rel, now)

    def _directory_event(self, event: inotify.Event, rel: str, now: float) -> None:
        if event.has(inotify.CREATE | inotify.MOVED_TO):
            self._watch(rel)
            for child, _ in self._walk(rel):
                self.found(child, now=now)
        elif event.has(inotify.MOVED_FROM | inotify.DELETE):
            prefix = rel + "/"
            for wd, watched in list(self.watches.items()):
                if watched == rel or watched.startswith(prefix):
                    del self.watches[wd]
                    self.watcher.rm_watch(wd)
            self.gone_directories.append(rel)

    def _file_event(self, event: inotify.Event, rel: str, now: float) -> None:
        if event.has(inotify.CLOSE_WRITE | inotify.MOVED_TO | inotify.DELETE | inotify.MOVED_FROM):
            self.entries[rel] = Entry(now + DEBOUNCE)
        elif event.has(inotify.CREATE | inotify.MODIFY):
            self.entries[rel] = Entry(None, writing=True, activity=now)
        elif event.has(inotify.ATTRIB):  # permissions changed: perhaps readable now
            self.look(rel, now + DEBOUNCE)

    def next_due(self, now: float) -> float | None:
        """When the next scheduled look is due (monotonic), None when nothing is."""
        times = [
            e.due if e.due is not None else e.activity + self.writer_quiet
            for e in self.entries.values()
        ]
        return min(times) if times else None

    def take_due(self, now: float) -> list[str]:
        """The paths whose look is due, oldest first; they leave the schedule."""
        due = []
        for rel, entry in self.entries.items():
            if entry.due is not None and entry.due <= now:
                due.append((entry.due, rel))
            elif entry.writing and entry.activity + self.writer_quiet <= now:
                LOG.warning(
                    "%s: written to but not closed for %.0f s: taken as complete",
                    rel, self.writer_quiet,
                )  # fmt: skip
                due.append((now, rel))
        for _, rel in due:
            del self.entries[rel]
        return [rel for _, rel in sorted(due)]

    def pending(self) -> int:
        return len(self.entries)


def regular_file(path: Path) -> tuple[int, os.stat_result] | None:
    """An open descriptor and the status of ``path`` when it is a regular file (a symbolic
    link is not followed, a FIFO does not block), else None."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symbolic link
            return None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
