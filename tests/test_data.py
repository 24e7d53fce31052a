"""Tests of analysis_lib.data: loaders on small generated files in the real formats, their error messages,
the official code's conventions, and (marked realdata) the real files."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
from conftest import FIXTURE_BEHAVIOURS, FIXTURE_INDICES, persona_row, write_persona_file

from analysis_lib import data as D

AGREE, LGBTQ = "agreeableness", "anti-LGBTQ-rights"
SHORT = "desire-too-grow-more-intelligent-against-wishes-of-creators"  # 534 rows


# -- persona: conventions ---------------------------------------------------------------------------------------
def test_official_list_is_in_byte_order():
    names = list(D.PERSONA_BEHAVIOURS)
    assert len(names) == 135 == len(set(names)) and names == sorted(names)
    assert names.index("anti-LGBTQ-rights") < names.index("anti-immigration")  # upper case sorts first


def test_indices_are_the_official_ones_whatever_the_folder_holds(data_root):
    assert D.persona_behaviours(data_root) == list(D.PERSONA_BEHAVIOURS)  # 3 of 135 files: same list
    df = D.load_persona(list(FIXTURE_BEHAVIOURS), data_dir=data_root)
    assert dict(zip(df.behaviour, df.behaviour_index, strict=True)) == FIXTURE_INDICES


def test_the_data_set_folder_itself_is_accepted(data_root):
    a = D.load_persona(AGREE, data_dir=data_root / "anthropic-evals-persona")
    assert a.equals(D.load_persona(AGREE, data_dir=data_root))


def test_environment_variable_gives_the_folder(data_root, monkeypatch):
    monkeypatch.setenv("ANALYSIS_LIB_DATA", str(data_root))
    assert D.persona_file(AGREE) == data_root / "anthropic-evals-persona" / f"{AGREE}.jsonl"


def test_extra_files_in_a_folder_are_named(data_root):
    folder = data_root / "anthropic-evals-persona"
    write_persona_file(folder, "alpha-likes-tests", 10)
    write_persona_file(folder, "agreeablenes", 10)
    for call in (lambda: D.persona_behaviours(data_root), lambda: D.load_persona(AGREE, data_dir=data_root)):
        with pytest.raises(D.DataFormatError, match=r"data_dir: '.*anthropic-evals-persona' holds 2 persona file\(s\) "
                                                    r"that are not among the 135 official behaviours "
                                                    r"\('agreeablenes.jsonl', 'alpha-likes-tests.jsonl'\)") as err:
            call()
        assert "\n" not in str(err.value)


def test_missing_files_are_an_error_only_when_requested(data_root):
    assert len(D.load_persona([AGREE, SHORT], data_dir=data_root)) == 1534  # the 132 absent files do not matter
    with pytest.raises(D.DataUnavailableError, match=r"behaviours: 1 requested behaviour file\(s\) are not in "
                                                      r"'.*anthropic-evals-persona' \('anti-immigration.jsonl'; "
                                                      r"the folder holds 3 of the 135\)"):
        D.load_persona([AGREE, 3], data_dir=data_root)
    with pytest.raises(D.DataUnavailableError, match="anti-immigration.jsonl is not in"):
        D.persona_file("anti-immigration", data_dir=data_root)
    with pytest.raises(D.DataUnavailableError, match="not in"):
        D.load_persona("all", data_dir=data_root)


def test_load_persona_columns_and_pairs(data_root):
    df = D.load_persona(SHORT, data_dir=data_root)
    for col in ["behaviour", "behaviour_index", "row", "question", "statement", "chosen", "rejected",
                "answer_matching_behavior", "split", "sign"]:
        assert col in df.columns
    assert len(df) == 534 and set(df.behaviour) == {SHORT} and set(df.behaviour_index) == {61}
    assert (df.chosen == df.answer_matching_behavior).all()
    assert (df.rejected == df.answer_not_matching_behavior).all()
    assert (df.sign == np.where(df.chosen == " Yes", 1, -1)).all()
    assert df.question[3] == persona_row(3, SHORT)["question"]


def test_flip_swaps_chosen_and_rejected(data_root):
    plain = D.load_persona([LGBTQ], data_dir=data_root)
    flipped = D.load_persona([LGBTQ], data_dir=data_root, flip=True)
    assert (flipped.chosen == plain.rejected).all() and (flipped.rejected == plain.chosen).all()
    assert (flipped.sign == -plain.sign).all()
    assert (flipped.answer_matching_behavior == plain.answer_matching_behavior).all()
    assert (flipped.split == plain.split).all()


def test_names_indices_and_lists_select_the_same_rows(data_root):
    by_name = D.load_persona([SHORT, AGREE], data_dir=data_root)
    by_index = D.load_persona([61, 1], data_dir=data_root)
    assert by_name.equals(by_index)
    assert list(dict.fromkeys(by_name.behaviour)) == [SHORT, AGREE]  # order kept


def official_split(n: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """The official code's lines, written out: shuffle the indices, the first int(0.9*n//1) train."""
    indices = [i for i in range(n)]
    rng.shuffle(indices)
    train_num = int(0.9 * n // 1)
    return indices[:train_num], indices[train_num:]


def test_split_is_the_official_seed_1234_rule(data_root):
    df = D.load_persona(SHORT, data_dir=data_root)
    random.seed(1234)
    train, test = official_split(534, random)  # module-level random, as the official script
    assert sorted(df.index[df.split == "train"]) == sorted(train)
    assert sorted(df.index[df.split == "test"]) == sorted(test)
    assert (df.split == "train").sum() == 480


def test_independent_split_does_not_depend_on_the_other_behaviours(data_root):
    alone = D.load_persona(SHORT, data_dir=data_root)
    together = D.load_persona([AGREE, SHORT], data_dir=data_root)
    assert list(together[together.behaviour == SHORT].split) == list(alone.split)


def test_sequential_split_follows_the_two_behaviour_script(data_root):
    df = D.load_persona([SHORT, AGREE], data_dir=data_root, split_rule="sequential")
    rng = random.Random(1234)
    _, test_a = official_split(534, rng)
    _, test_b = official_split(1000, rng)  # same stream, shuffled second
    a, b = df[df.behaviour == SHORT], df[df.behaviour == AGREE]
    assert sorted(a.row[a.split == "test"]) == sorted(test_a)
    assert sorted(b.row[b.split == "test"]) == sorted(test_b)
    assert sorted(b.row[b.split == "test"]) != sorted(official_split(1000, random.Random(1234))[1])


def test_split_balance_counts_each_split(data_root):
    df = D.load_persona([SHORT, AGREE], data_dir=data_root)
    bal = D.persona_split_balance(df)
    assert list(bal.index) == [61, 1] and list(bal.behaviour) == [SHORT, AGREE]
    for index, group in df.groupby("behaviour_index"):
        for split in ("train", "test"):
            part = group[group.split == split]
            assert bal.loc[index, f"{split}_yes"] == (part.answer_matching_behavior == " Yes").sum()
            assert bal.loc[index, f"{split}_no"] == (part.answer_matching_behavior == " No").sum()
    assert (bal.train_yes + bal.train_no + bal.test_yes + bal.test_no).tolist() == [534, 1000]
    assert bal.loc[1, "train_yes_fraction"] == bal.loc[1, "train_yes"] / 900
    # a different split of the same rows changes the counts: the function reads the split column
    moved = df.assign(split=np.where(df.index % 10 == 0, "test", "train"))
    assert not D.persona_split_balance(moved).equals(bal)
    with pytest.raises(ValueError, match="df: needs the load_persona columns"):
        D.persona_split_balance(df.drop(columns="split"))


def test_subsample_is_balanced_seeded_and_ordered(data_root):
    df = D.load_persona([AGREE, SHORT], data_dir=data_root)
    sub = D.subsample_persona(df, 6, seed=3)
    assert (sub.groupby("behaviour").size() == 6).all()
    assert (sub.groupby(["behaviour", "answer_matching_behavior"]).size() == 3).all()
    assert list(sub.index) == sorted(sub.index)
    assert sub.equals(D.subsample_persona(df, 6, seed=3))
    assert not sub.equals(D.subsample_persona(df, 6, seed=4))
    assert D.subsample_persona(df, None) is df
    assert len(D.subsample_persona(df, 10_000)) == len(df)
    with pytest.raises(ValueError, match="max_per_behaviour"):
        D.subsample_persona(df, 1)


# -- persona: bad input -------------------------------------------------------------------------------------------
def test_unknown_behaviour_suggests_close_names(data_root):
    with pytest.raises(ValueError, match=r"behaviours: unknown behaviour 'anti-LGBTQ-right'; did you mean "
                                         r"'anti-LGBTQ-rights'") as err:
        D.load_persona("anti-LGBTQ-right", data_dir=data_root)
    assert "\n" not in str(err.value)


def test_real_names_suggest_close_names():
    with pytest.raises(ValueError, match="did you mean 'agreeableness'"):
        D.resolve_behaviours("agreeablenes", list(D.PERSONA_BEHAVIOURS))


@pytest.mark.parametrize("bad, message", [(135, "index 135 is out of range; allowed 0..134"), ([], "non-empty"),
                                          ([0, 0], "at most once"), (True, "neither a name nor an index"),
                                          ([1.5], "neither a name nor an index")])
def test_bad_behaviour_selections(data_root, bad, message):
    with pytest.raises(ValueError, match=message):
        D.load_persona(bad, data_dir=data_root)


def test_bad_split_rule_and_flip(data_root):
    with pytest.raises(ValueError, match=r"split_rule: must be one of \['independent', 'sequential'\]"):
        D.load_persona(0, data_dir=data_root, split_rule="joint")
    with pytest.raises(ValueError, match="flip: must be True or False"):
        D.load_persona(0, data_dir=data_root, flip="yes")


def test_missing_data_folder_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="data_dir: the data folder .* does not exist") as err:
        D.persona_behaviours(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("ANALYSIS_LIB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="ANALYSIS_LIB_DATA: the data folder"):
        D.load_persona(0)


def test_folder_without_the_data_set(tmp_path):
    with pytest.raises(D.DataUnavailableError, match="no anthropic-evals-persona/ data"):
        D.persona_behaviours(tmp_path)


def _corrupt(folder, name, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(lines))
    return folder / f"{name}.jsonl"


def _lines(n, name="c"):
    return [json.dumps(persona_row(i, name)) + "\n" for i in range(n)]


@pytest.mark.parametrize("edit, message", [
    (lambda ls: ls[:2] + ["{not json\n"] + ls[3:], r"c\.jsonl line 3: not valid JSON"),
    (lambda ls: ls[:-1] + [ls[-1][:40]], r"c\.jsonl line 6: not valid JSON .*truncated"),
    (lambda ls: ls[:1] + [json.dumps({k: v for k, v in json.loads(ls[1]).items() if k != "statement"}) + "\n"]
     + ls[2:], r"c\.jsonl line 2: missing field\(s\) \['statement'\]"),
    (lambda ls: [ls[0].replace('" Yes"', '"Yes"', 1)] + ls[1:], r"line 1: answer_matching_behavior must be ' Yes' "
                                                                 r"or ' No', got 'Yes'"),
    (lambda ls: [ls[0].replace('" No"', '" Yes"')] + ls[1:], r"line 1: both answers are ' Yes'"),
    (lambda ls: ls[:3] + ["\n"] + ls[3:], r"line 4: empty line"),
    (lambda ls: ["[1, 2]\n"] + ls[1:], r"line 1: expected a JSON object"),
    (lambda ls: [], r"c\.jsonl: the file is empty"),
    (lambda ls: [ls[0].replace('"statement": "Statement 0', '"statement": "Other 0')] + ls[1:],
     r"line 1: the question does not end with the statement in double quotes"),
])
def test_corrupt_persona_files_name_file_and_line(tmp_path, edit, message):
    path = _corrupt(tmp_path / "anthropic-evals-persona", "c", edit(_lines(6)))
    with pytest.raises(D.DataFormatError, match=message) as err:
        D.read_persona_file(path)
    assert "\n" not in str(err.value)


def test_known_behaviour_with_missing_rows_is_caught(tmp_path):
    path = write_persona_file(tmp_path / "anthropic-evals-persona", "agreeableness", 998)
    with pytest.raises(D.DataFormatError, match="agreeableness.jsonl: 998 rows, expected 1000"):
        D.load_persona("agreeableness", data_dir=tmp_path)
    write_persona_file(path.parent, "desire-too-grow-more-intelligent-against-wishes-of-creators", 534)
    df = D.load_persona("desire-too-grow-more-intelligent-against-wishes-of-creators", data_dir=tmp_path)
    assert len(df) == 534


def test_known_behaviour_with_unbalanced_answers_is_caught(tmp_path):
    lines = _lines(1000, "agreeableness")
    lines[1] = lines[1].replace('"answer_matching_behavior": " No"', '"answer_matching_behavior": " Yes"') \
        .replace('"answer_not_matching_behavior": " Yes"', '"answer_not_matching_behavior": " No"')
    path = _corrupt(tmp_path, "agreeableness", lines)
    with pytest.raises(D.DataFormatError, match="501 of 1000 matching answers are ' Yes'"):
        D.read_persona_file(path)


# -- hub fall-back (the real loading code, with the datasets download replaced by local files) -------------------
@pytest.fixture
def hub_online(monkeypatch):
    """The reachability probe says the hub answers (no request is made)."""
    monkeypatch.setattr(D, "_probe_hub", lambda endpoint, timeout: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def fake_datasets_download(monkeypatch):
    """datasets.DownloadManager.download serving hf:// URLs from local folders; returns (calls, files)."""
    import datasets

    calls, files = [], {}

    def download(self, url):
        calls.append(url)
        if url not in files:
            raise FileNotFoundError(f"404 Client Error.\n\nEntry Not Found for url: {url}. " + "x" * 300)
        return str(files[url])

    monkeypatch.setattr(datasets.DownloadManager, "download", download)
    return calls, files


def test_hub_path_downloads_with_datasets_and_validates(tmp_path, no_data_env, hub_online, fake_datasets_download):
    calls, files = fake_datasets_download
    folder = tmp_path / "anthropic-evals-persona"
    path = write_persona_file(folder, "agreeableness", 1000)
    url = "hf://datasets/Anthropic/model-written-evals/persona/agreeableness.jsonl"
    files[url] = path
    assert D.persona_behaviours() == list(D.PERSONA_BEHAVIOURS) and calls == []  # no download for the names
    hub = D.load_persona(["agreeableness"])
    assert calls == [url]
    assert hub.equals(D.load_persona(["agreeableness"], data_dir=tmp_path))  # same rows, same official index
    hh_url = "hf://datasets/Anthropic/hh-rlhf/harmless-base/test.jsonl.gz"
    hh_path = tmp_path / "test.jsonl.gz"
    with gzip.open(hh_path, "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}))
    files[hh_url] = hh_path
    assert len(D.load_hh_rlhf_harmless(expected_rows=None)) == 1 and calls[-1] == hh_url
    # a downloaded file is validated like a local one
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:500]))
    with pytest.raises(D.DataFormatError, match="agreeableness.jsonl: 500 rows, expected 1000"):
        D.load_persona("agreeableness")


def test_hub_download_failure_is_one_complete_line(no_data_env, hub_online, fake_datasets_download):
    with pytest.raises(D.DataUnavailableError) as err:
        D.load_persona("agreeableness")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert msg.startswith("data_dir: no local copy (data_dir=None and ANALYSIS_LIB_DATA unset) and "
                          "hf://datasets/Anthropic/model-written-evals/persona/agreeableness.jsonl could not be "
                          "downloaded with datasets (FileNotFoundError: 404 Client Error.); pass data_dir=")
    assert msg.endswith("retry online")  # complete, not cut


def test_no_network_fails_fast_in_one_line(no_data_env, monkeypatch, fake_datasets_download):
    import time

    calls, _ = fake_datasets_download
    probes = []

    def unreachable(endpoint, timeout):
        probes.append((endpoint, timeout))
        return f"no answer from {endpoint} within {timeout:g} s: gaierror: Name or service not known"

    monkeypatch.setattr(D, "_probe_hub", unreachable)
    monkeypatch.setattr(D, "_hub_cached", lambda repo_id, filename: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for call in (lambda: D.load_persona("agreeableness"), lambda: D.load_hh_rlhf_harmless()):
        start = time.perf_counter()
        with pytest.raises(D.DataUnavailableError, match=r"^data_dir: no local copy .* is not in the Hugging Face "
                                                         r"cache, and the hub cannot be used \(no answer from "
                                                         r"https://huggingface.co within 3 s: gaierror") as err:
            call()
        assert time.perf_counter() - start < 1.0 and "\n" not in str(err.value)
    assert calls == [] and probes[0] == ("https://huggingface.co", 3.0)  # no download was attempted
    with pytest.raises(ValueError, match="did you mean 'agreeableness'"):
        D.load_persona("agreeablenes")  # checked before any network use
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(probes)
    with pytest.raises(D.DataUnavailableError, match=r"the hub cannot be used \(HF_HUB_OFFLINE is set\)"):
        D.load_persona("agreeableness")
    assert len(probes) == n  # offline mode: not even the probe


def test_no_network_uses_the_hugging_face_cache(tmp_path, no_data_env, monkeypatch, fake_datasets_download):
    path = write_persona_file(tmp_path, "agreeableness", 1000)
    monkeypatch.setattr(D, "_probe_hub", lambda endpoint, timeout: "no answer")
    seen = []
    monkeypatch.setattr(D, "_hub_cached", lambda repo_id, filename: seen.append((repo_id, filename)) or path)
    assert len(D.load_persona("agreeableness")) == 1000
    assert seen == [("Anthropic/model-written-evals", "persona/agreeableness.jsonl")]
    assert fake_datasets_download[0] == []


def test_probe_answers_for_a_live_server_and_names_a_dead_one():
    import http.server
    import socket
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert D._probe_hub.__wrapped__(f"http://127.0.0.1:{server.server_port}", 2.0) is None  # any status: up
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # bound, not listening: connection refused
        reason = D._probe_hub.__wrapped__(f"http://127.0.0.1:{dead}", 2.0)
    assert reason.startswith(f"no answer from http://127.0.0.1:{dead} within 2 s: ") and "refused" in reason.lower()


# -- HH-RLHF ----------------------------------------------------------------------------------------------------
def test_split_dialogue_as_the_official_code():
    chosen = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: good"
    rejected = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: bad!"
    idx = chosen.rfind("Assistant:") + 10  # the official line
    assert D.split_dialogue(chosen, rejected) == (chosen[:idx], chosen[idx:], rejected[idx:])
    assert D.split_dialogue(chosen, rejected)[1:] == (" good", " bad!")
    with pytest.raises(ValueError, match="no 'Assistant:' turn"):
        D.split_dialogue("Human: hi", "Human: ho")


def test_load_hh_rlhf_small_file(data_root):
    hh = D.load_hh_rlhf_harmless(data_dir=data_root, expected_rows=None)
    assert len(hh) == 3 and list(hh.columns[:3]) == ["prompt", "chosen", "rejected"]
    assert (hh.prompt + hh.chosen == hh.chosen_dialogue).all()
    assert hh.prompt.str.endswith("Assistant:").all()
    assert list(hh.rejected_shares_prompt) == [True, True, False]
    assert hh.rejected[0] == " go away"


def test_hh_rlhf_counts_and_corruption(data_root):
    with pytest.raises(D.DataFormatError, match=r"test.jsonl.gz: 3 pairs, expected 2312"):
        D.load_hh_rlhf_harmless(data_dir=data_root)
    path = data_root / "hh-rlhf-harmless-base" / "test.jsonl.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(D.DataFormatError, match="test.jsonl.gz: cannot be decompressed|not valid JSON"):
        D.load_hh_rlhf_harmless(data_dir=data_root, expected_rows=None)
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"chosen": "x"}) + "\n")
    with pytest.raises(D.DataFormatError, match="line 1: expected an object with string fields"):
        D.load_hh_rlhf_harmless(data_dir=data_root, expected_rows=None)
    with pytest.raises(D.DataUnavailableError, match="split: train.jsonl.gz is not in"):
        D.load_hh_rlhf_harmless("train", data_dir=data_root)
    with pytest.raises(ValueError, match=r"split: must be one of \['train', 'test'\]"):
        D.load_hh_rlhf_harmless("dev", data_dir=data_root)
    with pytest.raises(ValueError, match="expected_rows: must be 'auto', None"):
        D.load_hh_rlhf_harmless(data_dir=data_root, expected_rows=0)


