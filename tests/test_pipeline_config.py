"""The pipeline's config mechanics and the mixed prompt sources of RL for all scenarios: step references,
overrides that name a missing field, source shares and their routing checks, and the mixed grain dataset
(exact shares per batch, resumable)."""

import collections

import numpy as np
import pytest
from ml_collections import ConfigDict

from r1jax import pipeline
from r1jax.data import procedural
from r1jax.data.pipeline import PromptPipelineConfig, make_mixed_prompt_dataset, make_prompt_dataset
from r1jax.data.tokenizer import SentencePieceTokenizer
from r1jax.main import load_config, resolved
from r1jax.trainer import config as C


@pytest.fixture(scope="module")
def tok():
    words = " ".join(f"{name} question {i}" for name in "ab" for i in range(20))
    return SentencePieceTokenizer.train([words, "Calculate 1 + 2 * 3.", *[str(i) for i in range(100)]], vocab_size=400)


def _examples(name, n):
    return [{"id": f"{name}-{i}", "question": f"{name} question {i}", "answer": str(i), "task": "math",
             "meta": {}, "source": name} for i in range(n)]


def test_mixed_sources_keep_their_shares_in_every_batch_and_resume(tok):
    cfg = PromptPipelineConfig(batch_size=8, max_prompt_len=1024, template="r1", seed=3)
    ds, stats = make_mixed_prompt_dataset([(_examples("a", 13), 0.75), (_examples("b", 5), 0.25)], tok, cfg)
    assert [s.kept for s in stats] == [13, 5]
    it = iter(ds)
    batches = [next(it) for _ in range(6)]
    for batch in batches:
        assert collections.Counter(e["source"] for e in batch.examples) == {"a": 6, "b": 2}
    # every prompt of a source comes around once per its epoch (each source shuffled on its own)
    seen_b = [e["id"] for batch in batches[:2] for e in batch.examples if e["source"] == "b"]
    assert len(set(seen_b)) == 4
    # resuming from a saved position gives the identical next batches
    it2 = iter(ds)
    for _ in range(3):
        next(it2)
    state = it2.get_state()
    it3 = iter(ds)
    it3.set_state(state)
    for want in batches[3:]:
        got = next(it3)
        assert [e["id"] for e in got.examples] == [e["id"] for e in want.examples]
        np.testing.assert_array_equal(got.tokens_bp, want.tokens_bp)


def test_one_source_is_exactly_the_plain_prompt_dataset(tok):
    cfg = PromptPipelineConfig(batch_size=4, max_prompt_len=1024, template="r1_zero", seed=1)
    examples = [procedural.generate(procedural.ProceduralConfig("arithmetic", 100, 2, seed=5), i) for i in range(9)]
    mixed, _ = make_mixed_prompt_dataset([(examples, 1.0)], tok, cfg)
    plain, _ = make_prompt_dataset(examples, tok, cfg)
    a, b = iter(mixed), iter(plain)
    for _ in range(5):
        np.testing.assert_array_equal(next(a).tokens_bp, next(b).tokens_bp)


def _rl_config(**sections):
    config, _ = load_config([], "rl")
    with config.unlocked():
        for k, v in sections.items():
            config[k] = ConfigDict(v)
    return config


GENERAL = dict(task="arithmetic", n_train=8, n_eval=2, share=0.25, rule_weights=dict(format=0.5),
               model_weights=dict(helpful=1.0))


