"""The logger's fields, timing and redaction; stdlib logging rendered through it."""

import io
import json
import logging

import pytest

from app import json_logger
from app.json_logger import FIELDS, redact, redact_text


@pytest.fixture
def captured(tmp_path):
    stream = io.StringIO()
    log_file = tmp_path / "events.jsonl"
    json_logger.configure(stream=stream, file_path=log_file)
    yield stream, log_file
    json_logger.configure()


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_event_has_the_seed_fields_in_order(captured) -> None:
    stream, log_file = captured
    with json_logger.run_context("run-123"):
        json_logger.log_event(
            "merge",
            "merged",
            bucket="missed_leads",
            store_code="A668",
            date="2026-11-27",
            merged_file="merged_missed_leads_20261127.csv",
            counts={"merged_rows": 10},
            extras={"k": 1},
        )
    (event,) = _events(stream)
    assert tuple(event) == FIELDS
    assert event["run_id"] == "run-123"
    assert event["phase"] == "merge" and event["status"] == "ok"
    assert event["counts"] == {"download_total": None, "merged_rows": 10, "ingested_rows": None}
    assert event["extras"] == {"k": 1}
    assert log_file.read_text().strip() == stream.getvalue().strip()


def test_timed_fills_duration_and_marks_errors(captured) -> None:
    stream, _ = captured
    with json_logger.timed("ingest", "loaded", bucket="b") as t:
        t.counts["ingested_rows"] = 5
    with pytest.raises(RuntimeError), json_logger.timed("ingest", "loading", bucket="b"):
        raise RuntimeError("boom")
    ok, failed = _events(stream)
    assert ok["duration_ms"] is not None and ok["duration_ms"] >= 0
    assert ok["counts"]["ingested_rows"] == 5
    assert failed["status"] == "error" and "RuntimeError: boom" in failed["extras"]["error"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql+asyncpg://crm:s3cr3t@db:5432/crm", "s3cr3t"),
        ("login with password=hunter2 failed", "hunter2"),
        ("Cookie: sessionid=abc123; csrftoken=zzz", "abc123"),
        ("user_name=demo&password=pa55word", "pa55word"),
    ],
)
def test_redact_text_hides_secrets(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


def test_redact_mapping_keys_and_nested_values(captured) -> None:
    stream, _ = captured
    json_logger.log_event(
        "download",
        "connecting to postgresql://u:topsecret@h/db",
        extras={"password": "pw1", "headers": {"Set-Cookie": "sid=xyz"}, "token": "t0k"},
    )
    raw = stream.getvalue()
    for secret in ("topsecret", "pw1", "sid=xyz", "t0k"):
        assert secret not in raw
    assert redact({"database_url": "postgresql://a:b@c/d"}) == {"database_url": "***"}


def test_stdlib_logging_goes_through_the_json_logger(captured) -> None:
    stream, _ = captured
    logging.getLogger("some.library").warning("disk almost full, password=abc")
    (event,) = [e for e in _events(stream) if e["extras"].get("logger") == "some.library"]
    assert event["status"] == "warn"
    assert "abc" not in event["message"]
