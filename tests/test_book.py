"""The runner: parameters cells, overrides, errors, cached execution, failure reporting, the HTML build."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis_lib.book import (
    BookError,
    Chapter,
    Project,
    build,
    parse_override,
    parse_parameters,
    report_markdown,
    resolve_parameters,
    run_chapter,
)

ROOT = Path(__file__).resolve().parents[1]

PARAMS = '''# %% [markdown]
# # T

# %% tags=["parameters"]
seed = 0  # [>= 0] random seed
steps = 100  # [>= 1] SGD steps {smoke: 5}
beta = 0.01  # [> 0] inverse temperature
alpha = 0.5  # [0..1] mixing
noise = "gaussian"  # [one of: gaussian, laplace] noise
flags = [1, 2]  # behaviours {smoke: [1]}
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
    assert list(params) == ["seed", "steps", "beta", "alpha", "noise", "flags", "plot"]
    assert params["steps"].default == 100 and params["steps"].constraint == ">= 1"
    assert params["steps"].smoke == 5 and params["flags"].smoke == [1]
    assert params["beta"].description == "inverse temperature"
    assert not params["seed"].has_smoke


@pytest.mark.parametrize("override, message", [
    ({"beta": -1}, "parameter beta=-1: must be a number > 0"),
    ({"steps": 0}, "parameter steps=0: must be an integer >= 1"),
    ({"steps": 1.5}, "parameter steps=1.5: must be an integer >= 1"),
    ({"alpha": 2.0}, "parameter alpha=2.0: must be a number 0..1"),
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


def test_broken_parameter_cells_are_rejected():
    with pytest.raises(BookError, match="no cell tagged 'parameters'"):
        parse_parameters("# %%\nx = 1\n")
    with pytest.raises(BookError, match="default of parameter steps=0"):
        parse_parameters('# %% tags=["parameters"]\nsteps = 0  # [>= 1] steps\n')
    with pytest.raises(BookError, match="literal default"):
        parse_parameters('# %% tags=["parameters"]\nsteps = f(1)\n')


def test_every_real_chapter_has_a_valid_parameters_cell_with_a_seed():
    chapters = Project(ROOT).chapters()
    assert chapters, "the book has no chapters"
    for ch in chapters:
        params = ch.parameters
        assert "seed" in params, f"{ch.name} has no seed parameter"


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "analysis_lib.book", *args], cwd=cwd, capture_output=True,
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
    assert proc.stderr.strip() == "run.py: parameter seed=-1: must be an integer >= 0"


# ---------------------------------------------------------------------------------------------------------
# A tiny book, executed and built end to end
# ---------------------------------------------------------------------------------------------------------

GOOD = '''# %% [markdown]
# # Good chapter
#
# Three halves of steps: {glue:text}`answer:.2f`.

# %% tags=["parameters"]
seed = 0  # [>= 0] seed
steps = 3  # [>= 1] steps

# %%
from analysis_lib.claims import Claims
from myst_nb import glue
claims = Claims("good")
glue("answer", steps * 1.5, display=False)
claims.check_at_least("G1", "steps are positive", steps, 1)
claims.check_at_least("G2", "needs a big model", 0, 1, scale_note="tiny scale")
claims.report()
'''

CRASH = '''# %% [markdown]
# # Crashing chapter

# %% tags=["parameters"]
seed = 0  # [>= 0] seed

# %%
x = 1

# %%
raise RuntimeError("boom on purpose")
'''

WRONG = '''# %% [markdown]
# # Chapter whose claim fails

# %% tags=["parameters"]
seed = 0  # [>= 0] seed

# %%
from analysis_lib.claims import Claims
claims = Claims("wrong")
claims.check_close("W1", "two is three", 2.0, 3.0, rtol=0.01)
claims.report()
'''


@pytest.fixture
def tiny_book(tmp_path, monkeypatch):
    monkeypatch.delenv("ANALYSIS_LIB_SMOKE", raising=False)
    root = tmp_path / "tiny"
    (root / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", root)
    (root / "references.bib").write_text((ROOT / "references.bib").read_text())
    if (ROOT / "_assets").exists():
        (root / "_assets").symlink_to(ROOT / "_assets")
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
    assert meta["status"] == "ok" and [c["id"] for c in meta["claims"]] == ["G1", "G2"]
    html = tiny_book.build / "html"
    assert (html / "book" / "good.html").exists()
    assert "4.50" in (html / "book" / "good.html").read_text()  # the glued number made it into the prose
    report = (tiny_book.build / "src" / "reproducibility.md").read_text()
    assert "| G1 | steps are positive | 3 | >= 1 | **reproduced** |" in report
    assert "| G2 | needs a big model | 0 | >= 1 | *not reproduced, expected* (note G2) |" in report
    assert "- **G2**: tiny scale" in report
    assert "| W1 | two is three | 2 | 3 | **NOT reproduced** |" in report
    assert "| {doc}`crash <book/crash>` | failed | 0 | 0 | 0 | 0 | 0 |" in report
    assert "**3 checks**: 1 reproduced; 1 not reproduced but declared expected" in report
    assert "0 inconclusive (too few cases to decide); 1 failed. **1 chapter(s) failed** before recording" in report
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
    from analysis_lib.book import RunResult

    md = report_markdown([RunResult("x", "failed", failure="chapter x failed in cell 3")])
    assert "{doc}`book/x`" in md and "chapter x failed in cell 3" in md
    assert "**1 chapter(s) failed** before recording" in md  # never an all-clear "0 checks, 0 failed"


def test_progress_bars_are_stored_as_their_final_state():
    import nbformat

    from analysis_lib.book import tidy_streams

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


def test_report_counts_each_kind_of_verdict_and_shows_the_notes():
    from analysis_lib.book import RunResult
    from analysis_lib.claims import Claims

    c = Claims("ch")
    c.check_at_least("A", "holds", 1, 0)
    c.check_at_least("B", "needs 7B", 0, 1, scale_note="a 135M model")
    c.check_fraction("C", "first to 90%", 1, 1, 0.8, min_cases=5)
    md = report_markdown([RunResult("ch", "ok", 1.0, None, c.payload()["claims"])])
    assert "**3 checks**: 1 reproduced; 1 not reproduced but declared expected" in md
    assert "1 inconclusive (too few cases to decide); 0 failed." in md
    assert "| {doc}`ch <book/ch>` | ok | 3 | 1 | 1 | 1 | 0 | 1.0 |" in md
    assert "| C | first to 90% | 1/1: too few cases | >= 80% | *inconclusive* (note C) |" in md
    assert "- **B**: a 135M model" in md and "- **C**: only 1 case(s); at least 5 are needed" in md
