"""What the report reads, and how it refuses what it cannot: one line naming the file, exit 2."""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import pytest

from repltap import cli

from .events import Log
from .test_text import rows

GOOD = json.dumps(Log().add("tag", resource="/a/x", upstream="h:80", uid=None, to="rt:1"))


def report(path: Path | str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["report", str(path), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"{GOOD}\n{GOOD}\nnot json\n", ":3: not JSON (Expecting value at column 1)"),
        (
            b"garbage at the start\n",
            ":1: not JSON (Expecting value at column 1); this is neither "
            "a JSON Lines event log nor a mitmproxy recording",
        ),
        (f"{GOOD}\n[1, 2]\n", ":2: not an event (a JSON list, not an object)"),
        (f'{GOOD}\n{{"v": 1, "seq": 2}}\n', ':2: not an event (no "event" field)'),
        (
            '{"v": 2, "event": "manifest"}\n',
            ":1: event log version 2; this repltap reads version 1",
        ),
        (
            '{"v": 1, "event": "manifest", "status": 207}\n',
            ':1: a manifest event without a "collection"',
        ),
        (b'{"v": 1, "event": "tag", "resource": "/\xff"}\n', ":1: not UTF-8 text"),
        ("[" * 100_000 + "\n", ":1: JSON nested too deeply"),
        (
            f"{GOOD}\n{{broken\n{GOOD}\n",
            ":2: not JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
    ],
)
def test_bad_event_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, message: str
) -> None:
    path = tmp_path / "events.jsonl"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    code, err = report(path, capsys)
    assert code == 2
    assert err == f"repltap report: {path}{message}\n"


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = report(tmp_path / "nope.jsonl", capsys)
    assert (code, err) == (2, f"repltap report: {tmp_path / 'nope.jsonl'}: no such file\n")


def test_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = report(tmp_path, capsys)
    assert (code, err) == (
        2,
        f"repltap report: {tmp_path}: is a directory, not an event log or recording\n",
    )


@pytest.mark.parametrize("content", [b"123:abc", b"5:hello,99999:"])
def test_broken_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """A file that starts like a flow file but is not one (cut off, or garbage)."""
    path = tmp_path / "session.mitm"
    path.write_bytes(content)
    code, err = report(path, capsys)
    assert code == 2
    assert err.startswith(f"repltap report: {path}: not a readable mitmproxy recording (")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cut_off_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (Path(__file__).parent / "data" / "session.mitm").read_bytes()
    path = tmp_path / "cut.mitm"
    path.write_bytes(data[: len(data) // 2])
    code, err = report(path, capsys)
    assert code == 2
    assert err.startswith(f"repltap report: {path}: not a readable mitmproxy recording (")
    assert err.count("\n") == 1


def test_a_log_still_being_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Half a last line (no newline yet) is left out with a note, not refused."""
    path = tmp_path / "live.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n{GOOD[:20]}")
    code = cli.main(["report", str(path)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "2 events" in out
    assert "note: ignored the incomplete last line 3 (the log is still growing?)" in out


def test_blank_lines_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text(f"\n{GOOD}\n\n   \n{GOOD}\n")
    assert cli.main(["report", str(path)]) == 0
    assert "2 events" in capsys.readouterr().out


def test_detected_by_content_not_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "data"
    log = tmp_path / "events.mitm"
    log.write_bytes((data / "session.jsonl").read_bytes())
    rec = tmp_path / "recording.jsonl"
    rec.write_bytes((data / "session.mitm").read_bytes())
    assert cli.main(["report", str(log)]) == 0
    from_log = capsys.readouterr().out
    assert cli.main(["report", str(rec)]) == 0
    from_rec = capsys.readouterr().out
    # The same figures, and both name the clients (manifest events carry them).
    assert rows(from_log) == rows(from_rec) and len(rows(from_log)) == 3
    assert "clients 10.0.0.21 Evolution/3.46.4 ×5" in from_rec
    assert "clients 10.0.0.21 Evolution/3.46.4 ×5" in from_log


def test_html_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(GOOD + "\n")
    out = tmp_path / "no" / "such" / "dir" / "r.html"
    code = cli.main(["report", str(path), "--html", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"repltap report: {out}: cannot write it: No such file or directory\n"


def test_compressed_log_and_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rotated log compressed with gzip, and a log saved by an editor that adds a BOM."""
    gz = tmp_path / "events.jsonl.1.gz"
    gz.write_bytes(gzip.compress(f"{GOOD}\n{GOOD}\n".encode()))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(codecs.BOM_UTF8 + f"{GOOD}\n".encode())
    assert cli.main(["report", str(gz)]) == 0
    assert "2 events" in capsys.readouterr().out
    assert cli.main(["report", str(bom)]) == 0
    assert "1 event," in capsys.readouterr().out


def test_broken_gzip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD.encode() * 50)[:40])
    code, err = report(path, capsys)
    assert code == 2
    assert err.startswith(f"repltap report: {path}: a gzip file that cannot be decompressed (")
    assert err.count("\n") == 1
