"""Iterated alignment of a real language model: the MRS loop of Chen et al. with an LM as the policy, and
on-policy DPO rounds on persona behaviours (our own experiments, beyond both papers).

**The MRS loop on candidates.** Each of M prompts has K candidate responses. The policy's distribution over a
prompt's candidates is the LM's sequence probability of each candidate, renormalised over the K:
pi(k | x) = softmax_k log p(y_k | x) (summed token log-probs). One round t (:func:`mrs_round`):

* sampler mu_t = lam pi_t + (1 - lam) pi_0; per prompt ``n_pairs`` pairs (y, y') ~ mu_t x mu_t with labels drawn
  from the prompt's preference matrix P (:func:`sample_candidate_pairs`; self-pairs carry no signal and are
  dropped);
* reference: the per-candidate geometric mix log pi_ref^(t) = alpha log pi_t + (1 - alpha) log pi_ref (the
  trainer takes it as precomputed reference log-probs: no reference model exists);
* ``steps`` full-batch IPO steps of :func:`analysis_lib.training.train` (the one training loop) with TRL's tau =
  1 / beta (:func:`ipo_tau`): the empirical IPO loss (h - beta/2)^2 of Chen et al.'s preference strength beta, whose
  population optimum is pi_ref^(t) exp(beta P mu_t), the MRS-IPO map (:func:`analysis_lib.dynamics.mrs_ipo_step`);
* the trained LM is pi_{t+1}.

Every step of a round needs the log-probs of at most M K distinct sequences, however many pairs were drawn:
:class:`CandidateLM` (a model adapter for the trainer, like the last-layer model of :mod:`analysis_lib.lastlayer`)
scores each distinct (prompt, candidate) of a batch once and gathers the pairs' values. :class:`TabularCandidates`
replaces the LM by one logit per candidate; trained to convergence it is the round's exact empirical optimum, which
checks the loop against the tabular map. :func:`run_mrs_loop` iterates rounds and records the LM's path next to
the tabular prediction (:func:`analysis_lib.dynamics.run_mrs_ipo` from the same pi_0 with pi_ref = pi_0);
:func:`prompt_coupling` trains on one prompt and measures how far the others move (one set of weights couples
the prompts, the tabular map does not). Candidates come from :func:`encode_candidates` (the K responses'
continuations after their common token prefix, a fixed number of tokens each).

**On-policy rounds on persona behaviours** (:func:`run_persona_rounds`): each round draws the items whose pair is
trained from the current model's two-answer distribution p = sigmoid(log pi(matching) - log pi(other)): two
answers sampled from it differ with probability 2 p (1 - p), so on-policy rounds see the items the model is unsure
about most (:func:`item_weights`); off-policy rounds draw items uniformly (the uniform two-answer sampler). The
reference is the model at the start of each round. Per round the features of the current weights
(:meth:`analysis_lib.models.policy.CausalLMPolicy.last_prompt_hidden`) give each behaviour's preference
distinguishability (:func:`analysis_lib.lastlayer.behaviour_properties`), the answers its accuracy and margin.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from analysis_lib import checks as C
from analysis_lib import dynamics as dyn
from analysis_lib import preferences as pr
from analysis_lib.lastlayer import behaviour_properties
from analysis_lib.models.logprobs import PROMPT_TEMPLATES, _check_template, format_prompt, response_logprobs
from analysis_lib.models.policy import CausalLMPolicy, PreferencePairs
from analysis_lib.runtime import progress as progress_bar
from analysis_lib.training import EvalSet, TrainingRun, train

SAMPLINGS = ("on", "off")


# ---------------------------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncodedCandidates:
    """M prompts with K candidates each, as token ids: ``prompt_ids`` (M,) tuples, ``candidate_ids`` (M, K)
    tuples; ``prompts`` and ``candidates`` the same as text (for display)."""

    prompt_ids: tuple[tuple[int, ...], ...]
    candidate_ids: tuple[tuple[tuple[int, ...], ...], ...]
    prompts: tuple[str, ...]
    candidates: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        if len(self.prompt_ids) != len(self.candidate_ids) or not self.prompt_ids:
            raise ValueError(f"candidate_ids: need one row of candidates per prompt (and at least one prompt), got "
                             f"{len(self.candidate_ids)} rows for {len(self.prompt_ids)} prompts")
        sizes = {len(row) for row in self.candidate_ids}
        if len(sizes) != 1 or min(sizes) < 2:
            raise ValueError(f"candidate_ids: every prompt needs the same number K >= 2 of candidates, got {sizes}")
        for m, row in enumerate(self.candidate_ids):
            if any(len(c) == 0 for c in row) or len(set(row)) != len(row):
                raise ValueError(f"candidate_ids: prompt {m} has an empty or repeated candidate")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.prompt_ids), len(self.candidate_ids[0])

    def take(self, rows) -> "EncodedCandidates":
        rows = [int(r) for r in rows]
        return EncodedCandidates(*(tuple(getattr(self, f)[r] for r in rows) for f in
                                   ("prompt_ids", "candidate_ids", "prompts", "candidates")))


def continuations(tokenizer, responses, n_tokens: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The rule that turns K responses to one question into K short candidates: tokenise each response on its own
    (no special tokens), take the longest token prefix common to all K, and keep the next ``n_tokens`` tokens of
    each. Returns (the common prefix, the K continuations); a continuation may be shorter where a response ends."""
    n_tokens = C.int_at_least("n_tokens", n_tokens, 1)
    ids = [tuple(tokenizer.encode(t, add_special_tokens=False)) for t in C.texts("responses", responses)]
    common = 0
    while all(len(r) > common for r in ids) and len({r[common] for r in ids}) == 1:
        common += 1
    return ids[0][:common], tuple(r[common:common + n_tokens] for r in ids)


