"""The book's runner: parameters, cached papermill execution, the reproducibility report, the HTML build.

    python -m analysis_lib.runner book [--force]          # execute every chapter (cached), build the HTML
    python -m analysis_lib.runner chapter NAME [-p k=v]   # run one chapter, with overrides
    python -m analysis_lib.runner chapters                # list chapters and their parameters

(``python3 run.py ...`` sets up the environment and calls this.)

Chapters are the jupytext py:percent files under ``book/`` listed in ``_toc.yml``. Each is executed by
papermill with the values of its ``parameters`` cell (plus overrides) into ``_build/executed/NAME.ipynb``,
with a sidecar ``NAME.json`` holding the cache key, the status, the run time and the chapter's claim checks.
The key covers the chapter's source, its resolved parameters, the library's source and the environment
recipe, so an unchanged chapter is not executed again. A failing chapter is reported with the cell that
failed; the others still run and keep their output. The executed notebooks are then staged into
``_build/src`` together with a generated reproducibility report and built with Jupyter Book (``-W -n``,
execution off) into ``_build/html``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import hashlib
import html
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from .claims import CATEGORIES, DECLARED, FAILED, FINDING, INCONCLUSIVE, MIME_TYPE, summary_sentence, verdict_counts

LIBRARY = Path(__file__).resolve().parent


# The kernel's own log (e.g. ipykernel's notice that its local TCP sockets are unencrypted) is not the
# chapter's output: only errors of the kernel process itself reach the build log.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
#: Set for the kernels the runner starts: progress bars (``runtime.progress``) then write to the runner's
#: terminal instead of the notebook.
PROGRESS_ENV = "ANALYSIS_LIB_PROGRESS"


class BookError(Exception):
    """A user error (unknown chapter, bad override): reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------

_CONSTRAINT = re.compile(r"^\s*\[(?P<spec>[^\]]*)\]\s*")
_SMOKE = re.compile(r"\{smoke:\s*(?P<value>.*)\}\s*$")


@dataclass
class Parameter:
    name: str
    default: object
    constraint: str = ""
    description: str = ""
    smoke: object = None
    has_smoke: bool = False

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def value_spec(self) -> str:
        """The constraint on the value (on each element of a list)."""
        return _split_spec(self.constraint)[0]

    @property
    def length_spec(self) -> str:
        """The constraint on a list's length ('len 2', 'len 1..8'); a list is non-empty unless it says so."""
        return _split_spec(self.constraint)[1]

    def allowed(self) -> str:
        kind = {int: "an integer", float: "a finite number", bool: "True or False", str: "a string",
                list: "a list", tuple: "a tuple"}.get(self.kind, self.kind.__name__)
        return f"{kind} {self.constraint}".strip() if self.constraint else kind

    def check(self, value) -> object:
        """Return the value converted to the parameter's type, or raise BookError naming the parameter."""
        bad = BookError(f"parameter {self.name}={value!r}: must be {self.allowed()}")
        kind = self.kind
        if kind is bool:
            if not isinstance(value, bool):
                raise bad
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            value = float(value)
        elif kind in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise bad
            value = kind(value)
            if not _length_ok(len(value), self.length_spec):
                raise BookError(f"parameter {self.name}={value!r}: must be a list of "
                                f"{self.length_spec or 'len >= 1'}" + (f", each {self.value_spec}"
                                                                      if self.value_spec else ""))
            if self.default and value:
                elem = type(self.default[0])
                ok = all(isinstance(v, elem) and not (isinstance(v, bool) and elem is not bool) for v in value)
                if elem is float:
                    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in value)
                if not ok:
                    raise BookError(f"parameter {self.name}={value!r}: must be a list of {elem.__name__}")
        elif not isinstance(value, kind):
            raise bad
        if self.value_spec and not _satisfies(value, self.value_spec):
            raise bad
        return value

    def is_bounded(self) -> bool:
        """Whether an integer (or a list of integers) has an upper bound: every size-like parameter must."""
        ints = self.kind is int or (self.kind in (list, tuple) and self.default
                                    and type(self.default[0]) is int)
        return not ints or bool(re.search(r"(<=|<)\s*\S+|\S+\s*\.\.\s*\S+", self.value_spec))


def _split_spec(spec: str) -> tuple[str, str]:
    """'>= 0; len 1..8' -> ('>= 0', 'len 1..8')."""
    value, length = [], ""
    for part in (p.strip() for p in spec.split(";")):
        if part.startswith("len"):
            length = part
        elif part:
            value.append(part)
    return "; ".join(value), length


def _length_ok(n: int, spec: str) -> bool:
    if not spec:
        return n >= 1
    m = re.fullmatch(r"len\s+(\d+)(?:\s*\.\.\s*(\d+))?", spec)
    if not m:
        raise ValueError(f"constraint: cannot read [{spec}]; use 'len n' or 'len a..b'")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    return low <= n <= high