def test_source_specs_route_each_source_and_check_fields():
    c = _rl_config(sources=dict(general=GENERAL), reward_models=dict(helpful="/runs/rm"))
    primary, general = C.source_specs(c, seed=0)
    assert primary.name == "data" and primary.share == pytest.approx(0.75)
    assert dict(primary.rule_weights) == dict(c.reward.weights) and primary.model_weights == ()
    assert general.share == 0.25 and general.model_weights == (("helpful", 1.0),)
    assert general.task.n_train == 8 and general.task.seed != primary.task.seed
    assert C.reward_model_paths(c) == (("helpful", "/runs/rm"),)

    bad = [
        (dict(sources=dict(general={**GENERAL, "shares": 0.2}), reward_models=dict(helpful="x")),
         "config.sources.general.shares: unknown field"),
        (dict(sources=dict(general={**GENERAL, "share": 1.0}), reward_models=dict(helpful="x")),
         "config.sources.general.share: must be in (0, 1)"),
        (dict(sources=dict(general=GENERAL)), "config.sources.general.model_weights.helpful: no reward model"),
        (dict(sources=dict(general={**GENERAL, "rule_weights": {}, "model_weights": {}})),
         "config.sources.general.rule_weights: the source has no reward"),
        (dict(sources=dict(g1={**GENERAL, "share": 0.5}, g2={**GENERAL, "share": 0.5}),
              reward_models=dict(helpful="x")), "config.sources: the shares of the extra sources add up to 1.000"),
    ]
    for sections, message in bad:
        with pytest.raises(C.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            C.source_specs(_rl_config(**sections), seed=0)


def _pipeline_config(steps: dict, order=None):
    c = ConfigDict()
    c.name, c.seed = "p", 0
    c.order = tuple(order or steps)
    c.steps = ConfigDict(steps)
    return c


def _run_dry(c, tmp_path):
    """Resolves every step's config (what `run` does before the first step) without running any."""
    calls = []
    pipeline.run(c, str(tmp_path), run_stage=lambda *a: calls.append(a), load_config=load_config, resolved=resolved)
    return calls


def test_steps_read_earlier_steps_directories_and_overrides_name_bad_fields(tmp_path):
    steps = {"base": dict(command="pretrain", config="r1_zero.py:tiny", set=dict(pretrain=dict(steps=3))),
             "tune": dict(command="sft", config="sft.py:tiny",
                          set=dict(policy=dict(path="{base}"), data=dict(path="{base}/x.jsonl")))}
    calls = _run_dry(_pipeline_config(steps), tmp_path)
    (cmd0, cfg0, dir0), (cmd1, cfg1, dir1) = calls
    assert (cmd0, cmd1) == ("pretrain", "sft") and cfg0.pretrain.steps == 3
    assert cfg1.policy.path == dir0 == str(tmp_path / "base") and cfg1.data.path == f"{dir0}/x.jsonl"
    # finished steps are skipped the second time
    assert _run_dry(_pipeline_config(steps), tmp_path) == []

    cases = [
        ({"a": dict(command="sft", config="sft.py:tiny", set=dict(sft=dict(epochz=1)))},
         "config.steps.a.set.sft.epochz: the stage config has no such field"),
        ({"a": dict(command="sft", config="sft.py:tiny", set=dict(policy=dict(path="{later}")))},
         "config.steps.a.set.policy.path: refers to {later}, which is not an earlier step"),
        ({"a": dict(command="train_hard", config="sft.py:tiny")}, "config.steps.a.command: must be one of"),
        ({"a": dict(command="data", make="nothing")}, "config.steps.a.make: must be one of"),
    ]
    for i, (bad, message) in enumerate(cases):
        with pytest.raises(C.ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
            _run_dry(_pipeline_config(bad), tmp_path / f"bad{i}")


def test_a_finished_step_whose_config_changed_is_an_error(tmp_path):
    steps = {"base": dict(command="pretrain", config="r1_zero.py:tiny", set=dict(pretrain=dict(steps=3)))}
    _run_dry(_pipeline_config(steps), tmp_path)
    steps["base"]["set"]["pretrain"]["steps"] = 4
    with pytest.raises(C.ConfigError, match="config.steps.base: differs from the config it finished with"):
        _run_dry(_pipeline_config(steps), tmp_path)


@pytest.mark.parametrize("variant", ["tiny", "smoke", "smollm2", "dsv3_pod"])
def test_every_step_of_the_r1_recipe_resolves(variant, tmp_path):
    config, _ = load_config([f"--config=configs/r1.py:{variant}"], "pipeline")
    order = pipeline.steps_of(config)
    assert order[0] == {"smollm2": "preferences", "dsv3_pod": "rm_helpful"}.get(variant, "base")
    assert order[-1] == "rl_all"
    dirs, earlier = {n: str(tmp_path / n) for n in order}, {}
    for name in order:
        if config.steps[name].command != "data":
            stage = pipeline.stage_config(config, name, earlier, load_config)
            assert "{" not in resolved(stage).replace("{\n", "").replace("{}", "")
        earlier[name] = dirs[name]
    rl_all = pipeline.stage_config(config, "rl_all", dirs, load_config)
    sources = C.source_specs(rl_all, seed=0)
    assert [s.name for s in sources] == ["data", "general"]
    assert dict(sources[0].rule_weights)["language"] > 0
    assert dict(C.reward_model_paths(rl_all)) == {"helpful": dirs["rm_helpful"], "harmless": dirs["rm_harmless"]}


def test_reward_weights_and_plugins_from_the_command_line():
    config, _ = load_config(["--config.reward.weights.language=0.25", "--config.reward.plugins=my_rewards,other",
                             "--config.reward.weights.length_penalty=0.1"], "rl")
    spec = C.reward_spec(config)
    assert dict(spec.weights) == {"accuracy": 1.0, "format": 0.5, "language": 0.25, "length_penalty": 0.1}
    assert spec.plugins == ("my_rewards", "other")
    with pytest.raises(C.ConfigError, match="config.reward.weights"):
        C.reward_spec(load_config(["--config.reward.weights.language=-1"], "rl")[0])