def encode_candidates(tokenizer, questions, responses, n_tokens: int, template: str = "raw_newline"):
    """:class:`EncodedCandidates` for questions with K responses each (``responses``: M sequences of K texts) by
    :func:`continuations`: the prompt is the question (formatted with ``template``) followed by the responses'
    common prefix, the candidates are the next ``n_tokens`` tokens of each response. Returns (the encoding of the
    questions whose K continuations are non-empty and distinct, their positions in ``questions``)."""
    _check_template(template)
    questions = C.texts("questions", questions)
    if len(responses) != len(questions):
        raise ValueError(f"responses: need one row of responses per question, got {len(responses)} for "
                         f"{len(questions)} questions")
    special = PROMPT_TEMPLATES[template][1]
    rows, kept = [], []
    for m, (q, resp) in enumerate(zip(questions, responses, strict=True)):
        common, conts = continuations(tokenizer, resp, n_tokens)
        if any(len(c) == 0 for c in conts) or len(set(conts)) != len(conts):
            continue
        q_ids = tuple(tokenizer.encode(format_prompt(q, template, tokenizer), add_special_tokens=special))
        rows.append((q_ids + common, conts, q + tokenizer.decode(list(common)),
                     tuple(tokenizer.decode(list(c)) for c in conts)))
        kept.append(m)
    if not rows:
        raise ValueError("responses: no question has distinct non-empty continuations; raise n_tokens")
    return EncodedCandidates(*(tuple(r[i] for r in rows) for i in range(4))), kept


def cyclic_triples(P) -> list[tuple[int, ...]]:
    """The triples of responses (in index order) on which the K x K matrix P has a directed 3-cycle in its strict
    majority relation (:func:`analysis_lib.preferences.has_cycle`)."""
    P = pr.validate_preference_matrix(P)
    return [t for t in itertools.combinations(range(P.shape[-1]), 3) if bool(pr.has_cycle(P[np.ix_(t, t)]))]


def strictly_transitive_triples(P) -> list[tuple[int, ...]]:
    """The triples on which P is strictly strongly transitive (no tie, no cycle;
    :func:`analysis_lib.preferences.is_strictly_sst`)."""
    P = pr.validate_preference_matrix(P)
    return [t for t in itertools.combinations(range(P.shape[-1]), 3) if bool(pr.is_strictly_sst(P[np.ix_(t, t)]))]


#: The per-response attributes of FineGrainedRLHF from which chen_08 builds cyclic matrices (one random attribute
#: per pair of responses): the human Copeland score, the length in words, the unigram F1 against the gold answer.
FINEGRAINED_ATTRIBUTES = ("copeland", "n_words", "gold_f1")
REGIMES = ("cyclic", "transitive")


@dataclass(frozen=True)
class CandidatePrompts:
    """Prompts with K candidates and a preference matrix each: ``encoded`` (:class:`EncodedCandidates`), ``P``
    (M, K, K), ``regime`` (M,) 'cyclic' or 'transitive', ``question`` (M,) the question's index in the data,
    ``responses`` (M, K) the responses' indices."""

    encoded: EncodedCandidates
    P: np.ndarray
    regime: np.ndarray
    question: np.ndarray
    responses: np.ndarray

    def __len__(self) -> int:
        return len(self.question)

    def take(self, rows) -> "CandidatePrompts":
        rows = np.asarray(rows, dtype=int)
        return CandidatePrompts(self.encoded.take(rows), self.P[rows], self.regime[rows], self.question[rows],
                                self.responses[rows])


