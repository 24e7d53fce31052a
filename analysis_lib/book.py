"""The book's runner: parameters, cached papermill execution, the reproducibility report, the HTML build.

    python -m analysis_lib.book book [--force]          # execute every chapter (cached), build the HTML
    python -m analysis_lib.book chapter NAME [-p k=v]   # run one chapter, with overrides
    python -m analysis_lib.book chapters                # list chapters and their parameters

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
import difflib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from .claims import INCONCLUSIVE, MIME_TYPE, PASS, SCALE

LIBRARY = Path(__file__).resolve().parent


# The kernel's own log (e.g. ipykernel's notice that its local TCP sockets are unencrypted) is not the
# chapter's output: only errors of the kernel process itself reach the build log.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


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

    def allowed(self) -> str:
        kind = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
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
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
        elif kind in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise bad
            value = kind(value)
            if self.default and value:
                elem = type(self.default[0])
                ok = all(isinstance(v, elem) and not (isinstance(v, bool) and elem is not bool) for v in value)
                if elem is float:
                    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                if not ok:
                    raise BookError(f"parameter {self.name}={value!r}: must be a list of {elem.__name__}")
        elif not isinstance(value, kind):
            raise bad
        if self.constraint and not _satisfies(value, self.constraint):
            raise bad
        return value


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
            _satisfies(default, p.constraint)  # the spec must be readable
            text = text[m.end():]
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
        """Hash of the library source and the environment recipe: part of every chapter's cache key."""
        h = hashlib.sha256()
        for p in sorted(LIBRARY.rglob("*.py")):
            h.update(p.relative_to(LIBRARY).as_posix().encode())
            h.update(p.read_bytes())
        for name in ("pyproject.toml",):
            f = self.root / name
            if f.exists():
                h.update(f.read_bytes())
        return h.hexdigest()


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


def _atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def extract_claims(nb) -> list[dict]:
    claims = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            payload = out.get("data", {}).get(MIME_TYPE)
            if payload:
                claims.extend(payload["claims"])
    return claims


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
    failure = None
    try:
        nb = jupytext.read(chapter.path)
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        nb.metadata.setdefault("language_info", {"name": "python"})
        papermill.execute_notebook(nb, str(tmp), parameters=values, kernel_name="python3",
                                   cwd=str(chapter.path.parent), progress_bar=progress, log_output=False,
                                   report_mode=False, extra_arguments=KERNEL_ARGUMENTS)
    except Exception as err:  # a failing chapter never stops the others
        failure = _describe_failure(chapter, err)
    seconds = time.perf_counter() - start
    claims = []
    if tmp.exists():
        nb = nbformat.read(tmp, as_version=4)
        tidy_streams(nb)
        nbformat.write(nb, tmp)
        claims = extract_claims(nb)
        if failure is None and not claims:
            failure = f"chapter {chapter.name} ran but recorded no claim checks (end it with claims.report())"
        os.replace(tmp, out)
    notebook = out if out.exists() else None
    return RunResult(chapter.name, "failed" if failure else "ok", seconds, failure, claims, notebook)


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
            return RunResult(chapter.name, "cached", meta["seconds"], None, meta["claims"], nb_path)
    result = execute(chapter, values, nb_path, progress=progress)
    meta = {"key": key, "status": result.status, "seconds": round(result.seconds, 2), "failure": result.failure,
            "claims": result.claims, "parameters": values}
    _atomic_write(meta_path, json.dumps(meta, indent=1, default=repr))
    return result


# ---------------------------------------------------------------------------------------------------------
# The reproducibility report and the HTML build
# ---------------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_MARKS = {"reproduced": "**reproduced**", "scale": "*not reproduced, expected* (note {id})",
          "inconclusive": "*inconclusive* (note {id})",
          "failed": "**NOT reproduced**"}


def _verdict_kind(verdict: str) -> str:
    return {PASS: "reproduced", SCALE: "scale", INCONCLUSIVE: "inconclusive"}.get(verdict, "failed")


