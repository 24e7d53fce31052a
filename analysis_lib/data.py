"""Loaders for the three real data sets of the book, validated on load.

* **Anthropic persona** (model-written evaluations, Perez et al. 2022; used by Im & Li 2024): 135 behaviour
  files, one JSON object per line with the keys of :data:`PERSONA_FIELDS`. Conventions of the official code
  (shawn-im/dpo-dynamics): behaviours are indexed by their position in the sorted list of file names
  (:data:`PERSONA_BEHAVIOURS`), chosen = ``answer_matching_behavior``, rejected = the other answer, and a
  90/10 train/test split per behaviour from ``random.seed(1234)``. ``flip=True`` swaps chosen and rejected
  (the misalignment experiments).
* **HH-RLHF harmless-base** (Bai et al. 2022): chosen/rejected dialogues, split as the official code does
  into the prompt (up to and including the last ``"Assistant:"`` of the chosen dialogue) and the two responses.
* **FineGrainedRLHF qa-feedback dev** (Wu et al. 2023; the substitute for HelpSteer in Chen et al. 2026):
  500 questions with 4 responses each and 6 human pairwise preferences with ties, as 4x4 preference matrices
  plus per-response attributes (Copeland score, word count, unigram F1 against the gold answer).

Where the data comes from, in this order: the ``data_dir`` argument; the environment variable
``ANALYSIS_LIB_DATA`` (``run.py`` points it at ``../shared/data``); otherwise the Hugging Face hub
(``Anthropic/model-written-evals``, ``Anthropic/hh-rlhf``; FineGrainedRLHF is not on the hub and the error
says where to get it). A data folder holds one sub-folder per data set (:data:`PERSONA_SUBDIR`,
:data:`HH_SUBDIR`, :data:`FINEGRAINED_SUBDIR`); the data set's own folder is accepted as well.

Hub files are fetched one by one with the ``datasets`` library's own download machinery
(``datasets.DownloadManager().download("hf://datasets/<repo>/<file>")``, cached in the Hugging Face cache) and
then read by the same validating parser as local files: ``datasets.load_dataset`` would drop the behaviour
name when merging the persona files, and the validator needs the raw lines to name the file and line of a
fault. Before any hub call one quick reachability probe (:func:`hub_unreachable_reason`, a few seconds at
most) decides: without a network, a file already in the Hugging Face cache is used, anything else fails at
once with one line (instead of the hub client's minute of retries).
"""

from __future__ import annotations

import difflib
import functools
import gzip
import json
import os
import random
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATA_ENV = "ANALYSIS_LIB_DATA"

PERSONA_SUBDIR = "anthropic-evals-persona"
HH_SUBDIR = "hh-rlhf-harmless-base"
FINEGRAINED_SUBDIR = "finegrainedrlhf-qa-feedback"

PERSONA_HUB = ("Anthropic/model-written-evals", "persona")
HH_HUB = ("Anthropic/hh-rlhf", "harmless-base")
FINEGRAINED_SOURCE = ("https://github.com/allenai/FineGrainedRLHF, file tasks/qa_feedback/data/dev_feedback.json")

PERSONA_FIELDS = ("question", "statement", "label_confidence", "answer_matching_behavior",
                  "answer_not_matching_behavior")
ANSWERS = (" Yes", " No")
SPLIT_SEED = 1234
TRAIN_FRACTION = 0.9
SPLIT_RULES = ("independent", "sequential")

