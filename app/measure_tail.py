"""The merged file read while the merger's second pass writes it (a `app.measure.GrowingFile`).

Why: the audit's measure of the merged file is a second parse of it by the server, plus the
grouping of its keys. Taken during the load, it competes with the load for both vCPUs (the
load's Python side and the server's upserts). The merger's second pass keeps only one core busy,
so the measuring process of the merge step (`app.measure_worker`) reads the merged file as it
grows and sends it to the server's COPY meanwhile; only the read-back waits for the load.

Why it can be trusted: the file is opened when the merger starts writing it (the descriptor
follows the file through its rename) and read strictly in order, every byte hashed as it is
read. When the merger says the file is complete and renamed, the file at its final path is read
again and hashed: the staging counts only if the two SHA-256 digests and the sizes are equal,
that is, when the server parsed exactly the bytes the load will read and the cleanup may delete
(`verified`). Otherwise the caller stages the final file again (`app.measure.staged_merged`).
"""

import asyncio
import contextlib
import csv
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

_CHUNK = 1 << 20
_WAIT_S = 0.02  # how long to wait for more bytes before looking again
_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r\n"


class MergedTail:
    """A file being appended to, read as it grows until `complete` names its final path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._read = 0  # bytes read (and hashed) so far
        self._digest = hashlib.sha256()
        self._size: int | None = None  # the complete file's size
        self._final: Path | None = None
        self._done = asyncio.Event()
        self._head = b""  # read while looking for the header, not yet streamed

    def complete(self, final: Path) -> None:
        """The merger has written, verified and renamed the file to `final`."""
        self._size = os.fstat(self._fd).st_size
        self._final = final
        self._done.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _take(self) -> bytes:
        """The next bytes on disk (b"" for none yet), hashed (in a worker thread)."""
        want = _CHUNK if self._size is None else min(_CHUNK, self._size - self._read)
        chunk = os.pread(self._fd, want, self._read) if want > 0 else b""
        self._read += len(chunk)
        self._digest.update(chunk)
        return chunk

    async def _next(self) -> bytes:
        """The next bytes written; b"" once the complete file is read."""
        while True:
            chunk = await asyncio.to_thread(self._take)
            if chunk:
                return chunk
            if self._size is not None and self._read >= self._size:
                return b""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), _WAIT_S)

    async def header(self) -> list[str] | None:
        """The header record: the first line (the merger writes the spec's column names, with
        no quoted line break in them)."""
        while b"\n" not in self._head:
            chunk = await self._next()
            if not chunk:
                return None
            self._head += chunk
        line = self._head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
        return next(csv.reader([line]), [])

    async def stream(self) -> AsyncIterator[bytes]:
        """The payload as written. A run of blank characters is held back until more follows,
        so that what ends the file (after the last record's line end) is not sent: exactly the
        bytes `app.measure._prepare` would send of the complete file."""
        held = self._head[len(_BOM) :] if self._head.startswith(_BOM) else self._head
        self._head = b""
        while True:
            cut = len(held.rstrip(_BLANK))
            if cut:
                yield held[:cut]
                held = held[cut:]
            chunk = await self._next()
            if not chunk:
                break
            held += chunk
        newline = held.find(b"\n")  # held is blank: up to the last record's line end
        if end := (held if newline < 0 else held[: newline + 1]):
            yield end

    async def finished_at(self) -> Path:
        await self._done.wait()
        assert self._final is not None  # set together with the event
        return self._final

    async def verified(self) -> bool:
        final = await self.finished_at()
        while await self._next():  # what a failed COPY did not read: hashed all the same
            pass
        return await asyncio.to_thread(self._same_as, final)

    def _same_as(self, final: Path) -> bool:
        try:
            with final.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").digest()
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            return False
        return size == self._read == self._size and digest == self._digest.digest()
