"""The merged file read while it is written (`app.measure_tail.MergedTail`).

What must hold: the bytes streamed are exactly the bytes `app.measure` sends of the complete
file, and a staging is trusted only when those bytes are the final file's, byte for byte; when
they are not, the final file is staged again and the read-back describes it (real PostgreSQL).
"""

import asyncio
import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import FILE_SPECS, file_specs_for_bucket
from app.ingest import ingest_file
from app.measure import LoadMeasure, _prepare, measure_load, staged_merged
from app.measure_tail import MergedTail
from app.merger import merge_bucket
from tests.portal_files import (
    MISSED_HEADER,
    REPEAT_HEADER,
    UNDELIVERED_HEADER,
    missed_row,
    repeat_row,
    undelivered_row,
    write_csv,
)

D = dt.date(2026, 3, 7)


async def _read_until(tail: MergedTail, size: int) -> None:
    """Until the tail has read (and hashed) `size` bytes: it reads as the file grows."""
    for _ in range(500):
        if tail._read >= size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the tail read {tail._read} of {size} bytes")


def _sent_of(path: Path) -> bytes:
    """What `app.measure` sends of a complete file (its payload range)."""
    source = _prepare(path)
    with path.open("rb") as fh:
        fh.seek(source.start)
        return fh.read(source.end - source.start)


@pytest.mark.parametrize("piece", [5, 1000], ids=["in-pieces", "at-once"])
@pytest.mark.parametrize(
    "ending", [b"", b"\n", b"\n\n  \r\n\t\n", b"   "], ids=["none", "newline", "blanks", "spaces"]
)
async def test_the_bytes_streamed_are_the_bytes_sent_of_the_complete_file(
    tmp_path: Path, ending: bytes, piece: int
) -> None:
    body = b'\xef\xbb\xbfa,b\n1,x\n2,"two\nlines"\n3,  \n4,y' + ending
    tmp, final = tmp_path / ".merged.tmp", tmp_path / "merged.csv"
    tmp.write_bytes(b"")
    tail = MergedTail(tmp)

    async def write() -> None:  # in pieces, some ending inside a run of blanks (or at once)
        with tmp.open("ab") as fh:
            for start in range(0, len(body), piece):
                fh.write(body[start : start + piece])
                fh.flush()
                await asyncio.sleep(0.03)
        tmp.replace(final)
        tail.complete(final)

    writer = asyncio.ensure_future(write())
    assert await tail.header() == ["a", "b"]
    streamed = b"".join([chunk async for chunk in tail.stream()])
    await writer
    assert streamed == _sent_of(final)
    assert await tail.verified() and await tail.finished_at() == final
    tail.close()


async def test_bytes_changed_after_they_were_read_are_not_verified(tmp_path: Path) -> None:
    tmp, final = tmp_path / ".merged.tmp", tmp_path / "merged.csv"
    tmp.write_bytes(b"a,b\n1,x\n")
    tail = MergedTail(tmp)
    assert await tail.header() == ["a", "b"] and tail._read == 8  # read (and hashed)
    with tmp.open("r+b") as fh:  # same length, another value
        fh.seek(4)
        fh.write(b"9")
    with tmp.open("ab") as fh:
        fh.write(b"2,y\n")
    tmp.replace(final)
    tail.complete(final)
    assert not await tail.verified()
    tail.close()


async def test_a_file_put_in_the_final_place_instead_is_not_verified(tmp_path: Path) -> None:
    tmp, final = tmp_path / ".merged.tmp", tmp_path / "merged.csv"
    tmp.write_bytes(b"a,b\n1,x\n")
    tail = MergedTail(tmp)
    assert await tail.header() == ["a", "b"] and tail._read == 8  # read (and hashed)
    other = tmp_path / "other.csv"
    other.write_bytes(b"a,b\n1,z\n")
    other.replace(final)  # same size, other bytes; the file read was never renamed
    tail.complete(final)
    assert not await tail.verified()
    tail.close()