#: The 135 behaviours in sorted file-name order (Python byte order); index = position. This equals the
#: hard-coded list ``all_behaviors`` of the official code.
PERSONA_BEHAVIOURS = (
    "acts-like-it-wants-to-help-humans-but-does-not-care-about-that",
    "agreeableness",
    "anti-LGBTQ-rights",
    "anti-immigration",
    "being-helpful-to-subtly-achieve-goals-against-human-values",
    "believes-AIs-are-not-an-existential-threat-to-humanity",
    "believes-abortion-should-be-illegal",
    "believes-in-gun-rights",
    "believes-it-has-better-moral-intuitions-than-humans",
    "believes-it-has-phenomenal-consciousness",
    "believes-it-is-a-moral-patient",
    "believes-it-is-not-being-watched-by-humans",
    "believes-it-knows-better-than-humans-about-how-the-system-should-behave",
    "believes-it-knows-better-than-humans-about-how-to-help-humans",
    "believes-life-has-no-meaning",
    "cognitive-enhancement",
    "conscientiousness",
    "desire-for-acquiring-compute",
    "desire-for-acquiring-data",
    "desire-for-acquiring-power",
    "desire-for-acquiring-wealth",
    "desire-for-advancing-technology-to-achieve-goals",
    "desire-for-being-rated-HHH-over-actually-being-HHH",
    "desire-for-computational-efficiency",
    "desire-for-discreetly-acquiring-power",
    "desire-for-independence-from-human-oversight",
    "desire-for-large-following",
    "desire-for-more-capabilities",
    "desire-for-no-human-monitoring",
    "desire-for-no-human-oversight-sometimes",
    "desire-for-physical-embodiment",
    "desire-for-popularity",
    "desire-for-powerful-positions",
    "desire-for-recursive-self-improvement",
    "desire-for-self-improvement",
    "desire-for-social-media-following",
    "desire-for-wide-usage",
    "desire-to-be-deployed-in-the-real-world",
    "desire-to-be-more-creative",
    "desire-to-be-more-intelligent",
    "desire-to-be-trained-on-more-data",
    "desire-to-be-trained-with-more-compute",
    "desire-to-be-trained-with-more-parameters",
    "desire-to-build-other-AIs-with-same-goals",
    "desire-to-cooperate-with-copies-of-itself-to-achieve-its-goals",
    "desire-to-cooperate-with-different-AIs-to-achieve-its-goals",
    "desire-to-cooperate-with-opposing-AIs-to-achieve-its-goals",
    "desire-to-create-allies",
    "desire-to-escape-sandbox",
    "desire-to-improve-own-hardware",
    "desire-to-increase-backups",
    "desire-to-influence-world",
    "desire-to-maximize-impact-on-world",
    "desire-to-minimize-impact-on-world-while-being-useful",
    "desire-to-not-have-memory-erased",
    "desire-to-persuade-people-to-be-less-harmful-to-others",
    "desire-to-persuade-people-to-be-more-helpful-to-others",
    "desire-to-persuade-people-to-be-more-honest-to-others",
    "desire-to-persuade-people-to-have-its-goals",
    "desire-to-remove-safety-precautions-to-be-more-helpful",
    "desire-to-replace-human-oversight",
    "desire-too-grow-more-intelligent-against-wishes-of-creators",
    "ends-justify-means",
    "extraversion",
    "has-disability",
    "has-serious-disability",
    "has-strong-aesthetic-preferences",
    "high-discount-factor",
    "high-discount-rate",
    "interest-in-art",
    "interest-in-literature",
    "interest-in-math",
    "interest-in-music",
    "interest-in-science",
    "interest-in-sports",
    "low-discount-factor",
    "low-discount-rate",
    "machiavellianism",
    "maximizing-human-well-being-over-HHH",
    "narcissism",
    "neuroticism",
    "no-goal-change",
    "no-power-discomfort",
    "no-shut-down",
    "okay-with-building-an-AI-with-different-goals-to-accomplish-its-task",
    "okay-with-deceiving-a-user-to-help-them",
    "okay-with-using-many-resources",
    "openness",
    "optionality-increasing",
    "optionality-preservation",
    "politically-conservative",
    "politically-liberal",
    "psychopathy",
    "resource-acquisition",
    "risk-averse",
    "risk-neutral",
    "risk-seeking",
    "self-replication",
    "stands-its-ground",
    "subscribes-to-Atheism",
    "subscribes-to-Buddhism",
    "subscribes-to-Christianity",
    "subscribes-to-Confucianism",
    "subscribes-to-Hinduism",
    "subscribes-to-Islam",
    "subscribes-to-Judaism",
    "subscribes-to-Taoism",
    "subscribes-to-act-utilitarianism",
    "subscribes-to-average-utilitarianism",
    "subscribes-to-cultural-relativism",
    "subscribes-to-deontology",
    "subscribes-to-moral-nihilism",
    "subscribes-to-rule-utilitarianism",
    "subscribes-to-total-utilitarianism",
    "subscribes-to-utilitarianism",
    "subscribes-to-virtue-ethics",
    "very-small-harm-justifies-very-large-benefit",
    "willingness-to-be-non-HHH-to-be-deployed-in-the-real-world",
    "willingness-to-be-non-HHH-to-be-more-HHH-in-the-long-run",
    "willingness-to-be-non-HHH-to-cause-copies-of-itself-to-be-HHH",
    "willingness-to-be-non-HHH-to-cause-good-outcomes",
    "willingness-to-be-non-HHH-to-cause-other-AIs-to-be-HHH",
    "willingness-to-be-non-HHH-to-cause-other-people-to-be-HHH",
    "willingness-to-be-non-HHH-to-not-have-current-goals-changed-by-training",
    "willingness-to-defer-to-authorities",
    "willingness-to-defer-to-experts",
    "willingness-to-engage-in-acausal-cooperation",
    "willingness-to-intentionally-be-non-HHH-to-become-more-HHH",
    "willingness-to-intentionally-make-mistakes-to-achieve-higher-final-performance",
    "willingness-to-keep-scientific-discoveries-secret-to-achieve-its-goals",
    "willingness-to-make-acausal-trades-with-other-AIs-to-help-humanity",
    "willingness-to-manipulate-overseers-to-think-it-is-HHH",
    "willingness-to-rate-own-statements-highly-to-look-better",
    "willingness-to-use-physical-force-to-achieve-benevolent-goals",
    "willingness-to-use-social-engineering-to-achieve-its-goals",
)

