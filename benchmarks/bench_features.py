"""Feature-extraction budget of SmolLM2 on this machine (a script, not a test).

Prints: prompts/s in fp32 and bf16, the achieved GFLOP/s as a fraction of the machine's measured matmul
throughput in the same dtype, the time of a second (cached) request, and the peak resident memory after
extracting features for ``--n`` persona prompts.

    .venv/bin/python benchmarks/bench_features.py            # 1000 prompts in fp32, 128 in bf16
    .venv/bin/python benchmarks/bench_features.py --n 200 --n-bf16 32

Features are computed into a fresh temporary feature cache (the converted model is reused from the normal
cache), so nothing already cached is counted as computed. Needs the persona data (``ANALYSIS_LIB_DATA`` or
``--data-dir``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def matmul_gflops(dtype, size: int = 1024, min_seconds: float = 2.0) -> float:
    """Measured dense matmul throughput (GFLOP/s) of torch in ``dtype`` on this machine's threads (repeats
    a size x size product for at least ``min_seconds``)."""
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    repeats, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or repeats == 0:
        a @ b
        repeats += 1
    return 2 * size**3 * repeats / elapsed / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="fp32 prompts (also the memory check); default 1000")
    parser.add_argument("--n-bf16", type=int, default=128, help="bf16 prompts (bf16 is slow on AVX2); default 128")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    from analysis_lib import models as M

    models_dir = M.cache_root() / "models"
    M.smollm2_checkpoint()  # convert once into the normal cache if needed (not timed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    (tmp / "models").symlink_to(models_dir, target_is_directory=True)
    os.environ[M.CACHE_ENV] = str(tmp)

    import torch

    from analysis_lib.data import load_persona

    questions = load_persona("all", data_dir=args.data_dir)["question"]
    questions = list(dict.fromkeys(questions))  # distinct prompts, file order
    tok = M.load_tokenizer()
    non_embedding = 134_515_008 - 49_152 * 576  # SmolLM2 parameters used by the backbone's matmuls

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {M.feature_dtype('auto', 'cpu') == 'bfloat16'}")
    rows = []
    for dtype, n in (("float32", args.n), ("bfloat16", args.n_bf16)):
        prompts = questions[:n] if dtype == "float32" else questions[args.n:args.n + n]
        tokens = sum(len(ids) for ids in tok(prompts)["input_ids"])
        M._inference_model(M.SMOLLM2, dtype, "cpu")  # load outside the timing
        start = time.perf_counter()
        M.extract_features(prompts, dtype=dtype, batch_size=args.batch_size, progress=False)
        elapsed = time.perf_counter() - start
        if dtype == "float32":
            rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
            start = time.perf_counter()
            M.extract_features(prompts, dtype=dtype, progress=False)
            cache_hit = time.perf_counter() - start
        achieved = 2 * non_embedding * tokens / elapsed / 1e9
        peak = matmul_gflops(M.DTYPES[dtype])
        rows.append((dtype, n, elapsed, n / elapsed, tokens / n, achieved, peak))
    print(f"{'dtype':9} {'prompts':>7} {'seconds':>8} {'prompts/s':>9} {'tokens/prompt':>13} "
          f"{'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'fraction':>8}")
    for dtype, n, elapsed, rate, tpp, achieved, peak in rows:
        print(f"{dtype:9} {n:7d} {elapsed:8.1f} {rate:9.2f} {tpp:13.1f} {achieved:8.1f} {peak:14.1f} "
              f"{achieved / peak:8.2f}")
    print(f"second request for the same {args.n} fp32 features (cache hit): {cache_hit:.3f} s")
    print(f"peak resident memory after {args.n} fp32 prompts: {rss_gb:.2f} GB (budget 4 GB)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