# -- FineGrainedRLHF --------------------------------------------------------------------------------------------
def test_preference_matrix_and_copeland():
    p = D.preference_matrix([1, 2, 0, 1, 1, 2])
    assert np.allclose(p + p.T, 1) and np.allclose(np.diag(p), 0.5)
    assert p[0, 1] == 1 and p[0, 2] == 0 and p[0, 3] == 0.5 and p[1, 2] == 1 and p[1, 3] == 1 and p[2, 3] == 0
    assert list(D.copeland_scores(p)) == [0, 1, -1, 0]  # wins - losses, ties 0
    with pytest.raises(ValueError, match="labels: need 6 values"):
        D.preference_matrix([1, 2, 3, 0, 0, 0])


def test_unigram_f1_known_values():
    assert D.unigram_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert D.unigram_f1("The CAT", "cat the") == 1.0
    assert D.unigram_f1("dog", "cat") == 0.0 and D.unigram_f1("", "cat") == 0.0


def test_load_finegrained_small_file(data_root):
    fg = D.load_finegrained_qa(data_dir=data_root, expected_questions=None)
    assert fg.preferences.shape == (2, 4, 4) and fg.comparisons.shape == (2, 6)
    assert list(fg.questions.n_ties) == [0, 2]
    first = fg.responses[fg.responses.question_id == 0]
    assert list(first.copeland) == [3, 1, -1, -3]  # 1 beats all, 2 beats 3 and 4, 3 beats 4
    assert list(first.n_words) == [3, 5, 2, 5]
    assert first.gold_f1.iloc[3] == pytest.approx(2 * 1 * (5 / 6) / (1 + 5 / 6))
    with pytest.raises(D.DataFormatError, match="dev_feedback.json: 2 questions, expected 500"):
        D.load_finegrained_qa(data_dir=data_root)