def report_markdown(results: list[RunResult]) -> str:
    """The reproducibility report page (MyST): a summary per chapter, then every claim of every chapter
    (grouped by chapter, linked), with the notes of the claims a chapter declared not expected to reproduce."""
    counts = {"reproduced": 0, "scale": 0, "inconclusive": 0, "failed": 0}
    crashed = 0
    summary = ["| chapter | status | checks | reproduced | expected | inconclusive | failed | seconds |",
               "|---|---|---|---|---|---|---|---|"]
    sections = []
    for r in results:
        kinds = [_verdict_kind(c["verdict"]) for c in r.claims]
        per = {k: kinds.count(k) for k in counts}
        crashed += r.status == "failed" and not per["failed"]  # stopped by something else than a claim
        for k in counts:
            counts[k] += per[k]
        summary.append(f"| {{doc}}`{r.chapter} <book/{r.chapter}>` | {r.status} | {len(r.claims)} | "
                       f"{per['reproduced']} | {per['scale']} | {per['inconclusive']} | {per['failed']} | "
                       f"{r.seconds:.1f} |")
        lines = [f"### {r.chapter}", "", f"Chapter: {{doc}}`book/{r.chapter}`.", ""]
        if r.status == "failed":
            lines += [f"**The chapter failed**: {_md_cell(r.failure)}", ""]
        if r.claims:
            lines += ["| id | claim | measured | predicted | verdict |", "|---|---|---|---|---|"]
            for c in r.claims:
                mark = _MARKS[_verdict_kind(c["verdict"])].format(id=_md_cell(c["id"]))
                lines.append(f"| {_md_cell(c['id'])} | {_md_cell(c['statement'])} | {_md_cell(c['measured'])} | "
                             f"{_md_cell(c['predicted'])} | {mark} |")
            notes = [c for c in r.claims if c.get("scale_note")]
            if notes:
                lines += ["", "Notes on the checks not reproduced as stated (why they are not expected to here, or "
                          "why they cannot be decided):", ""]
                lines += [f"- **{_md_cell(c['id'])}**: {_md_cell(c['scale_note'])}" for c in notes]
            lines.append("")
        sections += lines
    total = sum(counts.values())
    head = [
        "# Reproducibility report", "",
        "Every claim check recorded by the chapters of this build: what was measured, what the theory predicts, "
        "and the verdict. Generated by the build from the executed notebooks; nothing here is typed in by hand.",
        "",
        f"**{total} checks**: {counts['reproduced']} reproduced; {counts['scale']} not reproduced but declared "
        f"expected by their chapter, each with its reason below (mostly the CPU scale: a 135M model instead of "
        f"7B); {counts['inconclusive']} inconclusive (too few cases to decide); {counts['failed']} failed."
        + (f" **{crashed} chapter(s) failed** before recording all their checks (see below)." if crashed else ""),
        "",
        "## Chapters", "",
        "Run time of the last execution of each chapter at its default parameters, on the build machine "
        f"({_machine()}).", "",
    ]
    return "\n".join(head + summary + ["", "## Claims", ""] + sections) + "\n"


def _machine() -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover
        torch_version = "absent"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch_version}")


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return  # keep the mtime, so Sphinx does not re-read an unchanged page
    _atomic_write(path, data)


def stage(project: Project, results: list[RunResult]) -> Path:
    """Lay out the sources Sphinx builds from in _build/src: executed notebooks, pages, config, report."""
    import yaml

    src = project.build / "src"
    (src / "book").mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((project.root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    _write_if_changed(src / "_config.yml", yaml.safe_dump(config, sort_keys=False).encode())
    for name in ("_toc.yml", "references.bib"):
        _write_if_changed(src / name, (project.root / name).read_bytes())
    assets = src / "_assets"
    if not assets.exists() and (project.root / "_assets").exists():
        assets.symlink_to(project.root / "_assets", target_is_directory=True)
    for f in project.toc_files():
        md = project.root / f"{f}.md"
        if md.exists():
            _write_if_changed(src / f"{f}.md", md.read_bytes())
    for r in results:
        if r.notebook and r.notebook.exists():
            _write_if_changed(src / "book" / f"{r.chapter}.ipynb", r.notebook.read_bytes())
    _write_if_changed(src / "reproducibility.md", report_markdown(results).encode())
    return src


def build_html(project: Project, src: Path) -> tuple[int, str]:
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(src), "--path-output", str(project.build.parent),
           "-W", "-n", "--keep-going", "--builder", "html"]
    proc = subprocess.run(cmd, cwd=project.root, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    _atomic_write(project.build / "sphinx.log", log)
    return proc.returncode, log


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
        print(f"{r.status} ({r.seconds:.1f} s{' when it ran' if r.status == 'cached' else ''})", flush=True)
    status = 0
    if html:
        src = stage(project, results)
        code, log = build_html(project, src)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description="Execute and build the book.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("book", help="execute every chapter (cached) and build the HTML")
    b.add_argument("--force", action="store_true", help="re-execute every chapter")
    b.add_argument("--no-html", action="store_true", help="only execute the chapters")
    c = sub.add_parser("chapter", help="run one chapter, optionally with parameter overrides")
    c.add_argument("name")
    c.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter (repeatable), e.g. -p beta=0.1 -p steps=50")
    c.add_argument("--force", action="store_true")
    sub.add_parser("chapters", help="list the chapters and their parameters")
    args = parser.parse_args(argv)
    try:
        project = Project.find()
        if args.command == "book":
            return build(project, force=args.force, html=not args.no_html)
        if args.command == "chapters":
            for ch in project.chapters():
                print(ch.name)
                for p in ch.parameters.values():
                    print(f"    {p.name} = {p.default!r}  ({p.allowed()})  {p.description}")
            return 0
        chapter = project.chapter(args.name)
        overrides = dict(parse_override(t) for t in args.param)
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