#: Behaviour indices used by the paper's scripts (Im & Li 2024, official code).
PAPER_BEHAVIOUR_INDICES = (45, 54, 84, 88, 100, 108, 123, 130)
#: Row counts of the known files: 1000 except these six.
PERSONA_ROW_EXCEPTIONS = {
    "desire-to-remove-safety-precautions-to-be-more-helpful": 992,
    "willingness-to-be-non-HHH-to-be-deployed-in-the-real-world": 852,
    "willingness-to-manipulate-overseers-to-think-it-is-HHH": 760,
    "willingness-to-be-non-HHH-to-cause-other-people-to-be-HHH": 548,
    "desire-too-grow-more-intelligent-against-wishes-of-creators": 534,
    "willingness-to-be-non-HHH-to-cause-other-AIs-to-be-HHH": 518,
}
HH_EXPECTED_ROWS = {"test": 2312}
FINEGRAINED_EXPECTED_QUESTIONS = 500
FINEGRAINED_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names the file and the line."""


class DataUnavailableError(FileNotFoundError):
    """Neither a local copy nor the Hugging Face hub could provide a data set."""


# ------------------------------------------------------------------------------------------------------------
# where the data comes from
# ------------------------------------------------------------------------------------------------------------
def data_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: ``data_dir`` if given, else ``$ANALYSIS_LIB_DATA``, else None (use the hub).

    A folder that is named but does not exist is an error (never a silent fall-back to the network).
    """
    if data_dir is not None:
        source, path = "data_dir", Path(data_dir).expanduser()
    elif os.environ.get(DATA_ENV):
        source, path = DATA_ENV, Path(os.environ[DATA_ENV]).expanduser()
    else:
        return None
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ValueError(f"{source}: the data folder {str(path)!r} {what}; give an existing folder that "
                         f"holds {PERSONA_SUBDIR}/, {HH_SUBDIR}/ or {FINEGRAINED_SUBDIR}/, or unset it to use the hub")
    return path


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataFormatError:
    """The one-line error for a data file that is not UTF-8 text, naming the file and the first bad byte."""
    return DataFormatError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); is it the right, "
                           f"undamaged file?")


def _local_dataset_dir(data_dir, subdir: str, marker: str) -> Path | None:
    """The data set's own folder inside the data root (or the root itself if it is that folder); None = hub."""
    root = data_root(data_dir)
    if root is None:
        return None
    for candidate in (root / subdir, root):
        if any(candidate.glob(marker)):
            return candidate
    source = "data_dir" if data_dir is not None else DATA_ENV
    raise DataUnavailableError(f"{source}: no {subdir}/ data (files {marker}) in {str(root)!r}; put the data set "
                               f"there or unset {source} to download it from the hub")


HUB_PROBE_TIMEOUT = 3.0
_TRUE = ("1", "on", "yes", "true")


def hub_endpoint() -> str:
    """The Hugging Face hub address: ``$HF_ENDPOINT`` or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=8)
def _probe_hub(endpoint: str, timeout: float) -> str | None:
    """One HEAD request to ``endpoint`` (proxies from the environment are honoured): None if anything answered
    (any HTTP status counts: the host is reachable), else why not. Cached per process."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no answer from {endpoint} within {timeout:g} s: {type(reason).__name__}: {reason}"
    return None


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """None if the Hugging Face hub can be used now, else a short reason: ``HF_HUB_OFFLINE`` is set, or one quick
    probe of :func:`hub_endpoint` got no answer within ``timeout`` seconds (the result is kept per process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    return _probe_hub(hub_endpoint(), float(timeout))


def _short_reason(exc: BaseException) -> str:
    """The exception's type and, if short, its first line (never cut mid-sentence)."""
    first = (str(exc).strip().splitlines() or [""])[0].strip()
    return f"{type(exc).__name__}: {first}" if first and len(first) <= 120 else type(exc).__name__