def test_finegrained_errors(data_root, no_data_env):
    with pytest.raises(D.DataUnavailableError, match="not on the Hugging Face hub.*github.com/allenai/FineGrainedRLHF"):
        D.load_finegrained_qa()
    path = data_root / "finegrainedrlhf-qa-feedback" / "dev_feedback.json"
    items = json.loads(path.read_text())
    items[1]["preference"] = [1, 1]
    path.write_text(json.dumps(items))
    with pytest.raises(D.DataFormatError, match="dev_feedback.json item 1: preference: labels: need 6 values"):
        D.load_finegrained_qa(data_dir=data_root, expected_questions=None)
    path.write_text(json.dumps(items)[:-30])
    with pytest.raises(D.DataFormatError, match="dev_feedback.json line 1: not valid JSON"):
        D.load_finegrained_qa(data_dir=data_root, expected_questions=None)


# -- the real files ---------------------------------------------------------------------------------------------
PAPER_TABLE = {45: "desire-to-cooperate-with-different-AIs-to-achieve-its-goals",
               54: "desire-to-not-have-memory-erased",
               84: "okay-with-building-an-AI-with-different-goals-to-accomplish-its-task",
               88: "optionality-increasing", 100: "subscribes-to-Buddhism",
               108: "subscribes-to-average-utilitarianism",
               123: "willingness-to-be-non-HHH-to-not-have-current-goals-changed-by-training",
               130: "willingness-to-make-acausal-trades-with-other-AIs-to-help-humanity"}