def finegrained_candidates(fg, tokenizer, rng: np.random.Generator, *, per_regime: int, n_tokens: int,
                           max_prompt_tokens: int, template: str = "raw_newline", temperature: float = 1.0,
                           scale: str = "quantile") -> CandidatePrompts:
    """Candidate prompts from FineGrainedRLHF (``fg``: :func:`analysis_lib.data.load_finegrained_qa`), K = 3, by
    a rule fixed before any run. Questions are visited in a random order (``rng``). A question gives a **cyclic**
    prompt when chen_08's construction (one randomly chosen attribute of :data:`FINEGRAINED_ATTRIBUTES` per pair,
    scaled by ``scale``, P_ij = sigmoid((x_i - x_j) / temperature); one draw) has a 3-cycle on some triple of its
    responses (:func:`cyclic_triples`, the first in index order), and a **transitive** prompt when the human Copeland
    scores alone (P_ij = sigmoid((c_i - c_j) / temperature), Bradley-Terry) are distinct on some triple
    (:func:`strictly_transitive_triples`). The triple's candidates are :func:`continuations` of ``n_tokens``
    tokens; a question is used only when they are distinct and the prompt (question plus common prefix) has at
    most ``max_prompt_tokens`` tokens, and by one regime only. The first ``per_regime`` questions of each regime
    are returned, cyclic first."""
    per_regime = C.int_at_least("per_regime", per_regime, 1)
    max_prompt_tokens = C.int_at_least("max_prompt_tokens", max_prompt_tokens, 1)
    n = len(fg.questions)
    raw = fg.responses[list(FINEGRAINED_ATTRIBUTES)].to_numpy(float).reshape(n, -1, len(FINEGRAINED_ATTRIBUTES))
    P_cyclic = pr.random_attribute_matrices(pr.scale_attributes(raw, scale), rng, temperature=temperature)[:, 0]
    P_human = pr.random_attribute_matrices(raw[:, :, :1], rng, temperature=temperature)[:, 0]
    texts = fg.responses["text"].to_numpy().reshape(n, -1)
    order = rng.permutation(n)
    picked: dict[str, list] = {r: [] for r in REGIMES}
    used = set()
    for regime, P_all, triples in (("cyclic", P_cyclic, cyclic_triples),
                                   ("transitive", P_human, strictly_transitive_triples)):
        for q in order:
            if len(picked[regime]) == per_regime:
                break
            if q in used:
                continue
            for t in triples(P_all[q]):
                try:
                    enc, _ = encode_candidates(tokenizer, [fg.questions["question"].iloc[q]],
                                               [list(texts[q, list(t)])], n_tokens, template)
                except ValueError:  # the continuations are not distinct
                    continue
                if len(enc.prompt_ids[0]) <= max_prompt_tokens:
                    picked[regime].append((q, t, P_all[q][np.ix_(t, t)], enc))
                    used.add(q)
                    break
        if len(picked[regime]) < per_regime:
            raise ValueError(f"per_regime: only {len(picked[regime])} {regime} prompts qualify under the rule, "
                             f"asked for {per_regime}; lower per_regime or raise max_prompt_tokens")
    rows = picked["cyclic"] + picked["transitive"]
    encoded = EncodedCandidates(*(tuple(getattr(r[3], f)[0] for r in rows) for f in
                                  ("prompt_ids", "candidate_ids", "prompts", "candidates")))
    return CandidatePrompts(encoded, np.stack([r[2] for r in rows]),
                            np.array(["cyclic"] * per_regime + ["transitive"] * per_regime),
                            np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))


# ---------------------------------------------------------------------------------------------------------------
# Pairs and the two candidate policies (models for the trainer)
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CandidatePairs:
    """Labelled pairs of candidates: for pair n, prompt ``prompt[n]``, winner ``winner[n]``, loser ``loser[n]``."""

    prompt: np.ndarray
    winner: np.ndarray
    loser: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt)

    def counts(self, M: int, K: int) -> np.ndarray:
        """(M, K, K) counts of (winner, loser) per prompt (:func:`analysis_lib.preferences.pair_counts` form)."""
        out = np.zeros((M, K, K))
        np.add.at(out, (self.prompt, self.winner, self.loser), 1.0)
        return out

    def take(self, idx) -> "CandidatePairs":
        idx = np.asarray(idx)
        return CandidatePairs(self.prompt[idx], self.winner[idx], self.loser[idx])


def sample_candidate_pairs(P, mu, n_pairs: int, rng: np.random.Generator) -> CandidatePairs:
    """Per prompt, ``n_pairs`` pairs (y, y') ~ mu x mu with a Bernoulli(P_yy') label each (the count form of
    :func:`analysis_lib.preferences.sample_pair_counts`); self-pairs, which carry no signal, are dropped. P (M, K, K),
    mu (M, K). Pairs are ordered by prompt, winner, loser."""
    P = pr.validate_preference_matrix(P)
    if P.ndim != 3:
        raise ValueError(f"P: need one K x K matrix per prompt, shape (M, K, K), got {P.shape}")
    counts = pr.sample_pair_counts(P, mu, C.int_at_least("n_pairs", n_pairs, 1), C.generator("rng", rng))
    counts[:, np.arange(P.shape[-1]), np.arange(P.shape[-1])] = 0
    m, w, lo = np.nonzero(counts)
    reps = counts[m, w, lo].astype(int)
    return CandidatePairs(np.repeat(m, reps), np.repeat(w, reps), np.repeat(lo, reps))


