#!/usr/bin/env python3
"""Benchmark: the paper's experiment size for batched MRS-IPO, and the speed-up over a plain Python loop.

The paper (Chen, He, Jordan & Yao 2026, Section 5) iterates MRS-IPO 3,000 times on 118 cyclic + 4,924
strongly transitive 4 x 4 preference matrices. HelpSteer is not available offline, so this benchmark uses
random matrices of the same size and kinds (118 random cyclic ones, 4,924 random Bradley-Terry ones): the
cost does not depend on the entries. 16 settings: alpha in {0, 0.5, 0.9, 1} x beta*lam in {0.5, 2, 8, 16}
(lam = 1). One call of :func:`analysis_lib.dynamics.run_mrs_ipo` runs all 5,042 x 16 trajectories in log
space with the tail metrics (cycle strength over the last 1,000 iterates, terminal entropy).

The baseline is a fair plain per-trajectory Python loop: numpy on K-vectors, one exp per step, normalised with a
plain max-shift log-sum-exp in numpy (no scipy call per step), the policy of the step reused for the next one. It
is timed on whole matrices (every one of the 16 settings for ``--loop-matrices`` randomly chosen matrices, 256
trajectories by default) and extrapolated linearly to the full count; the extrapolation is labelled as such in
the output. Its results are compared with the batched ones on those trajectories.

The summary is printed and written as JSON (default ``_build/benchmarks/bench_dynamics.json``, never committed;
``--json PATH`` to choose another file).

    .venv/bin/python benchmarks/bench_dynamics.py                          # full size (run it on a quiet machine)
    .venv/bin/python benchmarks/bench_dynamics.py --steps 100 --sst 200    # a quick check that it works
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from analysis_lib.benchmarking import Measure, folder, record
from analysis_lib.dynamics import run_mrs_ipo
from analysis_lib.preferences import has_cycle, random_bt_matrix, random_preference_matrix

GOAL_S = 60.0  # the budget issue 5 set for the paper-sized run on 2 cores
ALPHAS = np.repeat([0.0, 0.5, 0.9, 1.0], 4)
GAINS = np.tile([0.5, 2.0, 8.0, 16.0], 4)  # beta * lam with lam = 1


def paper_sized_matrices(n_cyclic: int, n_sst: int, seed: int) -> np.ndarray:
    """n_cyclic random cyclic 4x4 matrices followed by n_sst random Bradley-Terry (hence SST) ones."""
    rng = np.random.default_rng(seed)
    cyclic = []
    while len(cyclic) < n_cyclic:
        P = random_preference_matrix(4, rng, size=4 * n_cyclic)
        cyclic.extend(P[np.asarray(has_cycle(P))])
    return np.concatenate([np.array(cyclic[:n_cyclic]), random_bt_matrix(4, rng, size=n_sst)])


def plain_loop(P: np.ndarray, alpha: float, gain: float, steps: int, tail: int):
    """One trajectory, the obvious way done fairly (uniform references and start): numpy K-vectors, one exp per
    step and a plain max-shift log-sum-exp. Returns (final log pi, cycle strength over the last ``tail``
    iterates)."""
    K = P.shape[0]
    z = np.full(K, -np.log(K))
    pi = np.exp(z)
    c = (1 - alpha) * np.full(K, -np.log(K))
    gP = gain * P
    window = [pi] if tail >= steps + 1 else []
    for t in range(1, steps + 1):
        z = alpha * z + c + gP @ pi
        e = np.exp(z - z.max())
        total = e.sum()
        z = z - z.max() - np.log(total)
        pi = e / total
        if t >= steps + 1 - tail:
            window.append(pi)
    return z, np.var(np.array(window), axis=0).sum()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cyclic", type=int, default=118, help="number of cyclic matrices (paper: 118)")
    ap.add_argument("--sst", type=int, default=4924, help="number of SST matrices (paper: 4,924)")
    ap.add_argument("--steps", type=int, default=3000, help="iterations (paper: 3,000)")
    ap.add_argument("--tail", type=int, default=1000, help="cycle-strength window")
    ap.add_argument("--loop-matrices", type=int, default=16,
                    help="matrices whose trajectories (all settings) are timed with the plain loop (16 x 16 = 256)")
    ap.add_argument("--threads", type=int, default=None, help="threads of the batched run (default: CPU count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(folder() / "dynamics.json"),
                    help="write the summary to this JSON file (default: %(default)s)")
    args = ap.parse_args(argv)

    P = paper_sized_matrices(args.cyclic, args.sst, args.seed)
    n_traj = P.shape[0] * len(ALPHAS)
    wall, cpu = time.perf_counter(), time.process_time()
    run = run_mrs_ipo(P[:, None], ALPHAS, GAINS, 1.0, args.steps, tail=args.tail, threads=args.threads)
    batched_wall, batched_cpu = time.perf_counter() - wall, time.process_time() - cpu

    rng = np.random.default_rng(args.seed + 1)
    loop_matrices = rng.choice(P.shape[0], size=min(args.loop_matrices, P.shape[0]), replace=False)
    subset = [(int(m), g) for m in loop_matrices for g in range(len(ALPHAS))]
    times, diffs = [], []
    for m, g in subset:
        start = time.perf_counter()
        z, cs = plain_loop(P[m], ALPHAS[g], GAINS[g], args.steps, args.tail)
        times.append(time.perf_counter() - start)
        diffs.append(max(np.abs(np.exp(z) - run.policy[m, g]).max(), abs(cs - run.cycle_strength[m, g])))
    times = np.array(times)
    loop_wall = float(times.sum())
    per_traj = loop_wall / len(subset)
    loop_extrapolated = per_traj * n_traj

    summary = {
        "matrices": int(P.shape[0]), "settings": len(ALPHAS), "trajectories": n_traj, "steps": args.steps,
        "cpu_count": os.cpu_count(), "threads": args.threads or "default",
        "batched_wall_s": round(batched_wall, 3), "batched_cpu_s": round(batched_cpu, 3),
        "batched_us_per_trajectory_step": round(1e6 * batched_wall / (n_traj * max(args.steps, 1)), 4),
        "loop_timed_matrices": len(loop_matrices), "loop_timed_trajectories": len(subset),
        "loop_timed_wall_s": round(loop_wall, 3),
        "loop_s_per_trajectory (mean, sd)": [float(f"{per_traj:.4g}"),
                                             float(f"{times.std(ddof=1):.4g}") if len(times) > 1 else 0.0],
        "loop_full_wall_s (EXTRAPOLATED from the timed trajectories)": round(loop_extrapolated, 1),
        "speedup_vs_loop (EXTRAPOLATED)": round(loop_extrapolated / batched_wall, 1),
        "max_abs_diff_loop_vs_batched": float(max(diffs)),
        "all_finite": bool(np.all(np.isfinite(run.log_policy))),
    }
    for k, v in summary.items():
        print(f"{k:60s} {v}")
    size = f"{P.shape[0]:,} matrices x {len(ALPHAS)} settings x {args.steps:,} steps"
    measures = [
        Measure(f"batched MRS-IPO, {size}", round(batched_wall, 2), "s", f"<= {GOAL_S:g} s", batched_wall <= GOAL_S,
                f"plain per-trajectory loop: {loop_extrapolated:.0f} s (extrapolated from {len(subset)} timed "
                "trajectories)"),
        Measure("speed-up over the plain loop (extrapolated)", round(loop_extrapolated / batched_wall, 1), "x"),
        Measure("largest |plain loop - batched| on the timed trajectories", float(max(diffs)), "", "<= 1e-9",
                float(max(diffs)) <= 1e-9, "the plain loop"),
    ]
    if args.json:
        record("dynamics", "Batched MRS-IPO at the paper's experiment size", measures, details=summary,
               out=os.path.dirname(os.path.abspath(args.json)))
    return summary


if __name__ == "__main__":
    main()
