"""A few training steps of the tiny random Llama, in one process or under `accelerate launch` (run by
tests/test_training.py): ``python tests/ddp_worker.py OUT.pt`` saves the trained weights (the first process)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import build_tiny_model, build_tiny_tokenizer  # noqa: E402

from analysis_lib.training import CausalLMPolicy, EvalSet, PreferencePairs, train  # noqa: E402

PROMPTS = [f"{a} {b} {c}" for a in ("I like", "hello", "Is the following") for b in ("cats", "dogs", "a b")
           for c in ("?", "world", "c d e")]


def pairs() -> PreferencePairs:
    chosen = [" Yes" if "cats" in p else " No No" for p in PROMPTS]
    rejected = [" No" if "cats" in p else " Yes a" for p in PROMPTS]
    return PreferencePairs(PROMPTS, chosen, rejected)


def run(out: Path) -> None:
    torch.set_num_threads(1)
    policy = CausalLMPolicy(model=build_tiny_model(), tokenizer=build_tiny_tokenizer(), precision="float32",
                            cache_reference=False, append_eos=True, device="cpu")
    data = pairs()
    result = train(policy, data, beta=0.5, lr=0.5, steps=3, batch_size=8, grad_accumulation=2, seed=1, optimizer="sgd",
                   evaluations=[EvalSet("eval_", data.take(range(11)), "test")])
    if result.info["world_size"] == 1 or torch.distributed.get_rank() == 0:
        state = {k: v.detach().clone() for k, v in policy.module.state_dict().items()}
        torch.save({"state": state, "log": result.log.to_dict(), "final": result.final,
                    "world_size": result.info["world_size"]}, out)


if __name__ == "__main__":
    run(Path(sys.argv[1]))
