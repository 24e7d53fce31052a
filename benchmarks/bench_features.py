"""Feature-extraction throughput of SmolLM2 against the machine's dense matmul throughput (a script, not a test).

The goal (issue 14): for any request of at least 256 prompts, the extraction reaches at least 60% of the dense
matmul throughput measured in the same run, in the dtype used, while every prompt's features stay bitwise
independent of the rest of the request.

For each configuration (dtype and instruction set: fp32 and, where the CPU has native bf16, bf16; optionally an
AVX2-only CPU simulated with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``)
a fresh worker process loads the model once (untimed) and, for each request size and repeat:

* measures the dense matmul throughput: ``torch.mm`` of two 2048 x 2048 matrices in the dtype, for 2 s, with the
  same threads, right before the extraction;
* extracts the features of a request of persona prompts drawn at random from all 135 behaviours (a fresh sample
  per repeat, uncached), timed;
* counts the useful FLOPs as 2 x the backbone's non-embedding parameters x the prompts' real tokens (no padding,
  no attention scores, no embedding lookup): the FLOPs of the plain forward pass's matrix products;

and reports the median over the repeats of the fraction achieved / matmul (each repeat's own ratio), with the
median prompts/s. Then, once per configuration: a second request for the same features (served from the cache,
against 1 s), bitwise independence (the features of a random quarter of the last request, requested alone, equal
their rows in the full request), and the peak resident memory of the worker (against 4 GB).

    .venv/bin/python benchmarks/bench_features.py                       # 256 and 1000 prompts, 3 repeats
    .venv/bin/python benchmarks/bench_features.py --avx2                # also simulate an AVX2-only CPU (fp32)
    .venv/bin/python benchmarks/bench_features.py --sizes 256 --repeats 3 --out /tmp/bench

Every worker writes into its own temporary feature cache (the converted model is shared with the normal cache),
so nothing cached earlier is counted as computed. Needs the persona data (``ANALYSIS_LIB_DATA`` or
``--data-dir``). Other processes on the same cores lower every number; the matmul reference is measured next to
each extraction so that the fraction is comparable, and the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from analysis_lib.benchmarking import Measure, cpu_model, record  # noqa: E402

GOAL_FRACTION = 0.60
GOAL_MIN_PROMPTS = 256
RSS_BUDGET_GB = 4.0
CACHE_HIT_BUDGET_S = 1.0
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def matmul_gflops(dtype, size: int = 2048, min_seconds: float = 2.0) -> float:
    """Dense matmul throughput (GFLOP/s): ``torch.mm`` of two size x size matrices in ``dtype`` on this process's
    threads, repeated for at least ``min_seconds`` after one warm-up product."""
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    repeats, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or repeats == 0:
        torch.mm(a, b)
        repeats += 1
    return 2 * size**3 * repeats / elapsed / 1e9


def worker(prompts_file: str, dtype: str, threads: int, sizes: list[int], repeats: int, seed: int) -> dict:
    """Runs in a fresh process: load the model (untimed), then time every request against the matmul reference."""
    import torch

    torch.set_num_threads(threads)
    from analysis_lib import models as M

    pool = json.loads(Path(prompts_file).read_text())
    model, tok = M.inference_model(M.SMOLLM2, dtype, "cpu")  # load outside the timing
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    non_embedding = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    M.extract_features(pool[:8], dtype=dtype, cache=False, progress=False, device="cpu")  # warm-up, untimed
    rng = random.Random(seed)
    runs = []
    for n in sizes:
        for repeat in range(repeats):
            prompts = rng.sample(pool, n)
            reference = matmul_gflops(M.DTYPES[dtype])
            start = time.perf_counter()
            M.extract_features(prompts, dtype=dtype, cache=False, progress=False, device="cpu")
            seconds = time.perf_counter() - start
            tokens = sum(len(ids) for ids in tok(prompts)["input_ids"])
            achieved = 2 * non_embedding * tokens / seconds / 1e9
            runs.append({"prompts": n, "repeat": repeat, "seconds": seconds, "tokens": tokens,
                         "matmul_gflops": reference, "achieved_gflops": achieved,
                         "fraction": achieved / reference, "prompts_per_s": n / seconds,
                         "load_average": os.getloadavg()[0]})
    # cache, once: compute and store the last request, then serve it again from disk
    first = M.extract_features(prompts, dtype=dtype, progress=False, device="cpu")
    start = time.perf_counter()
    again = M.extract_features(prompts, dtype=dtype, progress=False, device="cpu")
    cache_hit = time.perf_counter() - start
    same_from_cache = bool(first.shape == again.shape and (first == again).all())
    # bitwise independence of the rest of the request: a random quarter requested alone, uncached
    part = sorted(rng.sample(range(len(prompts)), max(1, len(prompts) // 4)))
    alone = M.extract_features([prompts[i] for i in part], dtype=dtype, cache=False, progress=False, device="cpu")
    independent = bool((alone == first[part]).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
    return {"dtype": dtype, "threads": torch.get_num_threads(), "cpu_capability": M.cpu_capability(),
            "native_bf16": M.cpu_has_native_bf16(), "non_embedding_parameters": non_embedding, "runs": runs,
            "cache_hit_seconds": cache_hit, "same_from_cache": same_from_cache, "independent": independent,
            "independence_prompts": len(part), "rss_after_load_gb": rss_loaded, "peak_rss_gb": peak}


def run_worker(prompts_file: Path, dtype: str, env_extra: dict, args, models_dir: Path) -> dict:
    cache = Path(tempfile.mkdtemp(prefix=f"bench-features-{dtype}-"))
    try:
        (cache / "models").symlink_to(models_dir, target_is_directory=True)
        env = dict(os.environ, ANALYSIS_LIB_CACHE=str(cache), OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads), **env_extra)
        command = [sys.executable, __file__, "--worker", str(prompts_file), "--dtype", dtype,
                   "--threads", str(args.threads), "--sizes", ",".join(map(str, args.sizes)),
                   "--repeats", str(args.repeats), "--seed", str(args.seed)]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"bench_features: the {dtype} worker failed: {out.stderr.strip().splitlines()[-3:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def summarise(result: dict, sizes: list[int]) -> list[dict]:
    """Medians over the repeats, one row per request size."""
    rows = []
    for n in sizes:
        runs = [r for r in result["runs"] if r["prompts"] == n]
        rows.append({"prompts": n, "repeats": len(runs),
                     "median_fraction": statistics.median(r["fraction"] for r in runs),
                     "min_fraction": min(r["fraction"] for r in runs),
                     "median_prompts_per_s": statistics.median(r["prompts_per_s"] for r in runs),
                     "median_achieved_gflops": statistics.median(r["achieved_gflops"] for r in runs),
                     "median_matmul_gflops": statistics.median(r["matmul_gflops"] for r in runs),
                     "tokens_per_prompt": statistics.mean(r["tokens"] / n for r in runs),
                     "median_load_average": statistics.median(r["load_average"] for r in runs)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1000", help="request sizes in prompts, comma-separated (256,1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per size, at least 3 for a median (3)")
    parser.add_argument("--dtypes", default="auto", help="'auto' (fp32, and bf16 where native) or a list")
    parser.add_argument("--avx2", action="store_true", help="also run fp32 on a simulated AVX2-only CPU")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every measurement (2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt samples")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the JSON record (default: _build/benchmarks)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.error("--sizes must be a comma-separated list of integers")
    if args.worker:
        print(json.dumps(worker(args.worker, args.dtype, args.threads, args.sizes, args.repeats, args.seed)))
        return 0
    if not args.sizes or min(args.sizes) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--sizes, --repeats and --threads must be >= 1")

    import torch

    torch.set_num_threads(args.threads)
    from analysis_lib import models as M
    from analysis_lib.data import load_persona

    native_bf16 = M.cpu_has_native_bf16()
    if args.dtypes == "auto":
        configs = [("float32", {})] + ([("bfloat16", {})] if native_bf16 else [])
    else:
        configs = [(d.strip(), {}) for d in args.dtypes.split(",") if d.strip()]
        if not configs or any(d not in M.DTYPES for d, _ in configs):
            parser.error(f"--dtypes must be 'auto' or a list of {list(M.DTYPES)}")
    if args.avx2:
        configs.append(("float32", AVX2_ENV))
    M.smollm2_checkpoint()  # convert once into the normal cache if needed (never inside a measurement)
    models_dir = M.cache_root() / "models"
    pool = list(dict.fromkeys(load_persona("all", data_dir=args.data_dir)["question"]))
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "cpu_capability": M.cpu_capability(), "native_bf16": native_bf16,
               "load_average_start": os.getloadavg()}
    print(f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch {torch.__version__}, {args.threads} "
          f"threads, CPU capability {machine['cpu_capability']}, native bf16: {native_bf16}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"Goal: every request of >= {GOAL_MIN_PROMPTS} prompts reaches >= {GOAL_FRACTION:.0%} of the dense matmul "
          f"throughput (2048 x 2048 torch.mm, same dtype, same run); useful FLOPs = 2 x non-embedding parameters "
          f"x real tokens; median of {args.repeats} repeats per size")
    results, ok = [], True
    with tempfile.TemporaryDirectory(prefix="bench-features-prompts-") as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(pool))
        for dtype, env_extra in configs:
            r = run_worker(prompts_file, dtype, env_extra, args, models_dir)
            r["isa_caps"] = env_extra
            r["summary"] = summarise(r, args.sizes)
            results.append(r)
    print(f"{'config':16} {'prompts':>7} {'tok/prompt':>10} {'prompts/s':>9} {'GFLOP/s':>8} {'matmul':>7} "
          f"{'fraction':>8} {'(min)':>6} {'load':>5}")
    for r in results:
        label = f"{r['dtype']}{' AVX2' if r['isa_caps'] else ''}"
        for s in r["summary"]:
            print(f"{label:16} {s['prompts']:7d} {s['tokens_per_prompt']:10.1f} {s['median_prompts_per_s']:9.2f} "
                  f"{s['median_achieved_gflops']:8.1f} {s['median_matmul_gflops']:7.1f} {s['median_fraction']:8.2f} "
                  f"{s['min_fraction']:6.2f} {s['median_load_average']:5.1f}")
    measures = []
    for r in results:
        label = f"{r['dtype']}{' (simulated AVX2)' if r['isa_caps'] else ''}"
        for s in r["summary"]:
            goal = s["prompts"] >= GOAL_MIN_PROMPTS
            measures.append(Measure(
                f"features {label}, {s['prompts']} prompts: fraction of matmul", round(s["median_fraction"], 3),
                "of peak", f">= {GOAL_FRACTION:.2f}" if goal else None,
                (s["median_fraction"] >= GOAL_FRACTION) if goal else None,
                f"median of {len([x for x in r['runs'] if x['prompts'] == s['prompts']])} runs; "
                f"{s['median_achieved_gflops']:.1f} GFLOP/s against {s['median_matmul_gflops']:.1f} GFLOP/s of a "
                f"2048 x 2048 torch.mm in {r['dtype']}, same run, {args.threads} threads"))
            measures.append(Measure(f"features {label}, {s['prompts']} prompts: prompts/s",
                                    round(s["median_prompts_per_s"], 2), "prompts/s"))
        measures += [
            Measure(f"features {label}: bitwise independence of the request", float(bool(r["independent"])),
                    "1 = yes", "== 1", bool(r["independent"]),
                    f"{r['independence_prompts']} prompts requested alone equal their rows in the full request"),
            Measure(f"features {label}: second request (cache hit)", round(r["cache_hit_seconds"], 3), "s",
                    f"< {CACHE_HIT_BUDGET_S:g} s", bool(r["cache_hit_seconds"] < CACHE_HIT_BUDGET_S
                                                         and r["same_from_cache"]), "the same values"),
            Measure(f"features {label}: peak resident memory", round(r["peak_rss_gb"], 2), "GB",
                    f"< {RSS_BUDGET_GB:g} GB", bool(r["peak_rss_gb"] < RSS_BUDGET_GB),
                    f"{r['rss_after_load_gb']:.2f} GB after loading the model")]
    ok = all(m.passed is not False for m in measures)
    record("features", "Feature extraction (SmolLM2-135M, last prompt token) against the dense matmul throughput",
           measures, details={"goal_fraction": GOAL_FRACTION, "goal_min_prompts": GOAL_MIN_PROMPTS,
                              "useful_flops": "2 x non-embedding parameters x real tokens",
                              "threads": args.threads, "sizes": args.sizes, "repeats": args.repeats,
                              "machine": machine, "load_average_end": os.getloadavg(), "results": results},
           out=args.out)
    return 0 if ok else 1



if __name__ == "__main__":
    sys.exit(main())