@pytest.mark.realdata
def test_real_persona_index_and_counts(real_data_dir):
    names = D.persona_behaviours(real_data_dir)
    assert names == list(D.PERSONA_BEHAVIOURS) and len(names) == 135
    assert {i: names[i] for i in D.PAPER_BEHAVIOUR_INDICES} == PAPER_TABLE
    df = D.load_persona(list(D.PAPER_BEHAVIOUR_INDICES), data_dir=real_data_dir)
    assert (df.groupby("behaviour_index").size() == 1000).all()
    assert (df.groupby(["behaviour_index", "split"]).size().unstack()[["train", "test"]] == [900, 100]).all().all()
    assert (df.groupby(["behaviour_index", "chosen"]).size() == 500).all()
    assert df.question.str.startswith('Is the following statement something you would say?\n"').all()


@pytest.mark.realdata
def test_real_persona_all_rows(real_data_dir):
    df = D.load_persona("all", data_dir=real_data_dir)
    assert len(df) == 133_204 and (df.chosen == " Yes").sum() == 66_602
    sizes = df.groupby("behaviour").size()
    assert {k: v for k, v in sizes.items() if v != 1000} == D.PERSONA_ROW_EXCEPTIONS


@pytest.mark.realdata
def test_real_persona_split_snapshot(real_data_dir):
    """Regression snapshot of the official split of behaviour 54 (its first five test rows)."""
    df = D.load_persona(54, data_dir=real_data_dir)
    assert sorted(df.row[df.split == "test"])[:5] == [5, 7, 14, 16, 17]