def _satisfies(value, spec: str) -> bool:
    spec = spec.strip()
    items = value if isinstance(value, (list, tuple)) else [value]
    if spec.startswith("one of:"):
        options = [o.strip() for o in spec[len("one of:"):].split(",")]
        return all(str(v) in options for v in items)
    m = re.fullmatch(r"(>=|<=|>|<)\s*(\S+)", spec)
    if m:
        op, bound = m.group(1), float(m.group(2))
        cmp = {">": lambda v: v > bound, ">=": lambda v: v >= bound, "<": lambda v: v < bound,
               "<=": lambda v: v <= bound}[op]
        return all(cmp(v) for v in items)
    m = re.fullmatch(r"(\S+)\s*\.\.\s*(\S+)", spec)
    if m:
        lo, hi = float(m.group(1)), float(m.group(2))
        return all(lo <= v <= hi for v in items)
    raise ValueError(f"constraint: cannot read [{spec}]; use > a, >= a, < a, <= a, a..b or 'one of: x, y'")


def parse_parameters(source: str, where: str = "chapter") -> dict[str, Parameter]:
    """Read the parameters cell of a py:percent chapter: ``name = literal  # [constraint] text {smoke: v}``."""
    cell = _parameters_cell(source)
    if cell is None:
        raise BookError(f"{where}: no cell tagged 'parameters' (write '# %% tags=[\"parameters\"]')")
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(cell).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    params: dict[str, Parameter] = {}
    for node in ast.parse(cell).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise BookError(f"{where}: the parameters cell may only hold 'name = literal' lines (line {node.lineno})")
        name = node.targets[0].id
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise BookError(f"{where}: parameter {name} must have a literal default") from None
        p = Parameter(name, default)
        text = comments.get(node.end_lineno, "")
        m = _SMOKE.search(text)
        if m:
            p.smoke, p.has_smoke = ast.literal_eval(m.group("value")), True
            text = text[: m.start()].strip()
        m = _CONSTRAINT.match(text)
        if m:
            p.constraint = m.group("spec").strip()
            if p.value_spec:
                _satisfies(default, p.value_spec)  # the spec must be readable
            if p.length_spec and not isinstance(default, (list, tuple)):
                raise BookError(f"{where}: parameter {name} is not a list but its constraint says {p.length_spec!r}")
            text = text[m.end():]
        if not p.is_bounded():
            raise BookError(f"{where}: parameter {name} is an integer without an upper bound; write its range, "
                            f"e.g. [1..1000], so that an override cannot ask for an unbounded run")
        p.description = text.strip()
        for label, value in [("default", default)] + ([("smoke value", p.smoke)] if p.has_smoke else []):
            try:
                p.check(value)
            except BookError as e:
                raise BookError(f"{where}: {label} of {e}") from None
        params[name] = p
    return params


def _parameters_cell(source: str) -> str | None:
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# %%") and re.search(r"tags\s*=\s*\[[^\]]*[\"']parameters[\"']", line):
            body = []
            for nxt in lines[i + 1:]:
                if nxt.startswith("# %%"):
                    break
                body.append(nxt)
            return "\n".join(body) + "\n"
    return None


def parse_override(text: str) -> tuple[str, object]:
    """'beta=0.1' -> ('beta', 0.1); values are Python literals, bare words are strings."""
    if "=" not in text:
        raise BookError(f"override {text!r}: write name=value, e.g. beta=0.1")
    name, raw = (s.strip() for s in text.split("=", 1))
    lowered = {"true": True, "false": False}.get(raw.lower())
    if lowered is not None:
        return name, lowered
    try:
        return name, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return name, raw


def parse_overrides(texts: list[str]) -> dict[str, object]:
    """Several 'name=value' overrides; a name given twice is an error (not silently the last)."""
    overrides: dict[str, object] = {}
    for text in texts:
        name, value = parse_override(text)
        if name in overrides:
            raise BookError(f"parameter {name} is given twice ({name}={overrides[name]!r} and {text!r}); give it once")
        overrides[name] = value
    return overrides


def resolve_parameters(chapter: "Chapter", overrides: dict[str, object]) -> dict[str, object]:
    """Defaults of the chapter with the overrides applied and checked."""
    params = chapter.parameters
    values = {name: p.default for name, p in params.items()}
    for name, value in overrides.items():
        if name not in params:
            raise BookError(f"unknown parameter {name!r} for chapter {chapter.name}; allowed: {', '.join(params)}")
        values[name] = params[name].check(value)
    return values


# ---------------------------------------------------------------------------------------------------------
# Chapters and the project layout
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Chapter:
    name: str
    path: Path

    @property
    def source(self) -> str:
        return self.path.read_text()

    @property
    def parameters(self) -> dict[str, Parameter]:
        return parse_parameters(self.source, where=f"chapter {self.name}")

    def smoke_overrides(self) -> dict[str, object]:
        return {n: p.smoke for n, p in self.parameters.items() if p.has_smoke}


