"""A ZIP archive written as it is sent: never whole in memory, never in a temporary file.

Python's zipfile can write to a sink it cannot seek in: it then puts each member's sizes and
checksum after its data (a data descriptor) and the directory at the end, which every unzip
tool reads. The sink here only collects what zipfile wrote since it was last emptied; the
generator hands that on after each piece of each file, so the memory held is one piece (plus
a member's header), whatever the archive's size.

Results are already compressed media (MP4, PNG, JPEG, WebP), so members are stored, not
deflated: deflating them again costs CPU and saves almost nothing.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

logger = logging.getLogger("omniweb.engine")

# How much of a stored file is read (and sent on) at a time.
CHUNK_BYTES = 256 * 1024
# ZIP timestamps start in 1980; an older or missing time is written as this.
EARLIEST = (1980, 1, 1, 0, 0, 0)
MISSING_NAME = "missing-files.txt"


@dataclass(frozen=True)
class ZipEntry:
    """One file of the archive: its name in it, how to open the stored file (for reading
    bytes), its size as recorded (it decides whether the member needs ZIP64 headers) and its
    time."""

    name: str
    open: Callable[[], IO[bytes]]
    size: int
    modified: datetime | None = None


class _Sink(io.RawIOBase):
    """Where zipfile writes: bytes kept only until `take()`. It cannot seek or tell, so
    zipfile writes in its streaming form."""

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data


def _date_time(moment: datetime | None) -> tuple[int, int, int, int, int, int]:
    if moment is None or moment.year < 1980:
        return EARLIEST
    return moment.timetuple()[:6]


def zip_chunks(entries: Iterable[ZipEntry]) -> Iterator[bytes]:
    """The bytes of a ZIP of `entries`, piece by piece, for a StreamingHttpResponse.

    A stored file that cannot be opened or read (lost from storage, say) is left out rather
    than ending the download half-way, and the archive ends with a MISSING_NAME listing what
    was left out. A file that breaks off part-way cannot be taken back out of what was sent
    already; it is listed there too."""
    return (piece for piece in _pieces(entries) if piece)


def _pieces(entries: Iterable[ZipEntry]) -> Iterator[bytes]:
    sink = _Sink()
    missing: list[str] = []
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for entry in entries:
            try:
                source = entry.open()
            except OSError:
                logger.warning("event=zip_file_missing name=%s", entry.name)
                missing.append(entry.name)
                continue
            info = zipfile.ZipInfo(entry.name, date_time=_date_time(entry.modified))
            info.compress_type = zipfile.ZIP_STORED
            # Known in advance, so zipfile writes ZIP64 headers for a file past 4 GiB.
            info.file_size = entry.size
            try:
                with source, archive.open(info, mode="w") as member:
                    yield sink.take()
                    while piece := source.read(CHUNK_BYTES):
                        member.write(piece)
                        yield sink.take()
            except OSError:
                logger.warning("event=zip_file_broken name=%s", entry.name)
                missing.append(entry.name)
            yield sink.take()
        if missing:
            note = "These results could not be read from storage and are not in this archive:\n"
            archive.writestr(MISSING_NAME, note + "".join(f"{name}\n" for name in missing))
    yield sink.take()