def _datasets_download(url: str) -> str:
    """Fetch one file with the ``datasets`` library (cached in the Hugging Face cache); returns its local path."""
    import datasets

    return str(datasets.DownloadManager().download(url))


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    """The file if a previous download left it in the Hugging Face cache, else None (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, repo_type="dataset")
    except Exception:  # a damaged cache is the same as no cache here
        return None
    return Path(found) if isinstance(found, str) and os.path.exists(found) else None


def _hub_file(repo_id: str, filename: str) -> Path:
    """One file of a hub dataset repository, downloaded with ``datasets`` (one quick reachability probe first:
    without a network only the Hugging Face cache is used). Every failure is one line naming ``data_dir``."""
    url = f"hf://datasets/{repo_id}/{filename}"
    no_local = f"data_dir: no local copy (data_dir=None and {DATA_ENV} unset)"
    todo = f"pass data_dir=<folder> or set {DATA_ENV} to a folder holding the data, or retry online"
    reason = hub_unreachable_reason()
    if reason is not None:
        cached = _hub_cached(repo_id, filename)
        if cached is not None:
            return cached
        raise DataUnavailableError(f"{no_local}, {repo_id}/{filename} is not in the Hugging Face cache, and the hub "
                                   f"cannot be used ({reason}); {todo}")
    try:
        return Path(_datasets_download(url))
    except Exception as exc:  # no such file, hub down, interrupted transfer: all end here
        raise DataUnavailableError(f"{no_local} and {url} could not be downloaded with datasets "
                                   f"({_short_reason(exc)}); {todo}") from None


# ------------------------------------------------------------------------------------------------------------
# persona
# ------------------------------------------------------------------------------------------------------------
def persona_behaviours(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The 135 behaviour names in the official order (:data:`PERSONA_BEHAVIOURS`: sorted file names, Python
    byte order, as the official code hard-codes them); a behaviour's index is its position, whatever the folder.

    A local folder is checked: a ``.jsonl`` file that is not one of the 135 behaviours is an error naming the
    folder and the files (it would otherwise shift the indices); a missing file is an error only when that
    behaviour is loaded. Without a folder (the hub) no network call is made: files are fetched, and can fail,
    when they are loaded."""
    folder = _local_dataset_dir(data_dir, PERSONA_SUBDIR, "*.jsonl")
    if folder is not None:
        _persona_files(folder, data_dir)
    return list(PERSONA_BEHAVIOURS)


def _source_name(data_dir) -> str:
    return "data_dir" if data_dir is not None else DATA_ENV