@dataclass
class Project:
    """A book: ``root`` holds _config.yml and _toc.yml; outputs go to ``build_dir`` (default root/_build)."""

    root: Path
    build_dir: Path | None = None

    @classmethod
    def find(cls, start: Path | None = None) -> "Project":
        for d in [Path(start or Path.cwd()).resolve(), *Path(start or Path.cwd()).resolve().parents, LIBRARY.parent]:
            if (d / "_toc.yml").exists() and (d / "_config.yml").exists():
                return cls(d)
        raise BookError("no book here: _toc.yml and _config.yml not found in this folder or its parents")

    def __post_init__(self):
        if self.build_dir is not None and Path(self.build_dir).name != "_build":
            raise ValueError(f"build_dir: must be a folder named _build (Jupyter Book's layout), got {self.build_dir}")

    @property
    def build(self) -> Path:
        return Path(self.build_dir) if self.build_dir else self.root / "_build"

    def toc_files(self) -> list[str]:
        import yaml

        toc = yaml.safe_load((self.root / "_toc.yml").read_text())
        files = [toc["root"]]

        def walk(entries):
            for e in entries or []:
                if "file" in e:
                    files.append(e["file"])
                walk(e.get("sections"))

        for part in toc.get("parts", []):
            walk(part.get("chapters"))
        walk(toc.get("chapters"))
        return files

    def chapters(self) -> list[Chapter]:
        out = []
        for f in self.toc_files():
            p = self.root / f"{f}.py"
            if p.exists():
                out.append(Chapter(Path(f).name, p))
        return out

    def chapter(self, name: str) -> Chapter:
        chapters = {c.name: c for c in self.chapters()}
        if name not in chapters:
            close = difflib.get_close_matches(name, chapters, n=3, cutoff=0.4)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise BookError(f"unknown chapter {name!r}; {hint}allowed: {', '.join(chapters)}")
        return chapters[name]

    def environment_fingerprint(self) -> str:
        """Hash of the library source, the environment recipe and the machine facts that change results (the
        feature dtype and the CPU capability): part of every chapter's cache key."""
        h = hashlib.sha256(json.dumps(machine_facts(), sort_keys=True).encode())
        for p in sorted(LIBRARY.rglob("*.py")):
            h.update(p.relative_to(LIBRARY).as_posix().encode())
            h.update(p.read_bytes())
        for name in ("pyproject.toml",):
            f = self.root / name
            if f.exists():
                h.update(f.read_bytes())
        return h.hexdigest()


def machine_facts() -> dict:
    """What of this machine shapes a chapter's numbers: the feature dtype ``dtype='auto'`` picks (it honours
    ``ANALYSIS_LIB_FEATURE_DTYPE``) and the CPU capability (it honours ``ATEN_CPU_CAPABILITY``)."""
    from analysis_lib.models import cpu_capability, feature_dtype

    return {"feature dtype": feature_dtype("auto"), "cpu capability": cpu_capability()}


