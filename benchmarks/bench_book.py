#!/usr/bin/env python3
"""Benchmark: the whole book from scratch, as a new user meets it (issue 14's goals).

In a fresh clone of the current commit (in a temporary folder), with empty caches:

1. set-up: ``python3 run.py setup`` (a new virtual environment: pip installs from the registries) -- goal <= 3 min;
   ``--reuse-venv`` links this checkout's ``.venv`` instead and skips the measure;
2. the whole book from scratch: ``python3 run.py book`` with an empty ``ANALYSIS_LIB_CACHE`` (converted weights,
   features, reference log-probs) and no ``_build`` -- goal <= 12 min on a 2-core machine, with the time per chapter
   and by part (features, training, plotting) as the runner prints it;
3. a rebuild with nothing changed: ``python3 run.py book`` again -- goal <= 10 s.

    .venv/bin/python benchmarks/bench_book.py [--reuse-venv] [--keep]

Run it on a quiet machine: other work on the cores lengthens every figure. The results are recorded for the book's
benchmark appendix (see ``analysis_lib.benchmarking``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from analysis_lib.benchmarking import Measure, record  # noqa: E402

SETUP_GOAL_S, BOOK_GOAL_S, REBUILD_GOAL_S = 180.0, 720.0, 10.0
CHAPTER_LINE = re.compile(r"\[book\] \(\d+/\d+\) (?P<name>\S+) \.\.\. (?:(?!\[book\])[\s\S])*?"
                          r"(?P<status>ok|failed|cached) "
                          r"\((?P<seconds>[\d.]+) s(?:[^;)]*)?(?:; (?P<parts>[^)]*))?\)")


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str, int]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.stdout + proc.stderr, proc.returncode


def chapter_times(log: str) -> dict[str, dict]:
    """Per chapter: status, seconds and time by part, from the runner's progress lines."""
    out = {}
    for m in CHAPTER_LINE.finditer(log):
        parts = dict(p.rsplit(" ", 2)[:2] for p in (m.group("parts") or "").split(", ") if p)
        out[m.group("name")] = {"status": m.group("status"), "seconds": float(m.group("seconds")),
                                "parts": {k: float(v) for k, v in parts.items()}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse-venv", action="store_true", help="link this checkout's .venv (no set-up measure)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_book-"))
    clone, cache = work / "book", work / "cache"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "ANALYSIS_LIB_CACHE"}}
    env["ANALYSIS_LIB_CACHE"] = str(cache)
    shared = ROOT.parent / "shared" / "data"
    if "ANALYSIS_LIB_DATA" not in env and shared.is_dir():
        env["ANALYSIS_LIB_DATA"] = str(shared)
    measures, details = [], {"clone": str(clone)}
    try:
        if args.reuse_venv:
            (clone / ".venv").symlink_to(ROOT / ".venv")
            for name in ("_assets",):
                if (ROOT / name).exists():
                    (clone / name).symlink_to(ROOT / name)
            env["PYTHONPATH"] = str(clone)
            timed([sys.executable, "run.py", "setup"], clone, env)
        else:
            seconds, log, code = timed([sys.executable, "run.py", "setup"], clone, env)
            details["setup log tail"] = log[-2000:]
            measures.append(Measure("set-up of a fresh clone (python3 run.py setup)", round(seconds, 1), "s",
                                    f"<= {SETUP_GOAL_S:g} s", code == 0 and seconds <= SETUP_GOAL_S))
        seconds, log, code = timed([sys.executable, "run.py", "book"], clone, env)
        chapters = chapter_times(log)
        details["chapters"], details["book log tail"] = chapters, log[-3000:]
        parts: dict[str, float] = {}
        for c in chapters.values():
            for k, v in c["parts"].items():
                parts[k] = parts.get(k, 0.0) + v
        slowest = sorted(chapters.items(), key=lambda kv: -kv[1]["seconds"])[:3]
        measures.append(Measure(f"the whole book from scratch ({len(chapters)} chapters, empty caches)",
                                round(seconds, 1), "s", f"<= {BOOK_GOAL_S:g} s", code == 0 and seconds <= BOOK_GOAL_S,
                                "slowest: " + ", ".join(f"{n} {c['seconds']:.0f} s" for n, c in slowest)
                                + ("; by part: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(parts.items()))
                                   if parts else "")))
        seconds, log, code = timed([sys.executable, "run.py", "book"], clone, env)
        measures.append(Measure("a rebuild with nothing changed", round(seconds, 1), "s", f"<= {REBUILD_GOAL_S:g} s",
                                code == 0 and seconds <= REBUILD_GOAL_S))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    record("book", "The whole book from scratch, and a rebuild", measures, details=details)
    return 0 if all(m.passed is not False for m in measures) else 1


if __name__ == "__main__":
    sys.exit(main())