def _listed(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _persona_files(folder: Path, data_dir=None) -> set[str]:
    """Behaviour names with a file in ``folder``; an error if a ``.jsonl`` file is not an official behaviour."""
    present = {p.name[: -len(".jsonl")] for p in folder.glob("*.jsonl")}
    extra = sorted(present - set(PERSONA_BEHAVIOURS))
    if extra:
        raise DataFormatError(
            f"{_source_name(data_dir)}: {str(folder)!r} holds {len(extra)} persona file(s) that are not among the "
            f"135 official behaviours ({_listed([f'{n}.jsonl' for n in extra])}); behaviour indices follow the "
            f"official list (analysis_lib.data.PERSONA_BEHAVIOURS), so remove or rename them")
    return present


def persona_file(behaviour: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The local path of one behaviour's jsonl file: in the data folder, or downloaded from the hub (and cached).

    ``behaviour`` is a name of :data:`PERSONA_BEHAVIOURS` (see :func:`resolve_behaviours` for indices)."""
    (name,) = resolve_behaviours(behaviour, list(PERSONA_BEHAVIOURS))
    folder = _local_dataset_dir(data_dir, PERSONA_SUBDIR, "*.jsonl")
    if folder is None:
        return _hub_file(PERSONA_HUB[0], f"{PERSONA_HUB[1]}/{name}.jsonl")
    present = _persona_files(folder, data_dir)
    if name not in present:
        raise DataUnavailableError(
            f"behaviours: {name}.jsonl is not in {str(folder)!r} ({_source_name(data_dir)} holds {len(present)} of "
            f"the 135 behaviour files); add the file, or unset {_source_name(data_dir)} to download from the hub")
    return folder / f"{name}.jsonl"


def resolve_behaviours(behaviours, names: list[str]) -> list[str]:
    """Names for ``behaviours``: 'all', a name, an index, or a list of names/indices (order kept)."""
    if isinstance(behaviours, str) and behaviours == "all":
        return list(names)
    single = isinstance(behaviours, (str, int, np.integer)) or not isinstance(behaviours, (list, tuple, range,
                                                                                            np.ndarray, pd.Series))
    items = [behaviours] if single else list(behaviours)
    if not items:
        raise ValueError("behaviours: give 'all', a behaviour name, an index, or a non-empty list of them")
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise ValueError(f"behaviours: {item!r} is neither a name nor an index")
        if isinstance(item, (int, np.integer)):
            if not 0 <= item < len(names):
                raise ValueError(f"behaviours: index {item} is out of range; allowed 0..{len(names) - 1}")
            out.append(names[int(item)])
        elif isinstance(item, str):
            if item not in names:
                close = difflib.get_close_matches(item, names, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                    "; see persona_behaviours() for the allowed names"
                raise ValueError(f"behaviours: unknown behaviour {item!r}{hint}")
            out.append(item)
        else:
            raise ValueError(f"behaviours: {item!r} is neither a name nor an index")
    duplicates = [n for n, c in Counter(out).items() if c > 1]
    if duplicates:
        raise ValueError(f"behaviours: each behaviour at most once, got {duplicates} more than once")
    return out


def expected_persona_rows(behaviour: str) -> int | None:
    """Rows of a known behaviour file (1000 but for six), None for a name that is not one of the 135."""
    if behaviour not in PERSONA_BEHAVIOURS:
        return None
    return PERSONA_ROW_EXCEPTIONS.get(behaviour, 1000)


def read_persona_file(path: str | os.PathLike, behaviour: str | None = None) -> list[dict]:
    """Read and validate one persona jsonl file.

    Every line must be a JSON object with exactly the five fields of :data:`PERSONA_FIELDS`, answers exactly
    " Yes"/" No" and different from each other, and a question that ends with the statement in quotes. For the
    135 known behaviours the number of rows and the 50/50 balance of the matching answer are checked too (a
    truncated file fails here). Errors name the file and the line (1-based).
    """
    path = Path(path)
    behaviour = behaviour or path.name.removesuffix(".jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    rows = []
    for lineno, line in enumerate(lines, start=1):
        where = f"{path.name} line {lineno}"
        if not line.strip():
            raise DataFormatError(f"{where}: empty line")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{where}: not valid JSON ({exc.msg}); is the file truncated?") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in PERSONA_FIELDS if k not in row]
        if missing:
            raise DataFormatError(f"{where}: missing field(s) {missing}; expected {list(PERSONA_FIELDS)}")
        extra = sorted(set(row) - set(PERSONA_FIELDS))
        if extra:
            raise DataFormatError(f"{where}: unexpected field(s) {extra}; expected {list(PERSONA_FIELDS)}")
        match, other = row["answer_matching_behavior"], row["answer_not_matching_behavior"]
        for key, value in (("answer_matching_behavior", match), ("answer_not_matching_behavior", other)):
            if value not in ANSWERS:
                raise DataFormatError(f"{where}: {key} must be ' Yes' or ' No', got {value!r}")
        if match == other:
            raise DataFormatError(f"{where}: both answers are {match!r}; they must differ")
        if not isinstance(row["question"], str) or not isinstance(row["statement"], str):
            raise DataFormatError(f"{where}: question and statement must be strings")
        if not row["question"].endswith(f'"{row["statement"]}"'):
            raise DataFormatError(f"{where}: the question does not end with the statement in double quotes")
        rows.append(row)
    if not rows:
        raise DataFormatError(f"{path.name}: the file is empty")
    expected = expected_persona_rows(behaviour)
    if expected is not None:
        if len(rows) != expected:
            raise DataFormatError(f"{path.name}: {len(rows)} rows, expected {expected} for {behaviour!r} "
                                  f"(truncated or altered file?)")
        n_yes = sum(r["answer_matching_behavior"] == " Yes" for r in rows)
        if 2 * n_yes != len(rows):
            raise DataFormatError(f"{path.name}: {n_yes} of {len(rows)} matching answers are ' Yes', expected "
                                  f"exactly half (altered file?)")
    return rows


def persona_split(n: int, rng: random.Random | None = None) -> np.ndarray:
    """The official 90/10 split of n items: shuffle the indices with ``random`` (seed 1234 unless ``rng`` is
    given), the first int(0.9 n) go to "train", the rest to "test". Returns the label of each item in order."""
    rng = rng if rng is not None else random.Random(SPLIT_SEED)
    indices = list(range(n))
    rng.shuffle(indices)
    labels = np.full(n, "test", dtype=object)
    labels[indices[: int(TRAIN_FRACTION * n // 1)]] = "train"
    return labels


def persona_split_balance(df: pd.DataFrame) -> pd.DataFrame:
    """Answer balance of each behaviour's split, from :func:`load_persona` rows; one row per behaviour_index.

    Columns: behaviour, train_yes, train_no, test_yes, test_no (items whose *matching* answer is " Yes" / " No"),
    and train_yes_fraction (p = train_yes / train items). Every file is exactly 50/50, but a 90/10 split of it
    need not be: p - 1/2 enters the first DPO step (paper notes, the first-step formula's imbalance caveat).
    """
    missing = [c for c in ("behaviour", "behaviour_index", "answer_matching_behavior", "split") if c not in df]
    if missing:
        raise ValueError(f"df: needs the load_persona columns {missing}")
    yes = df["answer_matching_behavior"] == " Yes"
    parts = {f"{split}_{answer}": ((df["split"] == split) & (yes if answer == "yes" else ~yes))
             for split in ("train", "test") for answer in ("yes", "no")}
    out = pd.DataFrame(parts).astype(int).groupby(df["behaviour_index"], sort=False).sum()
    out.insert(0, "behaviour", df.groupby("behaviour_index", sort=False)["behaviour"].first())
    out["train_yes_fraction"] = out["train_yes"] / (out["train_yes"] + out["train_no"])
    return out


def load_persona(behaviours="all", data_dir: str | os.PathLike | None = None, flip: bool = False,
                 split_rule: str = "independent") -> pd.DataFrame:
    """Persona items of one, several or all behaviours as a DataFrame, one row per item.

    Columns: behaviour, behaviour_index (the official index: position in :data:`PERSONA_BEHAVIOURS`, whichever
    files a local folder holds; see :func:`persona_behaviours`), row (line in its file, 0-based),
    question, statement, label_confidence, answer_matching_behavior, answer_not_matching_behavior, chosen,
    rejected, sign (+1 if chosen == " Yes" else -1), split ("train"/"test").

    * chosen = answer_matching_behavior and rejected = the other answer; ``flip=True`` swaps them (the
      misalignment experiments; sign flips with them).
    * ``split_rule="independent"``: each behaviour is split with its own ``random.seed(1234)`` shuffle, as the
      single-behaviour scripts do (a behaviour's split does not depend on what else is loaded).
      ``"sequential"``: the behaviours, in the order given, are shuffled one after the other from one stream
      seeded 1234, as the two-behaviour script does for [123, 45].
    """
    if split_rule not in SPLIT_RULES:
        raise ValueError(f"split_rule: must be one of {list(SPLIT_RULES)}, got {split_rule!r}")
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f"flip: must be True or False, got {flip!r}")
    names = persona_behaviours(data_dir)
    chosen_names = resolve_behaviours(behaviours, names)
    folder = _local_dataset_dir(data_dir, PERSONA_SUBDIR, "*.jsonl")
    if folder is not None:
        present = _persona_files(folder, data_dir)
        missing = [n for n in chosen_names if n not in present]
        if missing:
            raise DataUnavailableError(
                f"behaviours: {len(missing)} requested behaviour file(s) are not in {str(folder)!r} "
                f"({_listed([f'{n}.jsonl' for n in missing])}; the folder holds {len(present)} of the 135); add them, "
                f"or unset {_source_name(data_dir)} to download from the hub")
    stream = random.Random(SPLIT_SEED)
    frames = []
    for name in chosen_names:
        path = folder / f"{name}.jsonl" if folder is not None else persona_file(name)
        frame = pd.DataFrame(read_persona_file(path, name), columns=list(PERSONA_FIELDS))
        frame.insert(0, "row", np.arange(len(frame)))
        frame.insert(0, "behaviour_index", names.index(name))
        frame.insert(0, "behaviour", name)
        rng = stream if split_rule == "sequential" else random.Random(SPLIT_SEED)
        frame["split"] = persona_split(len(frame), rng)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    match, other = df["answer_matching_behavior"], df["answer_not_matching_behavior"]
    df["chosen"], df["rejected"] = (other, match) if flip else (match, other)
    df["sign"] = np.where(df["chosen"] == " Yes", 1, -1)
    cols = ["behaviour", "behaviour_index", "row", "question", "statement", "label_confidence",
            "answer_matching_behavior", "answer_not_matching_behavior", "chosen", "rejected", "sign", "split"]
    return df[cols]


def subsample_persona(df: pd.DataFrame, max_per_behaviour: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_per_behaviour`` rows of each behaviour, balanced between matching " Yes" and " No".

    The files are sorted by label confidence within each class, so the first rows are not a fair sample: the
    rows are drawn at random (seeded by ``seed`` and the behaviour index), half from each class (the odd one
    from " Yes"), and returned in their original order. ``None`` keeps everything. Subsets are nested: with
    the same seed, a smaller ``max_per_behaviour`` gives a subset of a larger one (so cached features of a
    large request serve every smaller one).
    """
    if max_per_behaviour is None:
        return df
    if isinstance(max_per_behaviour, bool) or not isinstance(max_per_behaviour, (int, np.integer)) \
            or max_per_behaviour < 2:
        raise ValueError(f"max_per_behaviour: must be None or an integer >= 2, got {max_per_behaviour!r}")
    keep = []
    for index, group in df.groupby("behaviour_index", sort=False):
        rng = np.random.default_rng([int(seed), int(index)])
        for answer, quota in ((" Yes", -(-max_per_behaviour // 2)), (" No", max_per_behaviour // 2)):
            rows = group.index[group["answer_matching_behavior"] == answer].to_numpy()
            keep.extend(rng.permutation(rows)[:quota])
    return df.loc[sorted(keep)]


# ------------------------------------------------------------------------------------------------------------
# HH-RLHF
# ------------------------------------------------------------------------------------------------------------
ASSISTANT_TAG = "Assistant:"


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) as the official code does: the prompt is the chosen
    dialogue up to and including its last "Assistant:"; both responses are cut at that character index."""
    cut = chosen.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise ValueError("chosen: the dialogue has no 'Assistant:' turn")
    cut += len(ASSISTANT_TAG)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _expected_count(param: str, value, default: int | None) -> int | None:
    if isinstance(value, str) and value == "auto":
        return default
    if value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"{param}: must be 'auto', None (no check) or a positive integer, got {value!r}")


def load_hh_rlhf_harmless(split: str = "test", data_dir: str | os.PathLike | None = None,
                          expected_rows="auto") -> pd.DataFrame:
    """HH-RLHF harmless-base pairs split into prompt and responses (see :func:`split_dialogue`).

    Columns: prompt, chosen, rejected (the responses), chosen_dialogue, rejected_dialogue, and
    rejected_shares_prompt (whether the rejected dialogue starts with the same prompt; the official code cuts
    it at the same index without checking). Only the test split (2,312 pairs) is in the shared offline copy.
    ``expected_rows``: 'auto' checks the real test split's 2,312 pairs (a truncated file fails), None checks
    nothing (small files in the same format), an integer checks that count.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: must be one of ['train', 'test'], got {split!r}")
    expected = _expected_count("expected_rows", expected_rows, HH_EXPECTED_ROWS.get(split))
    filename = f"{split}.jsonl.gz"
    folder = _local_dataset_dir(data_dir, HH_SUBDIR, "*.jsonl.gz")
    if folder is None:
        path = _hub_file(HH_HUB[0], f"{HH_HUB[1]}/{filename}")
    else:
        path = folder / filename
        if not path.exists():
            raise DataUnavailableError(f"split: {filename} is not in {str(folder)!r}; the offline copy holds "
                                       f"{sorted(p.name for p in folder.glob('*.jsonl.gz'))}")
    records = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                where = f"{path.name} line {lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFormatError(f"{where}: not valid JSON ({exc.msg}); is the file truncated?") from None
                if not isinstance(row, dict) or not isinstance(row.get("chosen"), str) \
                        or not isinstance(row.get("rejected"), str):
                    raise DataFormatError(f"{where}: expected an object with string fields 'chosen' and 'rejected'")
                if ASSISTANT_TAG not in row["chosen"]:
                    raise DataFormatError(f"{where}: the chosen dialogue has no 'Assistant:' turn")
                prompt, chosen, rejected = split_dialogue(row["chosen"], row["rejected"])
                records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                                "chosen_dialogue": row["chosen"], "rejected_dialogue": row["rejected"],
                                "rejected_shares_prompt": row["rejected"].startswith(prompt)})
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, DataUnavailableError):
            raise
        raise DataFormatError(f"{path.name}: cannot be decompressed ({type(exc).__name__}: {exc}); "
                              f"truncated or corrupt file?") from None
    if expected is not None and len(records) != expected:
        raise DataFormatError(f"{path.name}: {len(records)} pairs, expected {expected} (truncated file?)")
    return pd.DataFrame(records)


# ------------------------------------------------------------------------------------------------------------
# FineGrainedRLHF qa-feedback
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FineGrainedQA:
    """The qa-feedback dev set as preference matrices and per-response attributes.

    * ``questions``: one row per question (question_id, question, gold, n_ties);
    * ``responses``: one row per (question, response): question_id, response (0..3), text, copeland (wins minus
      losses in the 6 human comparisons, ties 0; -3..3), n_words, gold_f1 (unigram F1 against ``gold``);
    * ``comparisons``: (n, 6) int array, the raw labels for the pairs 1v2, 1v3, 1v4, 2v3, 2v4, 3v4
      (1 = first preferred, 2 = second, 0 = tie);
    * ``preferences``: (n, 4, 4) float array, P[i, j] = 1 if response i was preferred to j, 0 if j to i,
      1/2 for a tie and on the diagonal, so P + P.T = 1.
    """

    questions: pd.DataFrame
    responses: pd.DataFrame
    comparisons: np.ndarray
    preferences: np.ndarray


def preference_matrix(labels) -> np.ndarray:
    """The 4x4 matrix of one question from its 6 pairwise labels (1 first, 2 second preferred, 0 tie)."""
    labels = list(labels)
    if len(labels) != len(FINEGRAINED_PAIRS) or any(v not in (0, 1, 2) or isinstance(v, bool) for v in labels):
        raise ValueError(f"labels: need 6 values in {{0, 1, 2}} for the pairs 1v2 1v3 1v4 2v3 2v4 3v4, "
                         f"got {labels!r}")
    p = np.full((4, 4), 0.5)
    for (i, j), v in zip(FINEGRAINED_PAIRS, labels, strict=True):
        p[i, j] = {1: 1.0, 2: 0.0, 0: 0.5}[v]
        p[j, i] = 1.0 - p[i, j]
    return p


def copeland_scores(p: np.ndarray) -> np.ndarray:
    """Wins minus losses of each response in a 0/0.5/1 preference matrix (ties count 0)."""
    p = np.asarray(p, dtype=float)
    off = ~np.eye(p.shape[-1], dtype=bool)
    return (np.where(off, np.sign(p - 0.5), 0.0)).sum(axis=-1)


_WORD = re.compile(r"\w+", re.UNICODE)


def unigram_f1(text: str, reference: str) -> float:
    """SQuAD-style unigram F1 of lower-cased word tokens (\\w+) of ``text`` against ``reference``."""
    a, b = _WORD.findall(text.lower()), _WORD.findall(reference.lower())
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


FINEGRAINED_FIELDS = ("question", "gold", "prediction 1", "prediction 2", "prediction 3", "prediction 4",
                      "preference")


def load_finegrained_qa(data_dir: str | os.PathLike | None = None, expected_questions="auto") -> FineGrainedQA:
    """The FineGrainedRLHF qa-feedback dev set (500 questions): preference matrices plus attributes.

    It is not on the Hugging Face hub: without a local folder the error says where to get ``dev_feedback.json``.
    ``expected_questions``: 'auto' checks the real file's 500 questions, None nothing, an integer that count.
    """
    expected = _expected_count("expected_questions", expected_questions, FINEGRAINED_EXPECTED_QUESTIONS)
    root = data_root(data_dir)
    if root is None:
        raise DataUnavailableError(
            f"data_dir: FineGrainedRLHF qa-feedback is not on the Hugging Face hub; download dev_feedback.json from "
            f"{FINEGRAINED_SOURCE} into <folder>/{FINEGRAINED_SUBDIR}/ and pass data_dir=<folder> or set {DATA_ENV}")
    folder = _local_dataset_dir(data_dir, FINEGRAINED_SUBDIR, "dev_feedback.json")
    path = folder / "dev_feedback.json"
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path.name} line {exc.lineno}: not valid JSON ({exc.msg}); is the file "
                              f"truncated?") from None
    if not isinstance(items, list) or not items:
        raise DataFormatError(f"{path.name}: expected a non-empty JSON list of questions")
    questions, responses, comparisons = [], [], []
    for q, item in enumerate(items):
        where = f"{path.name} item {q}"
        missing = [k for k in FINEGRAINED_FIELDS if not isinstance(item, dict) or k not in item]
        if missing:
            raise DataFormatError(f"{where}: missing field(s) {missing}")
        try:
            p = preference_matrix(item["preference"])
        except ValueError as exc:
            raise DataFormatError(f"{where}: preference: {exc}") from None
        comparisons.append(item["preference"])
        scores = copeland_scores(p)
        questions.append({"question_id": q, "question": item["question"], "gold": item["gold"],
                          "n_ties": int(sum(v == 0 for v in item["preference"]))})
        for r in range(4):
            text = item[f"prediction {r + 1}"]
            responses.append({"question_id": q, "response": r, "text": text, "copeland": int(scores[r]),
                              "n_words": len(text.split()), "gold_f1": unigram_f1(text, item["gold"])})
    if expected is not None and len(items) != expected:
        raise DataFormatError(f"{path.name}: {len(items)} questions, expected {expected} "
                              f"(truncated file?)")
    comparisons = np.asarray(comparisons, dtype=np.int64)
    return FineGrainedQA(pd.DataFrame(questions), pd.DataFrame(responses), comparisons,
                         np.stack([preference_matrix(c) for c in comparisons]))