def cache_key(chapter: Chapter, values: dict, fingerprint: str) -> str:
    blob = json.dumps({"source": chapter.source, "parameters": values, "env": fingerprint}, sort_keys=True,
                      default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    chapter: str
    status: str  # "ok" | "failed" | "cached"
    seconds: float = 0.0
    failure: str | None = None
    claims: list = field(default_factory=list)
    notebook: Path | None = None
    run: dict = field(default_factory=dict)  # the chapter's own machine, dtype, commit and date (page.run_info)


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp(\.ipynb)?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.PID.tmp[.ipynb]``) that killed runs left in ``folder``; a running
    process's own temporaries are kept. Returns what was removed."""
    removed = []
    for f in folder.glob(".*.tmp*") if folder.is_dir() else []:
        m = _TEMPORARY.match(f.name)
        if m and not _pid_alive(int(m.group("pid"))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


@contextlib.contextmanager
def _kernel_environment():
    """Progress bars of the chapter go to the terminal that runs the book, not into the page."""
    old = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "terminal"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = old


def extract_claims(nb) -> tuple[list[dict], dict]:
    """The checks a chapter recorded (from its ``claims.report()`` output) and the run facts that came with them."""
    claims, run = [], {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            payload = out.get("data", {}).get(MIME_TYPE)
            if payload:
                claims.extend(payload["claims"])
                run = payload.get("run") or run
    return claims, run


def tidy_streams(nb) -> None:
    """Merge consecutive stream outputs and apply carriage returns as a terminal would, so that progress bars
    are stored (and rendered in the book) as their final state instead of every refresh."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                    and merged[-1]["name"] == out["name"]):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream" and "\r" in out["text"]:
                lines = out["text"].split("\n")
                out["text"] = "\n".join(line.rstrip("\r").split("\r")[-1] for line in lines)
        # a bar with leave=False ends as blanks: nothing left to show
        merged = [o for o in merged if o.get("output_type") != "stream" or o["text"].strip()]
        if "outputs" in cell:
            cell["outputs"] = merged


def _describe_failure(chapter: Chapter, err) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        first = next((ln for ln in (err.source or "").splitlines() if ln.strip()), "")
        # papermill's injected-parameters cell is counted; exec_count is what the reader sees in the notebook.
        return (f"chapter {chapter.name} failed in cell {err.cell_index} (execution count {err.exec_count}, "
                f"starting {first.strip()[:60]!r}): {err.ename}: {str(err.evalue).splitlines()[0][:300]}")
    return f"chapter {chapter.name} failed before running its cells: {type(err).__name__}: {err}"


def execute(chapter: Chapter, values: dict, out: Path, *, progress: bool = False) -> RunResult:
    """Execute a chapter with papermill into ``out`` (written atomically, also when it fails)."""
    import logging

    import jupytext
    import nbformat
    import papermill

    # papermill reads type hints from parameter comments; ours hold constraints, which it cannot parse.
    logging.getLogger("papermill").setLevel(logging.ERROR)

    start = time.perf_counter()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    failure = None
    try:
        nb = jupytext.read(chapter.path)
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        nb.metadata.setdefault("language_info", {"name": "python"})
        with _kernel_environment():
            papermill.execute_notebook(nb, str(tmp), parameters=values, kernel_name="python3",
                                       cwd=str(chapter.path.parent), progress_bar=progress, log_output=False,
                                       report_mode=False, extra_arguments=KERNEL_ARGUMENTS)
    except Exception as err:  # a failing chapter never stops the others
        failure = _describe_failure(chapter, err)
    seconds = time.perf_counter() - start
    claims, run = [], {}
    if tmp.exists():
        nb = nbformat.read(tmp, as_version=4)
        tidy_streams(nb)
        nbformat.write(nb, tmp)
        claims, run = extract_claims(nb)
        if failure is None and not claims:
            failure = f"chapter {chapter.name} ran but recorded no claim checks (end it with claims.report())"
        os.replace(tmp, out)
    notebook = out if out.exists() else None
    return RunResult(chapter.name, "failed" if failure else "ok", seconds, failure, claims, notebook, run)


def run_chapter(project: Project, chapter: Chapter, overrides: dict | None = None, *, force: bool = False,
                out_dir: Path | None = None, progress: bool = False) -> RunResult:
    """Execute one chapter unless an identical run is cached; the book's cache when there are no overrides."""
    overrides = overrides or {}
    values = resolve_parameters(chapter, overrides)
    key = cache_key(chapter, values, project.environment_fingerprint())
    if out_dir is None:
        if overrides:
            tag = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
            tag = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", tag)[:80]
            out_dir = project.build / "runs" / chapter.name / f"{tag}-{key[:8]}"
        else:
            out_dir = project.build / "executed"
    nb_path, meta_path = out_dir / f"{chapter.name}.ipynb", out_dir / f"{chapter.name}.json"
    if not force and meta_path.exists() and nb_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("status") == "ok":
            return RunResult(chapter.name, "cached", meta["seconds"], None, meta["claims"], nb_path,
                             meta.get("run", {}))
    result = execute(chapter, values, nb_path, progress=progress)
    meta = {"key": key, "status": result.status, "seconds": round(result.seconds, 2), "failure": result.failure,
            "claims": result.claims, "run": result.run, "parameters": values}
    _atomic_write(meta_path, json.dumps(meta, indent=1, default=repr))
    return result


# ---------------------------------------------------------------------------------------------------------
# The reproducibility report and the HTML build
# ---------------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _verdict_html(claim: dict) -> str:
    from .claims import verdict_class

    verdict = claim["verdict"]
    if verdict == DECLARED:
        verdict += " (" + ", ".join(d["category"] for d in claim["differences"]) + ")"
    return f'<span class="verdict {verdict_class(claim["verdict"])}">{html.escape(verdict)}</span>'


def _notes(claim: dict) -> list[str]:
    notes = [f"declared difference ({d['category']}): {d['reason']}" for d in claim.get("differences", [])]
    return notes + ([claim["note"]] if claim.get("note") else [])


_COUNT_COLUMNS = [("reproduced", "claims reproduced"), ("finding", "findings")] + [
    (f"declared {c}", f"declared: {c}") for c in CATEGORIES] + [
    ("inconclusive", "inconclusive"), ("identities", "identities"), ("regressions", "regressions"),
    ("failed", "failed")]


def _machine_line(run: dict) -> str:
    if not run:
        return "—"
    bf16 = "native bf16" if run.get("native bf16") else "no native bf16"
    return (f"{run.get('machine', '?')}, {run.get('cpu capability', '?')} ({bf16}), features "
            f"{run.get('feature dtype', '?')}, commit {run.get('commit', '?')}, {run.get('date', '?')}")


def report_markdown(results: list[RunResult]) -> str:
    """The reproducibility report page (MyST): the exceptions first (findings, declared differences that were
    not reproduced, inconclusive and failed checks, failed chapters), then per chapter the counts of each kind
    of evidence and the machine it ran on, then every check of every chapter."""
    all_claims = [c for r in results for c in r.claims]
    totals = verdict_counts(all_claims)
    # chapters stopped by something else than a failed check (a failed check is listed as such)
    crashed = [r for r in results if r.status == "failed" and not any(c["verdict"] == FAILED for c in r.claims)]
    head = [
        "# Reproducibility report", "",
        "Every check recorded by the chapters of this build: what was measured, what the theory (or an earlier "
        "run) predicts, and the verdict. Generated by the build from the executed notebooks; nothing here is "
        "typed in by hand.", "",
        f"**{summary_sentence(totals)}**" + (f" **{len(crashed)} chapter(s) failed** before recording all "
                                              "their checks (see below)." if crashed else ""), "",
        "A **claim** is evidence for a statement of a paper (or our reconstruction of it, or a hypothesis of "
        "ours) and can fail: a claim that does not hold here is a **finding**, unless a difference from the "
        "paper was declared for it before it was measured (" + "; ".join(
            f"**{c}**: {d}" for c, d in CATEGORIES.items()) + "). An **identity** is true by construction and "
        "checks the code; a **regression** compares with a number recorded earlier.", "",
    ]
    exceptions = [(r, c) for r in results for c in r.claims
                  if c["verdict"] in (FINDING, DECLARED, INCONCLUSIVE, FAILED)]
    head += ["## Exceptions", ""]
    if exceptions or crashed:
        head += ["| chapter | check | verdict | measured | predicted | why |", "|---|---|---|---|---|---|"]
        for r, c in exceptions:
            why = "; ".join(_notes(c)) or ("the statement does not hold in our setting (see the chapter)"
                                          if c["verdict"] == FINDING else "")
            head.append(f"| {{doc}}`book/{r.chapter}` | {_md_cell(c['id'])}: {_md_cell(c['statement'])} | "
                        f"{_verdict_html(c)} | {_md_cell(c['measured'])} | {_md_cell(c['predicted'])} | "
                        f"{_md_cell(why)} |")
        for r in crashed:
            head.append(f"| {{doc}}`book/{r.chapter}` | the chapter | "
                        f'<span class="verdict v-failed">chapter failed</span> | | | {_md_cell(r.failure)} |')
    else:
        head.append("None: every claim was reproduced and every identity and regression held.")
    head += ["", "## Chapters", "",
             "Counts per chapter (columns with no entry in any chapter are left out), and the chapter's run.", ""]
    per = {r.chapter: verdict_counts(r.claims) for r in results}
    columns = [(k, label) for k, label in _COUNT_COLUMNS if any(per[r.chapter][k] for r in results)]
    head += ["| chapter | status | " + " | ".join(label for _, label in columns) + " | seconds |",
             "|---|---|" + "---|" * len(columns) + "---|"]
    for r in results:
        counts = per[r.chapter]
        head.append(f"| {{doc}}`book/{r.chapter}` | {r.status} | "
                    + " | ".join(str(counts[k]) for k, _ in columns) + f" | {r.seconds:.0f} |")
    machines = {_machine_line(r.run) for r in results if r.run}
    head += ["", "Machines the chapters ran on (a chapter served from the cache keeps the machine of its run): "
             + "; ".join(sorted(machines)) if machines else "", ""]
    sections = ["## Checks by chapter", ""]
    for r in results:
        sections += [f"### {{doc}}`book/{r.chapter}`", ""]
        if r.run:
            sections += [f"Ran on {_md_cell(_machine_line(r.run))}.", ""]
        if r.status == "failed":
            sections += [f"**The chapter failed**: {_md_cell(r.failure)}", ""]
        if r.claims:
            sections += ["| id | kind | check | measured | predicted | verdict |", "|---|---|---|---|---|---|"]
            for c in r.claims:
                sections.append(f"| {_md_cell(c['id'])} | {c['kind']} | {_md_cell(c['statement'])} | "
                                f"{_md_cell(c['measured'])} | {_md_cell(c['predicted'])} | {_verdict_html(c)} |")
            noted = [c for c in r.claims if _notes(c)]
            if noted:
                sections += ["", "Notes:", ""]
                sections += [f"- **{_md_cell(c['id'])}**: {_md_cell('; '.join(_notes(c)))}" for c in noted]
            sections.append("")
    return "\n".join(head + sections) + "\n"


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return  # keep the mtime, so Sphinx does not re-read an unchanged page
    _atomic_write(path, data)


def benchmarks_markdown(results: list[dict]) -> str:
    """The benchmark appendix (MyST) from recorded benchmark results (:func:`analysis_lib.benchmarking.load`):
    per benchmark its figures, goals, verdicts and anchors, with the machine and the date."""
    lines = ["# Benchmarks", "",
             "Speed and memory of the library, measured by the scripts under `benchmarks/` (`python3 run.py "
             "benchmarks` runs them all and records the results; this page is generated from those records, never "
             "typed). Each figure stands next to its goal and to what it is compared with, measured in the same run.",
             ""]
    if not results:
        return "\n".join(lines + ["No benchmark has been recorded for this build: run `python3 run.py benchmarks` "
                                  "(about 15 minutes on 2 cores), then `python3 run.py book`.", ""])
    verdicts = [m["passed"] for r in results for m in r["measures"] if m["passed"] is not None]
    lines += [f"**{sum(verdicts)} of {len(verdicts)} goals met** over {len(results)} benchmark(s).", ""]
    for r in results:
        m = r["machine"]
        bf16 = "native bf16" if m.get("native bf16") else "no native bf16"
        lines += [f"## {_md_cell(r['title'])}", "",
                  f"`benchmarks/{r['benchmark'] if r['benchmark'].startswith('bench_') else 'bench_' + r['benchmark']}"
                  f".py`, run {r['date']} on {_md_cell(m.get('cpu', '?'))} ({m.get('logical cpus', '?')} logical "
                  f"CPUs, {m.get('cpu capability', '?')}, {bf16}; load average before the run "
                  f"{m.get('load average (1, 5, 15 min)', ['?'])[0]}), commit {m.get('commit', '?')}.", "",
                  "| figure | value | goal | verdict | compared with |", "|---|---|---|---|---|"]
        for x in r["measures"]:
            value = x["value"]
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
            css = {None: "v-smoke", True: "v-reproduced", False: "v-failed"}[x["passed"]]
            verdict = {None: "reported", True: "PASS", False: "FAIL"}[x["passed"]]
            lines.append(f"| {_md_cell(x['name'])} | {shown} {_md_cell(x['unit'])} | {_md_cell(x['goal'] or '—')} | "
                         f'<span class="verdict {css}">{verdict}</span> | {_md_cell(x["anchor"] or "—")} |')
        lines.append("")
    return "\n".join(lines)


#: The line of book/intro.md that the build replaces by the key-results table and the summary figure.
KEY_RESULTS_MARKER = "% KEY RESULTS (generated by the build)"
THUMBNAIL_WIDTH = 120
_KEY_FIGURE = re.compile(r":::\{admonition\} Key result.*?```\{glue:figure\}\s+(\S+)", re.S)


def key_figure(source: str) -> str | None:
    """The glue key of the figure in a chapter's key-result box, if it has one."""
    m = _KEY_FIGURE.search(source)
    return m.group(1) if m else None


def glued_png(nb, key: str) -> bytes | None:
    """The PNG glued under ``key`` in an executed notebook."""
    import base64

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == key:
                data = out.get("data", {})
                png = data.get("application/papermill.record/image/png") or data.get("image/png")
                return base64.b64decode(png) if png else None
    return None


def thumbnail(png: bytes, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A PNG scaled to ``width`` pixels (shown at its natural size in the key-results table)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _verdict_summary(claims: list[dict]) -> str:
    c = verdict_counts(claims)
    declared = sum(c[f"declared {k}"] for k in CATEGORIES)
    parts = [f"{c['reproduced']} reproduced"]
    parts += [f'<span class="verdict v-finding">{c["finding"]} finding{"s" * (c["finding"] != 1)}</span>'] if c[
        "finding"] else []
    parts += [f'<span class="verdict v-declared">{declared} not reproduced (declared)</span>'] if declared else []
    parts += [f"{c['inconclusive']} inconclusive"] if c["inconclusive"] else []
    parts += [f'<span class="verdict v-failed">{c["failed"]} failed</span>'] if c["failed"] else []
    checks = (f"{c['identities']} identit{'ies' if c['identities'] != 1 else 'y'}, {c['regressions']} "
              f"regression{'s' * (c['regressions'] != 1)}" if (c["identities"] or c["regressions"]) else "")
    return ", ".join(parts) + (f"; {checks}" if checks else "")


def summary_figure(results: list[RunResult]) -> bytes:
    """One figure of the whole book: per chapter, its claims by verdict and its identities and regressions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import PAGE_WIDTH, set_theme

    set_theme()
    groups = [("reproduced", ["reproduced"], "#1a7f37"), ("finding", ["finding"], "#c2410c"),
              ("declared difference", [f"declared {c}" for c in CATEGORIES], "#d4a72c"),
              ("inconclusive", ["inconclusive"], "#8c959f"), ("identity / regression", ["identities", "regressions"],
                                                                "#9ec5fe")]
    counts = [verdict_counts(r.claims) for r in results]
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.32 * len(results) + 1.6), layout="constrained")
    left = [0] * len(results)
    for label, keys, colour in groups:
        width = [sum(c[k] for k in keys) for c in counts]
        ax.barh(range(len(results)), width, left=left, color=colour, label=label, height=0.7)
        left = [a + b for a, b in zip(left, width, strict=True)]
    ax.set_yticks(range(len(results)), [" ".join(r.chapter.split("_")[:2]) for r in results])
    ax.invert_yaxis()
    ax.set_xlabel("checks")
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def key_results_markdown(project: Project, results: list[RunResult], src: Path) -> str:
    """The intro's key-results section: per chapter its title (the result in a few words, linked), its verdict
    counts and a thumbnail of its key figure; then the summary figure. Images are written under ``src``."""
    import nbformat

    thumbs = src / "_static" / "generated"
    chapters = {c.name: c for c in project.chapters()}
    rows = ["| chapter | checks | key figure |", "|---|---|---|"]
    for r in results:
        cell = ""
        key = key_figure(chapters[r.chapter].source) if r.chapter in chapters else None
        png = glued_png(nbformat.read(r.notebook, as_version=4), key) if key and r.notebook else None
        if png:
            _write_if_changed(thumbs / f"{r.chapter}.png", thumbnail(png))
            cell = (f'<img class="thumbnail" src="../_static/generated/{r.chapter}.png" width="{THUMBNAIL_WIDTH}" '
                    f'alt="key figure of {r.chapter}">')
        status = _verdict_summary(r.claims) if r.claims else '<span class="verdict v-failed">no checks</span>'
        rows.append(f"| {{doc}}`{r.chapter}` | {status} | {cell} |")
    _write_if_changed(thumbs / "summary.png", summary_figure(results))
    return "\n".join([
        "Each chapter's title states its result; the counts are its claim checks by verdict (a *finding* is a "
        "paper's statement that does not hold in our setting), then its identities and regressions. Generated "
        "by the build.", "", *rows, "",
        "```{figure} ../_static/generated/summary.png", ":name: fig-summary",
        ":alt: Per chapter, horizontal bars of claim checks by verdict and of identities and regressions.", "",
        "The book's checks per chapter: claims reproduced, findings, claims not reproduced with a declared "
        "difference, inconclusive claims, and the identities and regressions that check the code.", "```"])


#: Tags that keep a code cell's input visible on its page (by default code is folded behind a toggle).
SHOWN_INPUT_TAGS = {"parameters", "show-input", "remove-input", "remove-cell", "hide-cell"}


def rerun_note(chapter: str) -> str:
    """The Markdown placed after a page's parameters cell: how to rerun it, and its two downloadable forms."""
    return (f"Rerun this chapter with other parameters, e.g. "
            f"`python3 run.py chapter {chapter} -p seed=1` (`python3 run.py chapters` lists every parameter with "
            f"its allowed values). Download it as {{download}}`a Python script <{chapter}.py>` (jupytext percent "
            f"format) or, with the download button at the top, as the executed notebook.")


def prepare_page(nb, chapter: str):
    """Turn an executed notebook into its book page (in place, returned): papermill's injected-parameters cell
    removed (the chapter's own parameters cell stays, shown once), a rerun note after it, every other code
    cell's input folded behind a toggle (unless tagged ``show-input``), and no stderr (progress bars, warnings)."""
    import nbformat

    cells = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags:
            continue
        if cell.cell_type == "code":
            if not SHOWN_INPUT_TAGS & set(tags):
                cell.metadata["tags"] = [*tags, "hide-input"]
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        cells.append(cell)
        if "parameters" in tags:  # a fixed id: a random one would make every staged page new to Sphinx
            cells.append(nbformat.v4.new_markdown_cell(rerun_note(chapter), id=f"{cell.get('id', 'parameters')}-rerun"))
    nb.cells = cells
    return nb


def stage(project: Project, results: list[RunResult]) -> Path:
    """Lay out the sources Sphinx builds from in _build/src: book pages made from the executed notebooks (see
    :func:`prepare_page`) with their .py sources to download, prose pages, config, stylesheet, report."""
    import nbformat
    import yaml

    src = project.build / "src"
    (src / "book").mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((project.root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    # the .py sources are staged only to be downloaded; the pages are the executed notebooks
    config["exclude_patterns"] = [*config.get("exclude_patterns", []), "book/*.py"]
    _write_if_changed(src / "_config.yml", yaml.safe_dump(config, sort_keys=False).encode())
    for name in ("_toc.yml", "references.bib"):
        _write_if_changed(src / name, (project.root / name).read_bytes())
    for folder, pattern in (("_static", "*.css"), ("_ext", "*.py")):  # stylesheet, local Sphinx extensions
        for f in sorted((project.root / folder).glob(pattern)):
            _write_if_changed(src / folder / f.name, f.read_bytes())
    assets = src / "_assets"
    if not assets.exists() and (project.root / "_assets").exists():
        assets.symlink_to(project.root / "_assets", target_is_directory=True)
    for f in project.toc_files():
        md = project.root / f"{f}.md"
        if md.exists():
            text = md.read_text()
            if KEY_RESULTS_MARKER in text:
                text = text.replace(KEY_RESULTS_MARKER, key_results_markdown(project, results, src))
            _write_if_changed(src / f"{f}.md", text.encode())
    chapters = {c.name: c for c in project.chapters()}
    for r in results:
        if r.notebook and r.notebook.exists():
            page = prepare_page(nbformat.read(r.notebook, as_version=4), r.chapter)
            _write_if_changed(src / "book" / f"{r.chapter}.ipynb", nbformat.writes(page).encode())
        if r.chapter in chapters:
            _write_if_changed(src / "book" / f"{r.chapter}.py", chapters[r.chapter].path.read_bytes())
    _write_if_changed(src / "reproducibility.md", report_markdown(results).encode())
    if "benchmarks" in project.toc_files():
        from analysis_lib.benchmarking import load

        _write_if_changed(src / "benchmarks.md", benchmarks_markdown(load(project.build / "benchmarks")).encode())
    return src


#: Jupyter Book and the Sphinx packages whose versions shape the HTML (part of :func:`html_sources_stamp`).
HTML_PACKAGES = ("jupyter-book", "sphinx", "myst-nb", "myst-parser", "sphinx-book-theme", "pydata-sphinx-theme")


def html_sources_stamp(src: Path) -> str:
    """sha256 of everything the HTML is built from: every staged file under ``src`` (path and content; the linked
    ``_assets`` folder by its files' paths, sizes and modification times) and the versions of
    :data:`HTML_PACKAGES`."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    for package in HTML_PACKAGES:
        try:
            h.update(f"{package}=={version(package)}\n".encode())
        except PackageNotFoundError:
            h.update(f"{package} absent\n".encode())
    # os.walk follows the _assets link (Path.rglob does not: the assets would go unseen)
    files = (Path(folder) / name for folder, _, names in os.walk(src, followlinks=True) for name in names)
    for path in sorted(files):
        rel = path.relative_to(src).as_posix()
        if rel.startswith("_assets/"):
            st = path.stat()
            h.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{rel} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def build_html(project: Project, src: Path, force: bool = False) -> tuple[int, str]:
    """Build the HTML from the staged sources ``src`` with Jupyter Book (warnings are errors). Skipped, unless
    ``force``, when the last successful build was made from the same sources (:func:`html_sources_stamp`, kept in
    ``_build/html/.sources-stamp``): Sphinx alone takes about 8 s to find that nothing changed."""
    html_dir = project.build / "html"
    stamp_file, stamp = html_dir / ".sources-stamp", html_sources_stamp(src)
    if not force and (html_dir / "index.html").exists() and stamp_file.exists() \
            and stamp_file.read_text() == stamp:
        return 0, "the HTML was built from these sources already; kept"
    stamp_file.unlink(missing_ok=True)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(src), "--path-output", str(project.build.parent),
           "-W", "-n", "--keep-going", "--builder", "html"]
    proc = subprocess.run(cmd, cwd=project.root, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    _atomic_write(project.build / "sphinx.log", log)
    if proc.returncode == 0:
        _atomic_write(stamp_file, stamp)
    return proc.returncode, log


def run_benchmarks(project: Project) -> int:
    """Run every ``benchmarks/bench_*.py`` (each in its own process, one after the other) with its defaults; their
    results land in ``_build/benchmarks`` for the appendix page. Returns 1 if a script failed or missed a goal."""
    env = {**os.environ, "ANALYSIS_LIB_BENCHMARKS": str(project.build / "benchmarks"),
           "PYTHONPATH": os.pathsep.join([str(project.root), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}
    status = 0
    for script in sorted((project.root / "benchmarks").glob("bench_*.py")):
        print(f"[benchmarks] {script.name} ...", flush=True)
        code = subprocess.run([sys.executable, str(script)], cwd=project.root, env=env).returncode
        print(f"[benchmarks] {script.name}: {'ok' if code == 0 else f'exit status {code}'}", flush=True)
        status |= code != 0
    return int(status)


def _time_by_part(parts: dict) -> str:
    return ("; " + ", ".join(f"{part} {t:.1f} s" for part, t in sorted(parts.items()))) if parts else ""


def build(project: Project, *, force: bool = False, html: bool = True, progress: bool = True) -> int:
    """Execute every chapter (cached) and build the book. Returns a process exit status."""
    chapters = project.chapters()
    results: list[RunResult] = []
    t0 = time.perf_counter()
    for i, ch in enumerate(chapters, 1):
        print(f"[book] ({i}/{len(chapters)}) {ch.name} ...", end=" ", flush=True)
        try:
            r = run_chapter(project, ch, force=force)
        except BookError as e:  # a broken parameters cell: name it, go on with the others
            r = RunResult(ch.name, "failed", failure=f"chapter {ch.name}: {e}")
        results.append(r)
        print(f"{r.status} ({r.seconds:.1f} s{' when it ran' if r.status == 'cached' else ''}"
              f"{_time_by_part(r.run.get('time by part', {}))})", flush=True)
    status = 0
    if html:
        src = stage(project, results)
        code, log = build_html(project, src, force=force)
        warnings = [ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln]
        if code != 0:
            print("[book] the HTML build failed (warnings are errors); see _build/sphinx.log:", file=sys.stderr)
            for ln in warnings[:20] or log.splitlines()[-20:]:
                print(f"    {ln}", file=sys.stderr)
            status = 1
        else:
            print(f"[book] HTML: {project.build / 'html' / 'index.html'}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"[book] FAILED: {r.failure}", file=sys.stderr)
    ran = [r for r in results if r.status != "cached"]
    parts: dict[str, float] = {}
    for r in ran:
        for part, t in r.run.get("time by part", {}).items():
            parts[part] = parts.get(part, 0.0) + t
    print(f"[book] executing {len(ran)} chapter(s) took {sum(r.seconds for r in ran):.1f} s"
          f"{_time_by_part(parts)}")
    n_claims = sum(len(r.claims) for r in results)
    print(f"[book] {len(results)} chapters ({len(failed)} failed, "
          f"{sum(r.status == 'cached' for r in results)} from cache), {n_claims} claim checks, "
          f"{time.perf_counter() - t0:.1f} s")
    return 1 if failed else status


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def _print_claims(result: RunResult) -> None:
    for c in result.claims:
        print(f"  [{c['verdict']}] {c['id']}: {c['statement']} | measured {c['measured']} | predicted {c['predicted']}")


class _OneLineParser(argparse.ArgumentParser):
    """argparse with errors as one line (``run.py: ...``, exit status 2) instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"run.py: {message} (see `python3 run.py --help`)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="run.py", description="Execute and build the book.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    b = sub.add_parser("book", help="execute every chapter (cached) and build the HTML")
    b.add_argument("--force", action="store_true", help="re-execute every chapter")
    b.add_argument("--no-html", action="store_true", help="only execute the chapters")
    c = sub.add_parser("chapter", help="run one chapter, optionally with parameter overrides")
    c.add_argument("name")
    c.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter (repeatable), e.g. -p beta=0.1 -p steps=50")
    c.add_argument("--force", action="store_true")
    sub.add_parser("chapters", help="list the chapters and their parameters")
    sub.add_parser("benchmarks", help="run every script under benchmarks/ and record its results for the book")
    args = parser.parse_args(argv)
    try:
        project = Project.find()
        if args.command == "book":
            return build(project, force=args.force, html=not args.no_html)
        if args.command == "benchmarks":
            return run_benchmarks(project)
        if args.command == "chapters":
            for ch in project.chapters():
                print(ch.name)
                for p in ch.parameters.values():
                    print(f"    {p.name} = {p.default!r}  ({p.allowed()})  {p.description}")
            return 0
        chapter = project.chapter(args.name)
        overrides = parse_overrides(args.param)
        resolve_parameters(chapter, overrides)  # fail fast, before starting a kernel
        r = run_chapter(project, chapter, overrides, force=args.force, progress=True)
        print(f"{chapter.name}: {r.status} in {r.seconds:.1f} s -> {r.notebook}")
        _print_claims(r)
        if r.failure:
            print(f"FAILED: {r.failure}", file=sys.stderr)
            return 1
        return 0
    except BookError as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