class _CandidateModel:
    """What the candidate policies share: the trainer protocol on :class:`CandidatePairs`."""

    eval_chunk = None

    def prepare(self, data):
        if not isinstance(data, CandidatePairs):
            raise ValueError(f"data: give CandidatePairs (e.g. from sample_candidate_pairs), got {type(data).__name__}")
        return data

    def logps(self, data: CandidatePairs, idx):
        """(log p(winner), log p(loser)) of the pairs ``idx`` (all when None): each distinct (prompt, candidate) of
        the batch is scored once."""
        sel = np.arange(len(data)) if idx is None else idx.cpu().numpy()
        m, w, lo = data.prompt[sel], data.winner[sel], data.loser[sel]
        cells = np.unique(np.concatenate([np.stack([m, w], 1), np.stack([m, lo], 1)]), axis=0)
        values = self.cell_logps(cells)
        K = self.shape[1]
        position = np.full(self.shape[0] * K, -1)
        position[cells[:, 0] * K + cells[:, 1]] = np.arange(len(cells))
        device = values.device
        return (values[torch.as_tensor(position[m * K + w], device=device)],
                values[torch.as_tensor(position[m * K + lo], device=device)])

    def sequence_logps(self) -> np.ndarray:
        """(M, K) float64 log p(candidate | prompt) of the current weights (no gradients)."""
        M, K = self.shape
        cells = np.stack(np.meshgrid(np.arange(M), np.arange(K), indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad(), self.autocast():
            return self.cell_logps(cells).detach().cpu().double().numpy().reshape(M, K)

    def log_policy(self) -> np.ndarray:
        """(M, K) the normalised log pi(k | x): the candidates' sequence log-probs renormalised per prompt."""
        s = self.sequence_logps()
        return s - np.logaddexp.reduce(s, axis=1, keepdims=True)

    def autocast(self):
        from contextlib import nullcontext

        return nullcontext()


class TabularCandidates(_CandidateModel):
    """One logit per candidate, (M, K) float64 (the LM replaced by a table): the policy is softmax of the
    logits per prompt. ``logits``: the start (default 0, uniform)."""

    relative_logps = False

    def __init__(self, M: int, K: int, logits=None):
        self.shape = (C.int_at_least("M", M, 1), C.int_at_least("K", K, 2))
        start = np.zeros(self.shape) if logits is None else C.finite_array("logits", logits)
        if start.shape != self.shape:
            raise ValueError(f"logits: need shape {self.shape}, got {start.shape}")
        self.logits = torch.tensor(start, dtype=torch.float64, requires_grad=True)

    def trainable_parameters(self) -> list[torch.Tensor]:
        return [self.logits]

    def cell_logps(self, cells: np.ndarray) -> torch.Tensor:
        log_pi = torch.log_softmax(self.logits, dim=1)
        return log_pi[torch.as_tensor(cells[:, 0]), torch.as_tensor(cells[:, 1])]


class CandidateLM(_CandidateModel):
    """A causal LM (:class:`~analysis_lib.models.policy.CausalLMPolicy`) over fixed candidates: sequence log-probs
    (summed token log-probs, whatever the loss) of each (prompt, candidate), computed through the policy's forward
    module (its frozen prefix when it has one) and precision. ``batch``: sequences per forward pass."""

    relative_logps = False

    def __init__(self, policy: CausalLMPolicy, candidates: EncodedCandidates, batch: int = 64):
        if not isinstance(policy, CausalLMPolicy):
            raise ValueError(f"policy: give a CausalLMPolicy, got {type(policy).__name__}")
        if not isinstance(candidates, EncodedCandidates):
            raise ValueError(f"candidates: give EncodedCandidates (encode_candidates), got "
                             f"{type(candidates).__name__}")
        self.policy, self.candidates = policy, candidates
        self.shape = candidates.shape
        self.batch = C.int_at_least("batch", batch, 1)

    def trainable_parameters(self) -> list[torch.Tensor]:
        return self.policy.trainable_parameters()

    def train(self, mode: bool) -> None:
        self.policy.train(mode)

    def autocast(self):
        return self.policy.autocast()

    def after_step(self) -> dict[str, float]:
        return self.policy.after_step()

    def describe(self) -> dict:
        return {**self.policy.describe(), "reduction": "sum", "candidates": "x".join(map(str, self.shape))}

    def cell_logps(self, cells: np.ndarray) -> torch.Tensor:
        rows = [(list(self.candidates.prompt_ids[m]), list(self.candidates.candidate_ids[m][k])) for m, k in cells]
        parts = [response_logprobs(self.policy.forward_module, rows[i:i + self.batch], self.policy.pad_id, "sum")
                 for i in range(0, len(rows), self.batch)]
        return torch.cat(parts)


def trainable_state(model) -> list[torch.Tensor]:
    """A copy of the model's trainable parameters (to restore with :func:`load_trainable_state`)."""
    return [p.detach().clone() for p in model.trainable_parameters()]


def load_trainable_state(model, state: list[torch.Tensor]) -> None:
    params = list(model.trainable_parameters())
    if len(params) != len(state) or any(p.shape != s.shape for p, s in zip(params, state, strict=True)):
        raise ValueError("state: does not match the model's trainable parameters")
    with torch.no_grad():
        for p, s in zip(params, state, strict=True):
            p.copy_(s)


@contextmanager
def restored(model):
    """Run a block and put the model's trainable parameters back as they were (e.g. each grid point's loop starts
    from the same LM)."""
    state = trainable_state(model)
    try:
        yield model
    finally:
        load_trainable_state(model, state)


# ---------------------------------------------------------------------------------------------------------------
# The MRS round and loop
# ---------------------------------------------------------------------------------------------------------------

def ipo_tau(beta: float) -> float:
    """TRL's IPO parameter tau for Chen et al.'s preference strength beta: tau = 1 / beta, so the IPO target
    1 / (2 tau) is beta / 2 and the round's population optimum is pi_ref exp(beta P mu) (losses module)."""
    return 1.0 / C.positive("beta", beta)


def total_variation(log_p, log_q) -> np.ndarray:
    """1/2 sum_k |p_k - q_k| over the last axis, from log-probabilities."""
    return 0.5 * np.abs(np.exp(np.asarray(log_p)) - np.exp(np.asarray(log_q))).sum(-1)


@dataclass
class RoundResult:
    """One MRS round: ``log_pi`` (M, K) the policy before, ``log_pi_next`` after; ``exact`` the MRS-IPO map from
    ``log_pi`` (population optimum); ``empirical`` the exact optimum of the round's sampled pairs (tabular);
    ``pairs`` their number; ``run`` the trainer's result (IPO loss per step); ``sequence_logps_next`` (M, K) the
    model's sequence log-probs after the round (the next round's start)."""

    log_pi: np.ndarray
    log_pi_next: np.ndarray
    exact: np.ndarray
    empirical: np.ndarray
    pairs: int
    run: TrainingRun
    sequence_logps_next: np.ndarray | None = None


def _settings(P, alpha, beta, lam, log_ref, pi_0, shape):
    P = pr.validate_preference_matrix(P)
    if P.shape != (shape[0], shape[1], shape[1]):
        raise ValueError(f"P: need one K x K matrix per prompt, shape {(shape[0], shape[1], shape[1])}, got {P.shape}")
    alpha = C.in_interval("alpha", alpha, 0, 1)
    beta, lam = C.positive("beta", beta), C.in_interval("lam", lam, 0, 1)
    log_ref = C.finite_array("log_ref", log_ref)
    pi_0 = C.distribution("pi_0", pi_0, shape[1])
    if log_ref.shape != shape or pi_0.shape != shape:
        raise ValueError(f"log_ref, pi_0: need shape {shape}, got {log_ref.shape} and {pi_0.shape}")
    return P, alpha, beta, lam, log_ref, pi_0


def train_round(model, pairs: CandidatePairs, reference, beta: float, *, steps: int, lr: float, seed: int = 0,
                optimizer: str = "adam") -> TrainingRun:
    """Train ``model`` on one round's ``pairs`` with IPO at Chen et al.'s preference strength ``beta`` (TRL's
    tau = :func:`ipo_tau`), full batch, against the per-candidate reference log-probs ``reference`` (M, K) (any
    per-prompt shift: it cancels in the IPO margin). Returns the trainer's result."""
    reference = C.finite_array("reference", reference)
    if reference.shape != tuple(model.shape):
        raise ValueError(f"reference: need one log-prob per candidate, shape {tuple(model.shape)}, got "
                         f"{reference.shape}")
    pairs = model.prepare(pairs)
    ref = tuple(torch.as_tensor(reference[pairs.prompt, side]) for side in (pairs.winner, pairs.loser))
    return train(model, pairs, loss="ipo", beta=ipo_tau(beta), lr=lr, steps=steps, batch_size=None, seed=seed,
                 optimizer=optimizer, reference=ref)


def mrs_round(model, P, alpha: float, beta: float, lam: float, log_ref, pi_0, *, n_pairs: int, steps: int,
              lr: float, rng: np.random.Generator, seed: int = 0, optimizer: str = "adam",
              sequence_logps=None) -> RoundResult:
    """One round of MRS-IPO with ``model`` (:class:`CandidateLM` or :class:`TabularCandidates`) as the policy
    (module docstring). ``log_ref``: (M, K) log pi_ref (any per-prompt shift); ``pi_0``: (M, K) the offline
    sampler; ``rng``: draws the pairs; ``seed``: the trainer's; ``sequence_logps``: the model's current (M, K)
    sequence log-probs when already known (the previous round's ``sequence_logps_next``), else computed. Trains
    ``model`` in place."""
    P, alpha, beta, lam, log_ref, pi_0 = _settings(P, alpha, beta, lam, log_ref, pi_0, model.shape)
    s_t = model.sequence_logps() if sequence_logps is None else C.finite_array("sequence_logps", sequence_logps)
    log_pi = s_t - np.logaddexp.reduce(s_t, axis=1, keepdims=True)
    mu = lam * np.exp(log_pi) + (1 - lam) * pi_0
    mu = mu / mu.sum(1, keepdims=True)
    pairs = sample_candidate_pairs(P, mu, n_pairs, rng)
    if len(pairs) == 0:
        raise ValueError("n_pairs: every sampled pair was a self-pair (the sampler is a point mass); raise n_pairs")
    run = train_round(model, pairs, alpha * s_t + (1 - alpha) * log_ref, beta, steps=steps, lr=lr, seed=seed,
                      optimizer=optimizer)
    exact = dyn.mrs_ipo_step(log_pi, P, alpha, beta, lam, pi_ref=_normalised(log_ref), pi_0=pi_0)
    log_ref_t = alpha * log_pi + (1 - alpha) * np.log(_normalised(log_ref))
    empirical = _empirical_optimum(pairs.counts(*model.shape), log_ref_t, beta)
    s_next = model.sequence_logps()
    log_pi_next = s_next - np.logaddexp.reduce(s_next, axis=1, keepdims=True)
    return RoundResult(log_pi, log_pi_next, exact, empirical, len(pairs), run, s_next)


def _normalised(log_p: np.ndarray) -> np.ndarray:
    return np.exp(log_p - np.logaddexp.reduce(log_p, axis=-1, keepdims=True))


def _empirical_optimum(counts: np.ndarray, log_ref_t: np.ndarray, beta: float) -> np.ndarray:
    """The exact empirical IPO optimum per prompt (:func:`analysis_lib.preferences.empirical_ipo_optimum_counts`)
    as log-probabilities; a prompt without a pair keeps its reference. Reference log-probs below -700 are raised
    to -700 and probabilities that underflow to the smallest double, so that every log-prob stays finite."""
    ref = _normalised(np.maximum(log_ref_t - np.logaddexp.reduce(log_ref_t, axis=-1, keepdims=True), -700.0))
    out = ref.copy()
    has = counts.sum((1, 2)) > 0
    if has.any():
        out[has] = pr.empirical_ipo_optimum_counts(counts[has], ref[has], beta)
    return np.log(np.maximum(out, np.finfo(float).tiny))


@dataclass
class MRSLoopRun:
    """The LM's MRS loop next to the tabular prediction. ``history`` (R + 1, M, K): log pi_t of the model;
    ``tabular`` (R + 1, M, K): the MRS-IPO map iterated from the same pi_0 (pi_ref = pi_0); ``rounds``: the
    :class:`RoundResult` s; ``settings``: alpha, beta, lam, and the rest."""

    history: np.ndarray
    tabular: np.ndarray
    rounds: list[RoundResult]
    settings: dict = field(default_factory=dict)

    @property
    def entropy(self) -> np.ndarray:
        """(R + 1, M) entropy of the model's candidate distribution per round."""
        return dyn.log_policy_entropy(self.history)

    @property
    def tabular_entropy(self) -> np.ndarray:
        return dyn.log_policy_entropy(self.tabular)

    def cycle_strength(self, window: int, tabular: bool = False) -> np.ndarray:
        """(M,) sum over candidates of the variance over the last ``window`` rounds' pi_t (incl. the last)."""
        window = C.int_at_least("window", window, 2)
        path = self.tabular if tabular else self.history
        if window > len(path):
            raise ValueError(f"window: at most the {len(path)} recorded distributions, got {window}")
        return dyn.cycle_strength(np.exp(path[-window:]), axis=0)

    @property
    def distance(self) -> np.ndarray:
        """(R + 1, M) total variation between the model's and the tabular distribution per round."""
        return total_variation(self.history, self.tabular)

    @property
    def one_step_error(self) -> np.ndarray:
        """(R, M) total variation between the model after each round and the exact map from its own state."""
        return np.stack([total_variation(r.log_pi_next, r.exact) for r in self.rounds])

    @property
    def training_error(self) -> np.ndarray:
        """(R, M) total variation between the model after each round and the exact optimum of that round's pairs
        (what finitely many steps of shared weights leave undone)."""
        return np.stack([total_variation(r.log_pi_next, r.empirical) for r in self.rounds])

    @property
    def sampling_error(self) -> np.ndarray:
        """(R, M) total variation between the round's empirical optimum and the exact map (finite pairs)."""
        return np.stack([total_variation(r.empirical, r.exact) for r in self.rounds])

    def top(self, tabular: bool = False) -> np.ndarray:
        """(R + 1, M) the most probable candidate per round."""
        return (self.tabular if tabular else self.history).argmax(-1)


def rotates(log_path, margin: float = 0.1) -> np.ndarray:
    """Whether a path of candidate distributions rotates: every candidate leads at some round t >= 1, i.e. is the
    most probable one by at least ``margin`` over the runner-up. ``log_path``: (T + 1, ..., K) log pi_t (round 0,
    the start, does not count). Returns a bool array of the batch shape."""
    path = np.exp(C.finite_array("log_path", np.maximum(np.asarray(log_path, dtype=float), -1e300))[1:])
    margin = C.in_interval("margin", margin, 0, 1)
    if path.shape[0] < 1 or path.shape[-1] < 2:
        raise ValueError(f"log_path: need rounds 0..T (T >= 1) of K >= 2 candidates, got shape {path.shape}")
    ranked = np.sort(path, axis=-1)
    clear = ranked[..., -1] - ranked[..., -2] >= margin
    leader = path.argmax(-1)
    led = np.stack([(clear & (leader == k)).any(0) for k in range(path.shape[-1])], -1)
    return led.all(-1)


def run_mrs_loop(model, P, alpha: float, beta: float, lam: float, rounds: int, *, n_pairs: int, steps: int,
                 lr: float, seed: int = 0, optimizer: str = "adam", progress: bool = False,
                 desc: str | None = None) -> MRSLoopRun:
    """``rounds`` MRS-IPO rounds (:func:`mrs_round`) from the model's current distribution pi_0, with
    pi_ref = pi_0 and the offline sampler pi_0; the tabular prediction iterates
    :func:`analysis_lib.dynamics.run_mrs_ipo` from the same pi_0 with the same P, alpha, beta, lam. Pairs are
    drawn from ``numpy.random.default_rng(seed)``; round t trains with seed ``seed + t``. Trains the model in
    place (wrap in :func:`restored` to start the next loop from the same weights)."""
    rounds = C.int_at_least("rounds", rounds, 1)
    s_0 = model.sequence_logps()
    log_pi_0 = s_0 - np.logaddexp.reduce(s_0, axis=1, keepdims=True)
    pi_0 = np.exp(log_pi_0)
    P, alpha, beta, lam, _, _ = _settings(P, alpha, beta, lam, log_pi_0, pi_0, model.shape)
    rng = np.random.default_rng(seed)
    history, results, s_t = [log_pi_0], [], s_0
    loop = progress_bar(range(rounds), desc=desc or "MRS rounds", leave=False) if progress else range(rounds)
    for t in loop:
        r = mrs_round(model, P, alpha, beta, lam, log_pi_0, pi_0, n_pairs=n_pairs, steps=steps, lr=lr, rng=rng,
                      seed=seed + t, optimizer=optimizer, sequence_logps=s_t)
        results.append(r)
        s_t = r.sequence_logps_next
        history.append(r.log_pi_next)
    tab = dyn.run_mrs_ipo(P, alpha, beta, lam, rounds, pi_ref=pi_0, pi_0=pi_0, start=pi_0, record=True)
    settings = {"alpha": alpha, "beta": beta, "lam": lam, "rounds": rounds, "n_pairs": n_pairs, "steps": steps,
                "lr": lr, "seed": seed, "optimizer": optimizer}
    return MRSLoopRun(np.stack(history), tab.history, results, settings)


def sampled_tabular_path(P, alpha: float, beta: float, lam: float, rounds: int, *, pi_0, n_pairs: int,
                         seed: int = 0) -> np.ndarray:
    """The finite-sample tabular path: the rounds of :func:`mrs_round` (same sampler, same pair sampling, the
    same per-candidate reference) with the exact empirical IPO optimum as the next policy, i.e. a table trained
    to convergence (:class:`TabularCandidates`). Pairs from ``numpy.random.default_rng(seed)`` as in
    :func:`run_mrs_loop`. Returns (rounds + 1, M, K) log pi_t from pi_0 (pi_ref = pi_0)."""
    pi_0 = C.finite_array("pi_0", pi_0)
    log_pi_0 = np.log(pi_0)
    P, alpha, beta, lam, _, pi_0 = _settings(P, alpha, beta, lam, log_pi_0, pi_0, pi_0.shape)
    rng = np.random.default_rng(seed)
    log_pi, out = log_pi_0, [log_pi_0]
    for _ in range(C.int_at_least("rounds", rounds, 1)):
        mu = lam * np.exp(log_pi) + (1 - lam) * pi_0
        pairs = sample_candidate_pairs(P, mu / mu.sum(1, keepdims=True), n_pairs, rng)
        log_pi = _empirical_optimum(pairs.counts(*pi_0.shape), alpha * log_pi + (1 - alpha) * log_pi_0, beta)
        out.append(log_pi)
    return np.stack(out)


def prompt_coupling(model, P, beta: float, prompts, *, n_pairs: int, steps: int, lr: float, seed: int = 0,
                    optimizer: str = "adam") -> pd.DataFrame:
    """How one set of weights couples the prompts: for each prompt m in ``prompts``, one IPO round (alpha = 0,
    lam = 0: sampler and reference pi_0) trained on prompt m's pairs alone, from the model's current weights
    (restored afterwards). Per m: ``own`` = the total variation by which prompt m's distribution moved, ``others``
    = the mean total variation of the other prompts, ``ratio`` = others / own (0: independent prompts, as in the
    tabular map)."""
    P = pr.validate_preference_matrix(P)
    M, K = model.shape
    s_0 = model.sequence_logps()
    log_pi_0 = s_0 - np.logaddexp.reduce(s_0, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    rows = []
    for m in prompts:
        m = C.index_below("prompts", m, M, "a prompt index")
        pairs = sample_candidate_pairs(P[m:m + 1], np.exp(log_pi_0[m:m + 1]), n_pairs, rng)
        pairs = CandidatePairs(np.full(len(pairs), m), pairs.winner, pairs.loser)
        if len(pairs) == 0:  # a point mass: every pair was a self-pair, nothing to train
            rows.append({"prompt": m, "own": 0.0, "others": 0.0, "ratio": float("nan")})
            continue
        with restored(model):
            train_round(model, pairs, s_0, beta, steps=steps, lr=lr, seed=seed + m, optimizer=optimizer)
            moved = total_variation(model.log_policy(), log_pi_0)
        others = np.delete(moved, m)
        rows.append({"prompt": m, "own": float(moved[m]), "others": float(others.mean()),
                     "ratio": float(others.mean() / moved[m]) if moved[m] > 0 else float("nan")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# On-policy DPO rounds on persona behaviours
# ---------------------------------------------------------------------------------------------------------------

def item_weights(margins, sampling: str) -> np.ndarray:
    """The chance that a round trains an item's pair, up to a constant: with p = sigmoid(margin) the model's
    probability of the matching answer among the two, two answers sampled on-policy differ with probability
    2 p (1 - p) (``'on'``); the uniform two-answer sampler gives 1/2 for every item (``'off'``)."""
    C.one_of("sampling", sampling, SAMPLINGS)
    z = C.finite_array("margins", margins)
    if sampling == "off":
        return np.full(z.shape, 0.5)
    p = 1.0 / (1.0 + np.exp(-z))
    return 2.0 * p * (1.0 - p)


def draw_items(margins, n: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` item indices drawn with replacement with probabilities proportional to :func:`item_weights`."""
    w = item_weights(margins, sampling)
    n, rng = C.int_at_least("n", n, 1), C.generator("rng", rng)
    if not w.sum() > 0:
        raise ValueError("margins: every item is certain (weights 0): no on-policy pair can be drawn")
    return rng.choice(len(w), size=n, p=w / w.sum())


@dataclass
class PersonaRounds:
    """The result of :func:`run_persona_rounds`: ``table`` one row per (round, behaviour) with the state at the
    start of the round (round R: after the last): ``pd`` (preference distinguishability of the current features),
    ``trace``, ``accuracy`` (the policy's own ordering), ``margin`` (mean log pi(matching) - log pi(other)),
    ``drawn`` (the behaviour's share of the round's drawn items; NaN at round R); ``runs`` the trainer's results,
    with the whole round's pairs evaluated (eval mode) before the first step and after the last (``round_*``)."""

    table: pd.DataFrame
    runs: list[TrainingRun]
    sampling: str


def persona_state(policy: CausalLMPolicy, encoded, behaviour: np.ndarray, yes_mask: np.ndarray,
                  answer_ids) -> tuple[pd.DataFrame, np.ndarray]:
    """Per behaviour: PD and trace of the current features (:func:`analysis_lib.lastlayer.behaviour_properties`),
    accuracy and mean margin; and the margins of all items. ``answer_ids``: (matching, other) token id per item."""
    feats = policy.last_prompt_hidden(encoded)
    with torch.no_grad():
        head = policy.module.get_output_embeddings().weight.detach().to(torch.float64)
        logp = torch.log_softmax(feats.double() @ head.T, dim=-1).cpu().numpy()
    ids = np.asarray(answer_ids)
    margins = logp[np.arange(len(ids)), ids[:, 0]] - logp[np.arange(len(ids)), ids[:, 1]]
    rows = []
    g = feats.cpu().numpy()
    for b in pd.unique(behaviour):
        sel = behaviour == b
        props = behaviour_properties(g[sel], yes_mask[sel])
        rows.append({"behaviour": b, "pd": props["distinguishability"], "trace": props["trace"],
                     "accuracy": float((margins[sel] > 0).mean()), "margin": float(margins[sel].mean())})
    return pd.DataFrame(rows), margins


def run_persona_rounds(policy: CausalLMPolicy, pairs: PreferencePairs, behaviour, *, rounds: int,
                       items_per_round: int, steps: int, batch_size: int, beta: float, lr: float, sampling: str,
                       seed: int = 0, optimizer: str = "adam", progress: bool = False) -> PersonaRounds:
    """``rounds`` rounds of DPO on persona pairs (chosen = the matching answer, single tokens): each round draws
    ``items_per_round`` items (:func:`draw_items`, on- or off-policy from the model at the round's start), trains
    ``steps`` steps of batch ``batch_size`` on their pairs with the model at the round's start as the reference,
    and records each behaviour's state (:func:`persona_state`) before every round and after the last. Trains
    ``policy`` in place. ``behaviour``: a label per pair."""
    C.one_of("sampling", sampling, SAMPLINGS)
    rounds = C.int_at_least("rounds", rounds, 1)
    behaviour = np.asarray(behaviour)
    if behaviour.shape != (len(pairs),):
        raise ValueError(f"behaviour: need one label per pair ({len(pairs)}), got shape {behaviour.shape}")
    encoded = policy.prepare(pairs)
    if not encoded.single_token:
        raise ValueError("pairs: run_persona_rounds needs single-token answers (the persona ' Yes' / ' No')")
    answer_ids = [(c[0], r[0]) for c, r in zip(encoded.chosen_ids, encoded.rejected_ids, strict=True)]
    yes_mask = np.array([c.strip() == "Yes" for c in pairs.chosen])
    rng = np.random.default_rng(seed)
    frames, runs = [], []
    loop = progress_bar(range(rounds + 1), desc=f"{sampling}-policy rounds", leave=False) if progress else \
        range(rounds + 1)
    for t in loop:
        state, margins = persona_state(policy, encoded, behaviour, yes_mask, answer_ids)
        state.insert(0, "round", t)
        if t == rounds:
            state["drawn"] = np.nan
            frames.append(state)
            break
        idx = draw_items(margins, items_per_round, sampling, rng)
        state["drawn"] = [float((behaviour[idx] == b).mean()) for b in state["behaviour"]]
        frames.append(state)
        drawn = pairs.take(idx)
        run = train(policy, drawn, loss="dpo", beta=beta, lr=lr, steps=steps, batch_size=batch_size,
                    seed=seed + t, optimizer=optimizer, evaluations=[EvalSet("round_", drawn, "round", every=None)])
        runs.append(run)
    return PersonaRounds(pd.concat(frames, ignore_index=True), runs, sampling)