async def test_a_staging_of_bytes_that_changed_is_replaced_by_the_final_files(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The first record's key changes after the server parsed it: the staging is not used, the
    final file is staged again, and the read-back finds every key of the final file (with the
    streamed staging it would miss one, and count one key the table does not hold)."""
    rows = [missed_row("A1", f"P{i:03d}") for i in range(30)]
    store = write_csv(tmp_path / "in" / "A1-missed-leads.csv", MISSED_HEADER, rows)
    real = merge_bucket("missed_leads", D, {"A1": store}, tmp_path, out_dir=tmp_path / "m").path
    content = real.read_bytes()
    assert content.count(b"P000") == 1
    half = len(content) // 2
    tmp, final = tmp_path / ".merged.tmp", tmp_path / "merged.csv"
    tmp.write_bytes(content[:half])
    tail = MergedTail(tmp)
    loaded = asyncio.Event()

    async def measure() -> object:
        async with (
            engine.connect() as conn,
            staged_merged(conn, "missed_leads", tail, materialize=True) as staged,
        ):
            await loaded.wait()
            return await staged.read_back(run_id="r1", run_date=D)

    measuring = asyncio.ensure_future(measure())
    await _read_until(tail, half)
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.pwrite(fd, b"X000", content.index(b"P000"))  # already read: in place, same length
    finally:
        os.close(fd)
    with tmp.open("ab") as fh:
        fh.write(content[half:])
    tmp.replace(final)
    tail.complete(final)
    await ingest_file(engine, "missed_leads", D, final, run_id="r1")
    loaded.set()
    measure_ = await asyncio.wait_for(measuring, 60)
    tail.close()
    assert measure_.merged_rows == 30  # type: ignore[attr-defined]
    assert measure_.missing_keys == 0 and measure_.written == 30  # type: ignore[attr-defined]


def _merged_file(tmp_path: Path, bucket: str) -> Path:
    """A real merged file of `bucket` (two stores) from the merger."""
    if bucket == "missed_leads":
        header, rows = MISSED_HEADER, [missed_row("A1", f"P{i}") for i in range(20)]
    elif bucket == "undelivered_all":
        header, rows = UNDELIVERED_HEADER, [undelivered_row("A1", f"{900 + i}") for i in range(20)]
    else:
        header, rows = REPEAT_HEADER, [repeat_row("A1", f"98765{i:05d}") for i in range(20)]
    (key,) = file_specs_for_bucket(bucket)
    name = FILE_SPECS[key]["out_name_template"].format(sc="A1")
    store = write_csv(tmp_path / "in" / name, header, rows)
    return merge_bucket(bucket, D, {"A1": store}, tmp_path, out_dir=tmp_path / "m").path


async def _grown_read_back(
    engine: AsyncEngine, tmp_path: Path, content: bytes, bucket: str = "missed_leads"
) -> tuple[bool, LoadMeasure]:
    """`content` streamed through a tail as a merged file (written before the tail reads)."""
    tmp, final = tmp_path / ".grown.tmp", tmp_path / "grown.csv"
    tmp.write_bytes(content)
    tail = MergedTail(tmp)
    tmp.replace(final)
    tail.complete(final)
    try:
        async with engine.connect() as conn, staged_merged(conn, bucket, tail) as staged:
            return staged.grown, await staged.read_back(run_id="r1", run_date=D)
    finally:
        tail.close()


@pytest.mark.parametrize("bucket", ["missed_leads", "undelivered_all", "repeat_customers"])
async def test_a_grown_staging_reads_back_what_the_final_files_staging_does(
    engine: AsyncEngine, tmp_path: Path, bucket: str
) -> None:
    """Every bucket's keys (text, mobile, integer) are computed as the COPY inserts them."""
    merged = _merged_file(tmp_path, bucket)
    await ingest_file(engine, bucket, D, merged, run_id="r1")
    grown, measured = await _grown_read_back(engine, tmp_path, merged.read_bytes(), bucket)
    async with engine.connect() as conn:
        plain = await measure_load(conn, bucket, merged, run_id="r1", run_date=D)
    assert grown, "the growing file was staged again instead"
    assert dataclasses.replace(measured, duration_ms=0) == dataclasses.replace(plain, duration_ms=0)
    assert measured.written == measured.merged_rows == 20 and measured.missing_keys == 0


async def test_a_repeated_key_in_a_growing_file_is_counted_by_the_usual_staging(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The distinct-keys staging refuses a repeated key; the final file's staging counts it."""
    merged = _merged_file(tmp_path, "missed_leads")
    await ingest_file(engine, "missed_leads", D, merged, run_id="r1")
    lines = merged.read_bytes().splitlines(keepends=True)
    grown, measured = await _grown_read_back(engine, tmp_path, b"".join([*lines, lines[1]]))
    assert not grown
    assert measured.merged_rows == 21 and measured.duplicate_keys_in_merged == 1
    assert measured.written == 20 and measured.missing_keys == 0
