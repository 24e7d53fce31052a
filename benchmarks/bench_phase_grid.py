#!/usr/bin/env python3
"""Benchmark: a high-resolution MRS-IPO phase diagram, 32 x 32 (alpha, beta*lambda) over 5,042 matrices x 3,000
iterations (issue 14: at most 2 minutes on 2 cores), with early stopping.

The workload is the paper's experiment size (Chen, He, Jordan & Yao 2026, Section 5: 118 cyclic + 4,924 strongly
transitive 4 x 4 matrices, 3,000 iterations; here random cyclic and random Bradley-Terry matrices of the same kinds,
as in ``bench_dynamics.py``) on a 32 x 32 grid: alpha = 0, 1/31, ..., 1 (the collapsing alpha = 1 column included)
times beta*lambda log-spaced from 0.1 to 64 (lam = 1), cycle strength over the last 1,000 iterates, uniform
references and start: 5,163,008 trajectories, 64 times the 16 settings of ``bench_dynamics.py``. One call:

    run_mrs_ipo(P[:, None, None], alphas[:, None], gains[None, :], 1.0, 3000, tail=1000, early_stop=True)

It is timed ``--repeats`` times (wall and CPU seconds, the load average before and after each); the figure is the
median wall time, against the goal of 120 s. Reported with it: the fraction of the 15.5e9 trajectory-steps of a
full run that early stopping saved, and the phases (oscillating: cycle strength > 1e-8; collapsed: terminal
entropy < 1e-6; else converged).

Verification: on ``--verify-matrices`` matrices (a seeded random quarter of them cyclic) the full run
(``early_stop=False``) is computed too and compared with the early-stopped one: the phases must agree exactly and
every returned value (final log pi, cycle strength, tail mean / min / max, entropy) within 1e-9. The full run's
time on those matrices, scaled to the whole grid, is the (EXTRAPOLATED, labelled) cost without early stopping.

The summary is printed and written as JSON (default ``_build/benchmarks/bench_phase_grid.json``, never committed).
Other processes on the same cores slow every number down: the load averages say how busy the machine was.

    .venv/bin/python benchmarks/bench_phase_grid.py                                 # the issue's size, 3 runs
    .venv/bin/python benchmarks/bench_phase_grid.py --sst 300 --repeats 1 --verify-matrices 16   # a quick check
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_dynamics next to this file

from bench_dynamics import paper_sized_matrices  # noqa: E402

from analysis_lib.benchmarking import Measure, cpu_model, folder, record  # noqa: E402
from analysis_lib.dynamics import run_mrs_ipo  # noqa: E402

GOAL_S = 120.0
TOLERANCE = 1e-9
VALUES = ("log_policy", "cycle_strength", "tail_mean", "tail_min", "tail_max", "entropy")


def phases(run) -> dict:
    """How many trajectories oscillate, collapse (and do not oscillate) or converge otherwise."""
    osc, col = run.oscillating, run.collapsed & ~run.oscillating
    return {"oscillating": int(osc.sum()), "collapsed": int(col.sum()), "converged": int((~osc & ~col).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cyclic", type=int, default=118, help="number of cyclic matrices (paper: 118)")
    ap.add_argument("--sst", type=int, default=4924, help="number of SST matrices (paper: 4,924)")
    ap.add_argument("--steps", type=int, default=3000, help="iterations (paper: 3,000)")
    ap.add_argument("--tail", type=int, default=1000, help="cycle-strength window")
    ap.add_argument("--alpha-points", type=int, default=32)
    ap.add_argument("--gain-points", type=int, default=32)
    ap.add_argument("--gain-min", type=float, default=0.1)
    ap.add_argument("--gain-max", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (the figure is their median)")
    ap.add_argument("--verify-matrices", type=int, default=128,
                    help="matrices on which the full run is compared with the early-stopped one (0: none)")
    ap.add_argument("--threads", type=int, default=None, help="threads of the run (default: CPU count, at most 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(folder() / "phase_grid.json"),
                    help="write the summary to this JSON file ('' for none)")
    args = ap.parse_args(argv)
    if min(args.repeats, args.alpha_points, args.gain_points, args.steps, args.tail) < 1 or args.verify_matrices < 0:
        ap.error("--repeats, --alpha-points, --gain-points, --steps, --tail must be >= 1, --verify-matrices >= 0")

    P = paper_sized_matrices(args.cyclic, args.sst, args.seed)
    alphas = np.linspace(0.0, 1.0, args.alpha_points)
    gains = np.geomspace(args.gain_min, args.gain_max, args.gain_points)
    n_traj = P.shape[0] * alphas.size * gains.size

    def grid(P_sub, early_stop):
        return run_mrs_ipo(P_sub[:, None, None], alphas[:, None], gains[None, :], 1.0, args.steps, tail=args.tail,
                           threads=args.threads, early_stop=early_stop)

    print(f"{P.shape[0]} matrices ({args.cyclic} cyclic) x {alphas.size} alpha x {gains.size} beta*lambda = "
          f"{n_traj:,} trajectories x {args.steps} steps; {cpu_model()}, {os.cpu_count()} logical CPUs, "
          f"threads {args.threads or 'default'}, numpy {np.__version__}")
    runs = []
    for i in range(args.repeats):
        gc.collect()
        load_before = os.getloadavg()
        wall, cpu = time.perf_counter(), time.process_time()
        run = grid(P, early_stop=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "load_before (1, 5, 15 min)": [round(x, 2) for x in load_before],
                     "load_after (1, 5, 15 min)": [round(x, 2) for x in os.getloadavg()]})
        print(f"run {i + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s, load average before {load_before[0]:.2f}, "
              f"after {os.getloadavg()[0]:.2f}")
        if i < args.repeats - 1:
            del run
    steps_run = run.steps_run
    fraction_run = float(steps_run.sum()) / (n_traj * args.steps)
    median_wall = statistics.median(r["wall_s"] for r in runs)
    passed = median_wall <= GOAL_S

    verification = None
    if args.verify_matrices:
        rng = np.random.default_rng(args.seed + 1)
        n_cyc = min(args.cyclic, args.verify_matrices // 4)
        n_sst = min(args.sst, args.verify_matrices - n_cyc)
        chosen = np.sort(np.concatenate([rng.choice(args.cyclic, n_cyc, replace=False),
                                         args.cyclic + rng.choice(args.sst, n_sst, replace=False)]))
        wall, cpu = time.perf_counter(), time.process_time()
        full = grid(P[chosen], early_stop=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        diffs = {name: float(np.abs(getattr(full, name) - getattr(run, name)[chosen]).max()) for name in VALUES}
        agree = {name: bool(np.array_equal(getattr(full, name), getattr(run, name)[chosen]))
                 for name in ("oscillating", "collapsed")}
        scale = P.shape[0] / chosen.size
        verification = {
            "matrices": int(chosen.size), "cyclic": int(n_cyc), "trajectories": int(full.steps_run.size),
            "phases_full_run": phases(full), "phases_agree": agree, "max_abs_diff": diffs, "tolerance": TOLERANCE,
            "ok": all(agree.values()) and max(diffs.values()) <= TOLERANCE,
            "full_run_wall_s": round(wall, 2), "full_run_cpu_s": round(cpu, 2),
            "full_grid_wall_s (EXTRAPOLATED from these matrices)": round(wall * scale, 1),
            "full_grid_cpu_s (EXTRAPOLATED from these matrices)": round(cpu * scale, 1),
        }

    summary = {
        "figure": "median wall time of the 32 x 32 (alpha, beta*lambda) phase grid with early stopping",
        "goal": f"median wall <= {GOAL_S:g} s on 2 cores", "status": "PASS" if passed else "FAIL",
        "median_wall_s": median_wall, "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "runs": runs,
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads or "default",
                    "python": platform.python_version(), "numpy": np.__version__},
        "workload": {"matrices": int(P.shape[0]), "cyclic": args.cyclic, "sst": args.sst,
                     "alphas": f"linspace(0, 1, {alphas.size})",
                     "gains (beta*lambda, lam = 1)": f"geomspace({args.gain_min:g}, {args.gain_max:g}, {gains.size})",
                     "trajectories": n_traj, "steps": args.steps, "tail": args.tail},
        "trajectory_steps_full_run": n_traj * args.steps, "trajectory_steps_run": int(steps_run.sum()),
        "fraction_of_steps_run": round(fraction_run, 4), "fraction_of_steps_saved": round(1 - fraction_run, 4),
        "trajectories_run_to_the_end": int((steps_run == args.steps).sum()),
        "median_steps_run": float(np.median(steps_run)), "phases": phases(run), "verification": verification,
    }
    print(f"{'trajectory-steps run':45s} {summary['trajectory_steps_run']:,} of {n_traj * args.steps:,} "
          f"({fraction_run:.1%}; saved {1 - fraction_run:.1%})")
    print(f"{'phases':45s} {summary['phases']}")
    if verification:
        print(f"{'verification on':45s} {verification['matrices']} matrices ({verification['cyclic']} cyclic), "
              f"{verification['trajectories']:,} trajectories")
        print(f"{'  phases agree with the full run':45s} {agree}")
        print(f"{'  max |early stop - full run|':45s} " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        print(f"{'  full run on them':45s} wall {verification['full_run_wall_s']} s, CPU "
              f"{verification['full_run_cpu_s']} s; whole grid EXTRAPOLATED: wall "
              f"{verification['full_grid_wall_s (EXTRAPOLATED from these matrices)']} s")
        print(f"{'PASS' if verification['ok'] else 'FAIL'} early stop = full run (phases, values within "
              f"{TOLERANCE:g})")
    print(f"{'PASS' if passed else 'FAIL'} median wall {median_wall:.1f} s over {len(runs)} runs "
          f"(goal <= {GOAL_S:g} s; median CPU {summary['median_cpu_s']:.1f} s)")
    full = verification["full_grid_wall_s (EXTRAPOLATED from these matrices)"] if verification else None
    measures = [Measure(f"{alphas.size} x {gains.size} (alpha, beta*lambda) grid over {P.shape[0]:,} matrices x "
                        f"{args.steps:,} steps, "
                        f"median wall of {len(runs)} runs", median_wall, "s", f"<= {GOAL_S:g} s", passed,
                        f"the same grid without early stop: {full:.0f} s (extrapolated from "
                        f"{verification['matrices']} matrices)" if verification else None),
                Measure("trajectory-steps saved by the early stop", round(1 - fraction_run, 4), "of all")]
    if verification:
        measures.append(Measure("early stop vs full run: largest difference of terminal values",
                                max(verification["max_abs_diff"].values()), "", f"<= {TOLERANCE:g}, same phases",
                                verification["ok"], f"full run on {verification['matrices']} matrices"))
    record("phase_grid", "High-resolution phase diagrams (MRS-IPO with early stopping)", measures, details=summary,
           out=Path(args.json).parent if args.json else None)
    return 0 if passed and (verification is None or verification["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
