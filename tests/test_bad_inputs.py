"""The command line's bad inputs, as a table: each gives exactly one line on stderr that names what is wrong
(the parameter, the chapter, the option) and exit status 2, before any kernel starts.

The chapter used here is a synthetic one with every kind of parameter, in a throw-away book, so the table does
not depend on the real chapters' specs; a few cases also go through the real `run.py`.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from analysis_lib import runner

ROOT = Path(__file__).resolve().parents[1]

CHAPTER = '''# %% [markdown]
# # Probe

# %% tags=["parameters"]
seed = 0  # [0..1000] random seed
steps = 100  # [1..5000] training steps
beta = 0.1  # [> 0] inverse temperature
alpha = 0.5  # [0..1] mixing weight
lr = 0.01  # [> 0] learning rate
noise = "gaussian"  # [one of: gaussian, laplace] noise law
plot = True  # draw the figures
sizes = [10, 100]  # [1..100000; len 1..8] sample sizes
weights = [0.5, 0.25]  # [0..1; len 2] a pair of weights
names = ["a", "b"]  # [one of: a, b, c] groups

# %%
raise RuntimeError("a bad input must never reach the kernel")
'''


@pytest.fixture(scope="module")
def probe_book(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    (root / "book").mkdir()
    (root / "_config.yml").write_text("title: probe\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/probe\n")
    (root / "book" / "intro.md").write_text("# Probe book\n")
    (root / "book" / "probe.py").write_text(CHAPTER)
    return root


# (arguments, what the one line must contain)
CASES = [
    # the command and its options
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
    (["chapter"], "the following arguments are required: name"),
    (["book", "--bogus"], "unrecognized arguments: --bogus"),
    (["chapters", "extra"], "unrecognized arguments: extra"),
    (["chapter", "probe", "-p"], "argument -p/--param: expected one argument"),
    (["chapter", "prob"], "unknown chapter 'prob'; did you mean probe? allowed: probe"),
    (["chapter", "nothing-like-it"], "unknown chapter 'nothing-like-it'; allowed: probe"),
    # override syntax
    (["chapter", "probe", "-p", "steps"], "override 'steps': write name=value"),
    (["chapter", "probe", "-p", "gamma=1"], "unknown parameter 'gamma' for chapter probe; allowed: seed, steps"),
    (["chapter", "probe", "-p", "beta=0.1", "-p", "beta=0.2"], "parameter beta is given twice"),
    # integers: type, range, the upper bound of size-like parameters
    (["chapter", "probe", "-p", "steps=0"], "parameter steps=0: must be an integer 1..5000"),
    (["chapter", "probe", "-p", "steps=-3"], "parameter steps=-3: must be an integer 1..5000"),
    (["chapter", "probe", "-p", "steps=1000000000"], "parameter steps=1000000000: must be an integer 1..5000"),
    (["chapter", "probe", "-p", "steps=2.5"], "parameter steps=2.5: must be an integer 1..5000"),
    (["chapter", "probe", "-p", "steps=ten"], "parameter steps='ten': must be an integer 1..5000"),
    (["chapter", "probe", "-p", "steps=True"], "parameter steps=True: must be an integer 1..5000"),
    (["chapter", "probe", "-p", "steps=[5]"], "parameter steps=[5]: must be an integer 1..5000"),
    (["chapter", "probe", "-p", "seed=-1"], "parameter seed=-1: must be an integer 0..1000"),
    (["chapter", "probe", "-p", "seed=None"], "parameter seed=None: must be an integer 0..1000"),
    # floats: finite, in range, numbers only
    (["chapter", "probe", "-p", "beta=-1"], "parameter beta=-1: must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=0"], "parameter beta=0: must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=1e999"], "parameter beta=inf: must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=-1e999"], "parameter beta=-inf: must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=nan"], "parameter beta='nan': must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=big"], "parameter beta='big': must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=False"], "parameter beta=False: must be a finite number > 0"),
    (["chapter", "probe", "-p", "beta=1j"], "parameter beta=1j: must be a finite number > 0"),
    (["chapter", "probe", "-p", "alpha=1.5"], "parameter alpha=1.5: must be a finite number 0..1"),
    (["chapter", "probe", "-p", "alpha=-0.1"], "parameter alpha=-0.1: must be a finite number 0..1"),
    (["chapter", "probe", "-p", "lr=None"], "parameter lr=None: must be a finite number > 0"),
    # strings and booleans
    (["chapter", "probe", "-p", "noise=cauchy"], "parameter noise='cauchy': must be a string one of: gaussian"),
    (["chapter", "probe", "-p", "noise=1"], "parameter noise=1: must be a string one of: gaussian, laplace"),
    (["chapter", "probe", "-p", "plot=1"], "parameter plot=1: must be True or False"),
    (["chapter", "probe", "-p", "plot=yes"], "parameter plot='yes': must be True or False"),
    # lists: empty, wrong length, out of range, wrong element type, not a list
    (["chapter", "probe", "-p", "sizes=[]"], "parameter sizes=[]: must be a list of len 1..8, each 1..100000"),
    (["chapter", "probe", "-p", "sizes=[0, -5]"], "parameter sizes=[0, -5]: must be a list 1..100000"),
    (["chapter", "probe", "-p", "sizes=[10, 10**9]"], "parameter sizes='[10, 10**9]': must be a list"),
    (["chapter", "probe", "-p", "sizes=[1, 2, 3, 4, 5, 6, 7, 8, 9]"], "must be a list of len 1..8, each 1..100000"),
    (["chapter", "probe", "-p", "sizes=[1.5]"], "parameter sizes=[1.5]: must be a list of int"),
    (["chapter", "probe", "-p", "sizes=10"], "parameter sizes=10: must be a list"),
    (["chapter", "probe", "-p", "weights=[0.5]"], "parameter weights=[0.5]: must be a list of len 2, each 0..1"),
    (["chapter", "probe", "-p", "weights=[0.5, 0.2, 0.3]"], "must be a list of len 2, each 0..1"),
    (["chapter", "probe", "-p", "weights=[0.5, 2.0]"], "parameter weights=[0.5, 2.0]: must be a list 0..1"),
    (["chapter", "probe", "-p", "weights=[0.5, 1e999]"], "parameter weights=[0.5, inf]: must be a list of float"),
    (["chapter", "probe", "-p", "names=[a]"], "parameter names='[a]': must be a list"),
    (["chapter", "probe", "-p", "names=['d']"], "parameter names=['d']: must be a list one of: a, b, c"),
    (["chapter", "probe", "-p", "names=[]"], "parameter names=[]: must be a list of len >= 1, each one of: a, b, c"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a) or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_naming_it_with_exit_status_2(probe_book, monkeypatch, capsys, args, message):
    monkeypatch.chdir(probe_book)
    with pytest.raises(SystemExit) as stop:  # argparse's own errors exit; ours return
        raise SystemExit(runner.main(args))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("run.py: "), err
    assert message in err, err


def test_the_table_covers_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown command 'frobnicate'; allowed: setup, test, book, chapter, chapters, benchmarks"),
    (["chapter", "chen_01_ipo_optimum_sampler", "-p", "seed=-1"], "parameter seed=-1: must be an integer"),
    (["chapter", "chen_01_ipo_optimum_sampler", "-p", "sample_sizes=[]"], "parameter sample_sizes=[]: must be"),
])
def test_run_py_itself_gives_the_same_one_line_errors(args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
