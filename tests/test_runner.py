"""The runner: parameters cells, overrides, errors, cached execution, failure reporting, the HTML build."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis_lib.runner import (
    BookError,
    Chapter,
    Project,
    build,
    build_html,
    parse_override,
    parse_overrides,
    parse_parameters,
    report_markdown,
    resolve_parameters,
    run_chapter,
)

ROOT = Path(__file__).resolve().parents[1]

PARAMS = '''# %% [markdown]
# # T

# %% tags=["parameters"]
seed = 0  # [0..1000] random seed
steps = 100  # [1..5000] SGD steps {smoke: 5}
beta = 0.01  # [> 0] inverse temperature
alpha = 0.5  # [0..1] mixing
noise = "gaussian"  # [one of: gaussian, laplace] noise
flags = [1, 2]  # [0..9] behaviours {smoke: [1]}
pair = [0.5, 0.25]  # [0..1; len 2] a pair of weights
plot = True  # draw figures

# %%
x = 1
'''


def chapter_from(tmp_path, text, name="t"):
    p = tmp_path / f"{name}.py"
    p.write_text(text)
    return Chapter(name, p)


def test_parameters_cell_is_parsed_with_types_constraints_and_smoke_values():
    params = parse_parameters(PARAMS)
    assert list(params) == ["seed", "steps", "beta", "alpha", "noise", "flags", "pair", "plot"]
    assert params["steps"].default == 100 and params["steps"].constraint == "1..5000"
    assert params["pair"].value_spec == "0..1" and params["pair"].length_spec == "len 2"
    assert params["steps"].smoke == 5 and params["flags"].smoke == [1]
    assert params["beta"].description == "inverse temperature"
    assert not params["seed"].has_smoke


@pytest.mark.parametrize("override, message", [
    ({"beta": -1}, "parameter beta=-1: must be a finite number > 0"),
    ({"beta": float("inf")}, "parameter beta=inf: must be a finite number > 0"),
    ({"beta": float("nan")}, "parameter beta=nan: must be a finite number > 0"),
    ({"steps": 0}, "parameter steps=0: must be an integer 1..5000"),
    ({"steps": 1000000000}, "parameter steps=1000000000: must be an integer 1..5000"),
    ({"steps": 1.5}, "parameter steps=1.5: must be an integer 1..5000"),
    ({"alpha": 2.0}, "parameter alpha=2.0: must be a finite number 0..1"),
    ({"flags": []}, "parameter flags=[]: must be a list of len >= 1, each 0..9"),
    ({"flags": [0, -5]}, "parameter flags=[0, -5]: must be a list 0..9"),
    ({"pair": [0.5]}, "parameter pair=[0.5]: must be a list of len 2, each 0..1"),
    ({"pair": [0.5, float("inf")]}, "parameter pair=[0.5, inf]: must be a list of float"),
    ({"noise": "cauchy"}, "parameter noise='cauchy': must be a string one of: gaussian, laplace"),
    ({"plot": 1}, "parameter plot=1: must be True or False"),
    ({"flags": ["a"]}, "must be a list of int"),
    ({"gamma": 1}, "unknown parameter 'gamma' for chapter t; allowed: seed, steps, beta"),
])
def test_bad_overrides_give_one_line_errors_naming_the_parameter(tmp_path, override, message):
    ch = chapter_from(tmp_path, PARAMS)
    with pytest.raises(BookError) as err:
        resolve_parameters(ch, override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_overrides_are_converted(tmp_path):
    ch = chapter_from(tmp_path, PARAMS)
    values = resolve_parameters(ch, {"beta": 1, "steps": 7, "noise": "laplace", "flags": [3]})
    assert values["beta"] == 1.0 and isinstance(values["beta"], float)
    assert values["steps"] == 7 and values["flags"] == [3] and values["seed"] == 0


def test_override_syntax():
    assert parse_override("beta=0.1") == ("beta", 0.1)
    assert parse_override("noise=laplace") == ("noise", "laplace")
    assert parse_override("plot=false") == ("plot", False)
    assert parse_override("flags=[1, 2]") == ("flags", [1, 2])
    with pytest.raises(BookError, match="name=value"):
        parse_override("beta")
    assert parse_override("beta=1e999") == ("beta", float("inf"))  # refused by the parameter's check
    assert parse_overrides(["beta=0.1", "steps=3"]) == {"beta": 0.1, "steps": 3}
    with pytest.raises(BookError, match=r"^parameter beta is given twice \(beta=0.1 and 'beta=0.2'\); give it once$"):
        parse_overrides(["beta=0.1", "beta=0.2"])


def test_broken_parameter_cells_are_rejected():
    with pytest.raises(BookError, match="no cell tagged 'parameters'"):
        parse_parameters("# %%\nx = 1\n")
    with pytest.raises(BookError, match="default of parameter steps=0"):
        parse_parameters('# %% tags=["parameters"]\nsteps = 0  # [1..9] steps\n')
    with pytest.raises(BookError, match=r"parameter steps is an integer without an upper bound; write its range"):
        parse_parameters('# %% tags=["parameters"]\nsteps = 3  # [>= 1] steps\n')
    with pytest.raises(BookError, match=r"parameter sizes is an integer without an upper bound"):
        parse_parameters('# %% tags=["parameters"]\nsizes = [3, 4]  # [>= 1] sizes\n')
    with pytest.raises(BookError, match=r"parameter beta is not a list but its constraint says 'len 2'"):
        parse_parameters('# %% tags=["parameters"]\nbeta = 0.1  # [> 0; len 2] beta\n')
    with pytest.raises(BookError, match="literal default"):
        parse_parameters('# %% tags=["parameters"]\nsteps = f(1)\n')


def test_every_real_chapter_has_a_valid_parameters_cell_with_a_seed():
    chapters = Project(ROOT).chapters()
    assert chapters, "the book has no chapters"
    for ch in chapters:
        params = ch.parameters
        assert "seed" in params, f"{ch.name} has no seed parameter"


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "analysis_lib.runner", *args], cwd=cwd, capture_output=True,
                          text=True)


def test_cli_unknown_chapter_suggests_close_names():
    proc = run_cli("chapter", "imli_01_logistic_regresion")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown chapter 'imli_01_logistic_regresion'; did you mean imli_01_logistic_regression" in proc.stderr
    assert "allowed: imli_00_data_and_model, imli_01_logistic_regression," in proc.stderr


def test_cli_bad_override_is_one_line_before_any_execution():
    proc = run_cli("chapter", "imli_01_logistic_regression", "-p", "seed=-1")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("run.py: parameter seed=-1: must be an integer ")


# ---------------------------------------------------------------------------------------------------------
# A tiny book, executed and built end to end
# ---------------------------------------------------------------------------------------------------------

GOOD = '''# %% [markdown]
# # Good chapter
#
# Three halves of steps: {glue:text}`answer:.2f`.

# %% tags=["parameters"]
seed = 0  # [0..100] seed
steps = 3  # [1..100] steps

# %%
from analysis_lib.page import start_page
from myst_nb import glue
import sys
page = start_page("good", seed)
claims = page.claims
claims.declare("G2", "scale", "tiny scale")
glue("answer", steps * 1.5, display=False)
print("progress " + "residue", file=sys.stderr)
claims.check_at_least("G1", "steps are positive", steps, 1, kind="identity")
claims.check_at_least("G2", "needs a big model", 0, 1, kind="claim")
claims.check_at_least("G3", "a statement that fails here", 0, 1, kind="claim")
page.report()
page.footer()
'''

CRASH = '''# %% [markdown]
# # Crashing chapter

# %% tags=["parameters"]
seed = 0  # [0..100] seed

# %%
x = 1

# %%
raise RuntimeError("boom on purpose")
'''

WRONG = '''# %% [markdown]
# # Chapter whose claim fails

# %% tags=["parameters"]
seed = 0  # [0..100] seed

# %%
from analysis_lib.claims import Claims
claims = Claims("wrong")
claims.check_close("W1", "two is three", 2.0, 3.0, rtol=0.01, kind="identity")
claims.report()
'''


@pytest.fixture
def tiny_book(tmp_path, monkeypatch):
    monkeypatch.delenv("ANALYSIS_LIB_SMOKE", raising=False)
    root = tmp_path / "tiny"
    (root / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", root)
    (root / "references.bib").write_text((ROOT / "references.bib").read_text())
    for folder in ("_assets", "_ext", "_static"):  # MathJax, the bibliography-label extension, the stylesheet
        if (ROOT / folder).exists():
            (root / folder).symlink_to(ROOT / folder)
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nparts:\n  - caption: T\n    chapters:\n"
        "      - file: book/good\n      - file: book/crash\n      - file: book/wrong\n"
        "  - caption: R\n    chapters:\n      - file: reproducibility\n")
    (root / "book" / "intro.md").write_text("# Tiny\n\nA tiny book.\n")
    for name, text in [("good", GOOD), ("crash", CRASH), ("wrong", WRONG)]:
        (root / "book" / f"{name}.py").write_text(text)
    return Project(root)


@pytest.mark.slow
def test_tiny_book_failures_are_named_others_kept_and_reruns_cached(tiny_book, capsys):
    status = build(tiny_book)
    out = capsys.readouterr()
    assert status == 1
    assert "chapter crash failed in cell" in out.err and "RuntimeError: boom on purpose" in out.err
    assert "'raise RuntimeError" in out.err
    assert "chapter wrong failed in cell" in out.err and "ClaimCheckFailed" in out.err and "W1" in out.err
    executed = tiny_book.build / "executed"
    meta = json.loads((executed / "good.json").read_text())
    assert meta["status"] == "ok" and [c["id"] for c in meta["claims"]] == ["G1", "G2", "G3"]
    assert meta["run"]["feature dtype"] in {"float32", "bfloat16"} and meta["run"]["cpu capability"]
    html = tiny_book.build / "html"
    page = (html / "book" / "good.html").read_text()
    assert "4.50" in page  # the glued number made it into the prose
    assert "progress residue" not in page  # stderr never reaches a page
    assert "Rerun this chapter with other parameters" in page and "good.py" in page
    assert (html / "_downloads").exists() and list((html / "_downloads").rglob("good.py"))
    assert "toggle" in page  # code folded behind a toggle
    assert "Executed in" in page and "features in" in page  # the footer
    report = (tiny_book.build / "src" / "reproducibility.md").read_text()
    assert ("| G1 | identity | steps are positive | 3 | &gt;= 1 | <span class=\"verdict v-held\">verified</span> |"
            in report)
    assert ("| G2 | claim | needs a big model | 0 | &gt;= 1 | <span class=\"verdict v-declared\">not reproduced: "
            "declared difference (scale)</span> |") in report
    assert "| G3 | claim | a statement that fails here | 0 | &gt;= 1 | <span class=\"verdict v-finding\">" in report
    assert "- **G2**: declared difference (scale): tiny scale" in report
    assert "| W1 | identity | two is three | 2 | 3 | <span class=\"verdict v-failed\">FAILED</span> |" in report
    assert "| {doc}`book/crash` | failed |" in report
    assert ("**2 claims: 0 reproduced; 1 finding; not reproduced with a declared difference: 1 scale. 1 identity "
            "verified, 0 regressions matched; 1 FAILED.** **1 chapter(s) failed**") in report
    exceptions = report[report.index("## Exceptions"):report.index("## Chapters")]
    assert "G2" in exceptions and "G3" in exceptions and "W1" in exceptions and "G1" not in exceptions
    # nothing changed: the good chapter is served from the cache, the failed ones are retried
    good = Chapter("good", tiny_book.root / "book" / "good.py")
    assert run_chapter(tiny_book, good).status == "cached"
    # a change of parameters (an override) runs it again, into its own folder, and leaves the book's cache
    r = run_chapter(tiny_book, good, {"steps": 4})
    assert r.status == "ok" and r.notebook.parent.parent.name == "good"
    assert run_chapter(tiny_book, good).status == "cached"
    # a change of source re-executes
    good.path.write_text(GOOD.replace("steps * 1.5", "steps * 2.5"))
    assert run_chapter(tiny_book, good).status == "ok"


def test_report_lists_failed_chapters_without_claims():
    from analysis_lib.runner import RunResult

    md = report_markdown([RunResult("x", "failed", failure="chapter x failed in cell 3")])
    assert "{doc}`book/x`" in md and "chapter x failed in cell 3" in md
    assert "**1 chapter(s) failed** before recording" in md  # never an all-clear "0 checks, 0 failed"


def test_progress_bars_are_stored_as_their_final_state():
    import nbformat

    from analysis_lib.runner import tidy_streams

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rbar:   0%| 0/8"),
                    nbformat.v4.new_output("stream", name="stderr", text="\rbar: 100%| 8/8"),
                    nbformat.v4.new_output("stream", name="stderr", text="\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="done\n")]
    cleared = nbformat.v4.new_code_cell("y")  # a bar with leave=False leaves only blanks
    cleared.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\rbar: 1/2\r" + " " * 20 + "\r")]
    nb.cells += [cell, cleared]
    tidy_streams(nb)
    assert nb.cells[1].outputs == []
    assert [(o["name"], o["text"]) for o in nb.cells[0].outputs] == [("stderr", "bar: 100%| 8/8\n"),
                                                                     ("stdout", "done\n")]


def test_pages_fold_code_drop_stderr_and_the_injected_parameters_and_say_how_to_rerun():
    import nbformat

    from analysis_lib.runner import prepare_page

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("steps = 3", metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell("steps = 4", metadata={"tags": ["injected-parameters"]})
    work = nbformat.v4.new_code_cell("x = 1")
    work.outputs = [nbformat.v4.new_output("stream", name="stderr", text="50%|###\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="result\n")]
    shown = nbformat.v4.new_code_cell("api_call()", metadata={"tags": ["show-input"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# T"), params, injected, work, shown]
    again = prepare_page(copy.deepcopy(nb), "ch")
    page = prepare_page(nb, "ch")
    assert [c.source for c in page.cells][:3] == ["# T", "steps = 3", page.cells[2].source]
    assert page.cells[2].id == again.cells[2].id  # a staged page is the same bytes each time (Sphinx: unchanged)
    assert "python3 run.py chapter ch -p seed=1" in page.cells[2].source and "ch.py" in page.cells[2].source
    assert "steps = 4" not in [c.source for c in page.cells]
    assert page.cells[1].metadata["tags"] == ["parameters"]
    assert "hide-input" in page.cells[3].metadata["tags"] and "hide-input" not in page.cells[4].metadata["tags"]
    assert [o["text"] for o in page.cells[3].outputs] == ["result\n"]


def test_stale_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    import os

    from analysis_lib.runner import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".ch.ipynb.{dead}.tmp.ipynb", tmp_path / f".ch.json.{dead}.tmp"]
    live = tmp_path / f".ch.ipynb.{os.getpid()}.tmp.ipynb"
    other = tmp_path / "ch.ipynb"
    for f in [*stale, live, other]:
        f.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert live.exists() and other.exists() and not any(f.exists() for f in stale)


def test_report_counts_each_kind_and_lists_the_exceptions_first():
    from analysis_lib.claims import Claims
    from analysis_lib.runner import RunResult

    c = Claims("ch")
    c.declare("B", "data", "a substitute data set")
    c.check_at_least("A", "holds", 1, 0, kind="claim")
    c.check_at_least("B", "needs the real data", 0, 1, kind="claim")
    c.check_fraction("C", "first to 90%", 1, 1, 0.8, min_cases=5, kind="claim")
    c.check_at_least("D", "does not hold here", 0, 1, kind="claim")
    c.check_at_least("E", "rank one", 1, 1, kind="identity")
    c.check_at_least("F", "recorded value", 1, 1, kind="regression")
    run = {"machine": "Linux x86_64, 2 cores", "cpu capability": "AVX2", "native bf16": False,
           "feature dtype": "float32", "commit": "abc", "date": "2026-12-06 10:00 UTC"}
    md = report_markdown([RunResult("ch", "ok", 1.0, None, c.payload()["claims"], run=run)])
    assert ("**4 claims: 1 reproduced; 1 finding; not reproduced with a declared difference: 1 data; "
            "1 inconclusive. 1 identity verified, 1 regression matched.**") in md
    assert ("| chapter | status | claims reproduced | findings | declared: data | inconclusive | identities | "
            "regressions | seconds |") in md
    assert "| {doc}`book/ch` | ok | 1 | 1 | 1 | 1 | 1 | 1 | 1 |" in md
    exceptions = md[md.index("## Exceptions"):md.index("## Chapters")]
    assert all(f"| {x}: " in exceptions for x in "BCD") and "| A: " not in exceptions
    assert "only 1 case(s); at least 5 are needed" in exceptions
    assert "Linux x86_64, 2 cores, AVX2 (no native bf16), features float32, commit abc" in md


def test_key_results_use_each_chapters_key_figure_as_a_thumbnail(tmp_path):
    import base64
    import io

    import nbformat
    from PIL import Image

    from analysis_lib.runner import RunResult, glued_png, key_figure, key_results_markdown, thumbnail

    source = ("# %% [markdown]\n# # T\n#\n# :::{admonition} Key result\n# :class: tip\n# Text.\n#\n"
              "# ```{glue:figure} fig_main\n# :name: f\n#\n# Caption.\n# ```\n# :::\n")
    assert key_figure(source) == "fig_main" and key_figure("# # T\n") is None
    buf = io.BytesIO()
    Image.new("RGB", (600, 300), "white").save(buf, format="PNG")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("glue")
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={"application/papermill.record/image/png": base64.b64encode(buf.getvalue()).decode()},
        metadata={"scrapbook": {"name": "fig_main", "mime_prefix": "application/papermill.record/"}})]
    nb.cells = [cell]
    png = glued_png(nb, "fig_main")
    assert png == buf.getvalue() and glued_png(nb, "other") is None
    assert Image.open(io.BytesIO(thumbnail(png))).size == (120, 60)
    root = tmp_path / "b"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text("title: t\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/ch\n")
    (root / "book" / "ch.py").write_text(source + '\n# %% tags=["parameters"]\nseed = 0  # [0..9] seed\n')
    executed = tmp_path / "ch.ipynb"
    nbformat.write(nb, executed)
    from analysis_lib.claims import Claims

    c = Claims("ch")
    c.check_at_least("A", "s", 0, 1, kind="claim")
    c.check_at_least("B", "s", 1, 0, kind="identity")
    md = key_results_markdown(Project(root), [RunResult("ch", "ok", 1.0, None, c.payload()["claims"], executed)],
                              tmp_path / "src")
    assert "| {doc}`ch` | 0 reproduced, <span class=\"verdict v-finding\">1 finding</span>; 1 identity, " in md
    assert '<img class="thumbnail" src="../_static/generated/ch.png" width="120"' in md
    assert (tmp_path / "src" / "_static" / "generated" / "ch.png").exists()
    assert (tmp_path / "src" / "_static" / "generated" / "summary.png").exists()


def test_html_is_rebuilt_only_when_its_sources_change_or_when_forced(tmp_path, monkeypatch):
    from analysis_lib import runner

    project = Project(tmp_path / "root", build_dir=tmp_path / "_build")
    src = tmp_path / "_build" / "src"
    (src / "book").mkdir(parents=True)
    (src / "book" / "a.ipynb").write_text("{}")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "tex.js").write_text("v1")
    (src / "_assets").symlink_to(tmp_path / "assets", target_is_directory=True)  # as stage() links them
    calls = []

    def fake_jupyter_book(cmd, **kwargs):
        calls.append(cmd)
        (tmp_path / "_build" / "html").mkdir(parents=True, exist_ok=True)
        (tmp_path / "_build" / "html" / "index.html").write_text("<html/>")
        return subprocess.CompletedProcess(cmd, fail.pop() if fail else 0, "log", "")

    fail = []
    monkeypatch.setattr(runner.subprocess, "run", fake_jupyter_book)
    assert build_html(project, src)[0] == 0 and len(calls) == 1
    assert build_html(project, src) == (0, "the HTML was built from these sources already; kept") and len(calls) == 1
    (src / "book" / "a.ipynb").write_text('{"changed": 1}')
    assert build_html(project, src)[0] == 0 and len(calls) == 2
    assert build_html(project, src, force=True)[0] == 0 and len(calls) == 3
    (src / "book" / "b.md").write_text("# new page")
    fail.append(1)  # a failed build leaves no stamp: the next call builds again
    assert build_html(project, src)[0] == 1 and len(calls) == 4
    assert build_html(project, src)[0] == 0 and len(calls) == 5
    assert build_html(project, src)[0] == 0 and len(calls) == 5
    (tmp_path / "assets" / "tex.js").write_text("version 2")  # behind the link
    assert build_html(project, src)[0] == 0 and len(calls) == 6
