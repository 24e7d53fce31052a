"""Benchmark results in one shape, so that the book's benchmark appendix can show them next to their goals.

A script under ``benchmarks/`` measures, prints and then calls :func:`record` with its :class:`Measure` list:
the figure, its value and unit, its goal and PASS/FAIL, and the anchor it is compared with (TRL's
``DPOTrainer``, a plain loop, the dense matmul peak measured in the same run). :func:`record` adds the machine,
the date and the commit and writes ``<folder>/<benchmark>.json`` (default ``_build/benchmarks``, never
committed); the runner turns every such file into the appendix page (:func:`analysis_lib.runner.benchmarks_markdown`).
Speed is measured here, never in timed tests.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER_ENV = "ANALYSIS_LIB_BENCHMARKS"
FORMAT = 1


def folder() -> Path:
    """Where benchmark results go: ``ANALYSIS_LIB_BENCHMARKS``, else ``_build/benchmarks`` of the project."""
    return Path(os.environ.get(FOLDER_ENV) or ROOT / "_build" / "benchmarks")


@dataclass(frozen=True)
class Measure:
    """One benchmark figure: ``value`` in ``unit``, its ``goal`` (e.g. '<= 120 s'; None: reported only) and
    whether it met it (``passed``; None without a goal), and what it is compared with (``anchor``)."""

    name: str
    value: float
    unit: str = ""
    goal: str | None = None
    passed: bool | None = None
    anchor: str | None = None

    def __post_init__(self):
        if (self.goal is None) != (self.passed is None):
            raise ValueError(f"goal, passed: give both or neither for {self.name!r}")

    @property
    def verdict(self) -> str:
        return "reported" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def line(self) -> str:
        value = f"{self.value:.4g}" if isinstance(self.value, float) and math.isfinite(self.value) else str(self.value)
        goal = f"goal {self.goal}" if self.goal else ""
        return f"{self.name:<58} {value:>10} {self.unit:<8} {goal:<22} {self.verdict}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a benchmark ran on (CPU, cores, CPU capability, native bf16, versions, load average)."""
    import torch

    from analysis_lib.models import cpu_capability, cpu_has_native_bf16
    from analysis_lib.page import source_commit

    return {"cpu": cpu_model(), "logical cpus": os.cpu_count(), "cpu capability": cpu_capability(),
            "native bf16": cpu_has_native_bf16(), "torch": torch.__version__, "python": platform.python_version(),
            "load average (1, 5, 15 min)": [round(x, 2) for x in os.getloadavg()], "commit": source_commit()}


def record(benchmark: str, title: str, measures: list[Measure], details: dict | None = None,
           out: Path | None = None) -> Path:
    """Print the measures and write them, with the machine and the date, to ``<out>/<benchmark>.json``."""
    if not measures:
        raise ValueError("measures: a benchmark records at least one measure")
    for m in measures:
        print(m.line())
    path = Path(out or folder()) / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "benchmark": benchmark, "title": title,
               "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "measures": [asdict(m) for m in measures], "details": details or {}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)
    print(f"written to {path}")
    return path


def load(where: Path | None = None) -> list[dict]:
    """Every recorded benchmark in ``where`` (default :func:`folder`), by name; files of another shape are skipped."""
    results = []
    for f in sorted(Path(where or folder()).glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT and data.get("measures"):
            results.append(data)
    return results
