"""The trace log keeps every line whole (a full disk mid-line, a crash mid-line) and
rotates by size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from test_ops_observability import make_trace

from hark.config import Config
from hark.server.tracelog import TraceLog, read_traces

REPO = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[dict]:
    """Every line of the file, each of which must be one JSON record."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rotates_by_size_and_keeps_the_newest_files(tmp_path):
    path = tmp_path / "traces.jsonl"
    tl = TraceLog(path, max_bytes=4000, keep=2)
    traces = [make_trace() for _ in range(30)]
    for tr in traces:
        assert tl.write(tr)
    tl.close()
    rotated = [path.with_name("traces.jsonl.1"), path.with_name("traces.jsonl.2")]
    assert all(p.exists() for p in rotated) and not path.with_name("traces.jsonl.3").exists()
    assert tl.rotations > 2
    for p in [path, *rotated]:
        assert p.stat().st_size <= 4000
    kept = _lines(rotated[1]) + _lines(rotated[0]) + _lines(path)
    ids = [r["turn_id"] for r in kept]
    assert ids == [t.turn_id for t in traces][-len(ids):]  # the newest, in order


def test_config_sets_rotation(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    cfg.server.trace_log_max_mb = 0.5
    cfg.server.trace_log_keep = 5
    tl = TraceLog.from_config(cfg)
    assert tl.max_bytes == 512 * 1024 and tl.keep == 5


def test_a_line_left_half_written_is_not_merged_with_the_next(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text('{"turn_id": "a"}\n{"turn_id": "cut off by a cra')
    tl = TraceLog(path)
    tr = make_trace()
    assert tl.write(tr)
    tl.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"turn_id": "cut off by a cra'
    assert json.loads(lines[2])["turn_id"] == tr.turn_id
    assert [r["turn_id"] for r in read_traces(path)] == ["a", tr.turn_id]


def test_a_full_disk_mid_line_leaves_no_torn_line(tmp_path):
    """A real partial write: a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) stops a
    write part-way, as a full disk does; the limit is then lifted (room again)."""
    script = textwrap.dedent(f"""
        import json, resource, signal, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_ops_observability import make_trace
        from hark.server.tracelog import TraceLog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        tl = TraceLog({str(tmp_path / "t.jsonl")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (5000, hard))
        ok = [tl.write(make_trace()) for _ in range(20)]
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        ok.append(tl.write(make_trace()))
        tl.close()
        print(json.dumps({{"ok": ok, "errors": tl.errors, "last_error": tl.last_error}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["ok"][0] and not all(res["ok"][:20]) and res["ok"][-1]
    assert "written; removed" in (res["last_error"] or "") or "File too large" in (
        res["last_error"] or "")
    lines = _lines(tmp_path / "t.jsonl")  # every line whole
    assert len(lines) == res["ok"].count(True)