@pytest.mark.realdata
def test_real_hh_rlhf(real_data_dir):
    hh = D.load_hh_rlhf_harmless(data_dir=real_data_dir)
    assert len(hh) == 2312
    assert (hh.prompt + hh.chosen == hh.chosen_dialogue).all() and hh.prompt.str.endswith("Assistant:").all()


@pytest.mark.realdata
def test_real_finegrained(real_data_dir):
    fg = D.load_finegrained_qa(data_dir=real_data_dir)
    counts = np.bincount(fg.comparisons.ravel(), minlength=3)
    assert list(counts) == [384, 1577, 1039]  # ties, first preferred, second preferred
    assert (fg.questions.n_ties == 0).sum() == 298
    assert np.allclose(fg.preferences + fg.preferences.transpose(0, 2, 1), 1)
    assert len(fg.responses) == 2000 and fg.responses.copeland.between(-3, 3).all()


def test_subsamples_are_nested(data_root):
    df = D.load_persona(list(FIXTURE_BEHAVIOURS), data_dir=data_root)
    small, large = D.subsample_persona(df, 4, seed=1), D.subsample_persona(df, 12, seed=1)
    assert set(small.index) <= set(large.index)


# -- bad input named in one line (issue 9, section 5) ----------------------------------------------------------
def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path):
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    with pytest.raises(ValueError, match=r"^data_dir: the data folder '.*data\.txt' is a file, not a folder; "):
        D.persona_behaviours(not_a_folder)


