"""Feature-extraction budget of SmolLM2 on this machine (a script, not a test).

For each dtype (fp32 and bf16 by default) the *same* ``--n`` persona prompts are embedded in a fresh worker
process, and the script prints:

* throughput: prompts/s and real (unpadded) tokens/s of the extraction, and the achieved GFLOP/s
  (2 x the backbone's non-embedding parameters x real tokens; attention scores and padding not counted) as a
  fraction of the machine's measured dense matmul throughput in the same dtype and thread count;
* the time of a second request for the same features (served from the on-disk cache), against 1 s;
* the peak resident memory (ru_maxrss) of the worker process, against 4 GB. What it counts: the Python
  interpreter with torch and transformers imported, loading SmolLM2 from the already converted cache (no
  GGUF conversion), the extraction of the ``--n`` prompts and the cache hit. Not counted: reading the
  133,204 persona rows (the parent does it and hands the prompts over in a JSON file) and the one-off
  conversion (done by the parent before any worker starts). A short untimed warm-up precedes the timing.

    .venv/bin/python benchmarks/bench_features.py                  # 1000 prompts, fp32 and bf16, 2 threads
    .venv/bin/python benchmarks/bench_features.py --n 32 --json out.json

Every worker writes into its own temporary feature cache (the converted model is shared with the normal
cache), so nothing cached earlier is counted as computed. Needs the persona data (``ANALYSIS_LIB_DATA`` or
``--data-dir``). Run it on a quiet machine: other processes on the same cores lower every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_BUDGET_GB = 4.0
CACHE_HIT_BUDGET_S = 1.0
DTYPES = ("float32", "bfloat16")


def matmul_gflops(dtype, size: int = 1024, min_seconds: float = 2.0) -> float:
    """Measured dense matmul throughput (GFLOP/s) of torch in ``dtype`` on this process's threads (repeats
    a size x size product for at least ``min_seconds``)."""
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    repeats, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or repeats == 0:
        a @ b
        repeats += 1
    return 2 * size**3 * repeats / elapsed / 1e9


def worker(prompts_file: str, dtype: str, threads: int, batch_size: int) -> dict:
    """Runs in a fresh process: load the model (untimed), extract, repeat from the cache, report."""
    import torch

    torch.set_num_threads(threads)
    from analysis_lib import models as M

    prompts = json.loads(Path(prompts_file).read_text())
    model, tok = M.inference_model(M.SMOLLM2, dtype, "cpu")  # load outside the timing
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    # warm-up (kernel selection on first use), untimed and uncached
    M.extract_features(prompts[:8], dtype=dtype, batch_size=batch_size, cache=False, progress=False, device="cpu")
    start = time.perf_counter()
    first = M.extract_features(prompts, dtype=dtype, batch_size=batch_size, progress=False, device="cpu")
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    again = M.extract_features(prompts, dtype=dtype, batch_size=batch_size, progress=False, device="cpu")
    cache_hit = time.perf_counter() - start
    if not (first.shape == again.shape and (first == again).all()):
        raise SystemExit("bench_features: the cached features differ from the computed ones")
    tokens = sum(len(ids) for ids in tok(prompts)["input_ids"])
    non_embedding = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
    return {"dtype": dtype, "prompts": len(prompts), "seconds": elapsed, "tokens": tokens,
            "non_embedding_parameters": non_embedding, "cache_hit_seconds": cache_hit,
            "rss_after_load_gb": rss_loaded, "peak_rss_gb": peak, "threads": torch.get_num_threads()}


def run_worker(prompts_file: Path, dtype: str, threads: int, batch_size: int, models_dir: Path) -> dict:
    cache = Path(tempfile.mkdtemp(prefix=f"bench-features-{dtype}-"))
    try:
        (cache / "models").symlink_to(models_dir, target_is_directory=True)
        env = dict(os.environ, ANALYSIS_LIB_CACHE=str(cache), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, __file__, "--worker", str(prompts_file), "--dtype", dtype,
                              "--threads", str(threads), "--batch-size", str(batch_size)],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"bench_features: the {dtype} worker failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="persona prompts, the same for every dtype (1000)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, default float32,bfloat16")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every measurement (2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default="_build/benchmarks/bench_features.json",
                        help="also write the results to this JSON file ('' for none)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.dtype, args.threads, args.batch_size)))
        return 0
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if args.n < 1 or args.threads < 1 or not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--n and --threads must be >= 1 and --dtypes a list of {list(DTYPES)}")

    import torch

    torch.set_num_threads(args.threads)
    from analysis_lib import models as M
    from analysis_lib.data import load_persona

    M.smollm2_checkpoint()  # convert once into the normal cache if needed (never inside a measurement)
    models_dir = M.cache_root() / "models"
    questions = list(dict.fromkeys(load_persona("all", data_dir=args.data_dir)["question"]))
    prompts = questions[:args.n]  # distinct prompts, file order; the same for every dtype
    print(f"torch {torch.__version__}, {args.threads} threads (torch.set_num_threads in every process), CPU "
          f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {M.cpu_has_native_bf16()}, "
          f"{os.cpu_count()} logical CPUs, {len(prompts)} prompts, batch size {args.batch_size}")
    with tempfile.TemporaryDirectory(prefix="bench-features-prompts-") as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        results = []
        for dtype in dtypes:
            r = run_worker(prompts_file, dtype, args.threads, args.batch_size, models_dir)
            r["matmul_gflops"] = matmul_gflops(M.DTYPES[dtype])
            r["prompts_per_s"] = r["prompts"] / r["seconds"]
            r["achieved_gflops"] = 2 * r["non_embedding_parameters"] * r["tokens"] / r["seconds"] / 1e9
            r["fraction_of_matmul"] = r["achieved_gflops"] / r["matmul_gflops"]
            r["rss_ok"] = r["peak_rss_gb"] < RSS_BUDGET_GB
            r["cache_hit_ok"] = r["cache_hit_seconds"] < CACHE_HIT_BUDGET_S
            results.append(r)
    print(f"{'dtype':9} {'prompts':>7} {'seconds':>8} {'prompts/s':>9} {'tok/prompt':>10} {'GFLOP/s':>8} "
          f"{'matmul':>7} {'fraction':>8} {'cache hit s':>11} {'peak RSS GB':>11}")
    for r in results:
        print(f"{r['dtype']:9} {r['prompts']:7d} {r['seconds']:8.1f} {r['prompts_per_s']:9.2f} "
              f"{r['tokens'] / r['prompts']:10.1f} {r['achieved_gflops']:8.1f} {r['matmul_gflops']:7.1f} "
              f"{r['fraction_of_matmul']:8.2f} {r['cache_hit_seconds']:11.3f} {r['peak_rss_gb']:11.2f}")
    if len(results) == 2:
        print(f"bf16 / fp32 throughput: {results[1]['prompts_per_s'] / results[0]['prompts_per_s']:.2f}x")
    ok = True
    for r in results:
        for label, passed, detail in (
                ("cache hit", r["cache_hit_ok"], f"{r['cache_hit_seconds']:.3f} s < {CACHE_HIT_BUDGET_S:g} s"),
                ("memory", r["rss_ok"], f"peak RSS {r['peak_rss_gb']:.2f} GB < {RSS_BUDGET_GB:g} GB "
                                        f"({r['rss_after_load_gb']:.2f} GB after loading the model)")):
            print(f"{'PASS' if passed else 'FAIL'} {r['dtype']} {label}: {detail}")
            ok = ok and passed
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "batch_size": args.batch_size,
                                               "results": results}, indent=1))
        print(f"results written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