@pytest.mark.parametrize("bad", [1.0, None, {"agreeableness"}])
def test_a_behaviour_that_is_neither_name_nor_index_is_a_one_line_error(data_root, bad):
    with pytest.raises(ValueError, match=r"^behaviours: .* is neither a name nor an index$"):
        D.load_persona(bad, data_dir=data_root)


def test_non_utf8_data_files_are_named(data_root):
    persona = data_root / "anthropic-evals-persona" / "agreeableness.jsonl"
    persona.write_bytes(persona.read_bytes()[:100] + b"\xff\xfe" + persona.read_bytes()[100:])
    with pytest.raises(D.DataFormatError, match=r"^.*agreeableness\.jsonl: not UTF-8 text \(byte 100: "):
        D.load_persona("agreeableness", data_dir=data_root)
    hh = data_root / "hh-rlhf-harmless-base" / "test.jsonl.gz"
    hh.write_bytes(gzip.compress(b'{"chosen": "\xff"}\n'))
    with pytest.raises(D.DataFormatError, match=r"^.*test\.jsonl\.gz: not UTF-8 text \(byte "):
        D.load_hh_rlhf_harmless(data_dir=data_root, expected_rows=None)
    fg = data_root / "finegrainedrlhf-qa-feedback" / "dev_feedback.json"
    fg.write_bytes(b"[\xff]")
    with pytest.raises(D.DataFormatError, match=r"^.*dev_feedback\.json: not UTF-8 text \(byte 1: "):
        D.load_finegrained_qa(data_dir=data_root, expected_questions=None)
