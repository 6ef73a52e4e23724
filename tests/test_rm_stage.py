"""`r1jax rm` from the command line on a tiny base model pretrained here (8 simulated CPU devices):
held-out pair accuracy is logged and rises above chance on the miniature helpful data, the workdir
loads as a reward model whose scores rank chosen above rejected on most held-out pairs, and a run
whose last checkpoint is lost resumes to bit-identical parameters. Plus the stage's start-up checks
and the pair iterator's exact resume, in process."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from r1jax.data import general
from r1jax.trainer.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--config.model.overrides.d_model=64", "--config.model.overrides.n_layers=2",
         "--config.model.overrides.mlp_dim=128", "--config.model.overrides.max_position_embeddings=4096"]
PRETRAIN = ["--config.pretrain.steps=20", "--config.pretrain.n_docs=300", "--config.pretrain.batch_size=8",
            "--config.pretrain.seq_len=160", "--config.data.n_train=16", "--config.data.n_eval=2", *MODEL]
N_HELDOUT = 64
RM = ["--config.data.seq_len=128", "--config.data.batch_size=16",
      f"--config.data.n_heldout={N_HELDOUT}", "--config.rm.steps=40", "--config.rm.eval_every=20",
      "--config.checkpoint.every=20", "--config.optim.learning_rate=1e-3", "--config.optim.warmup_steps=4"]


def _r1jax(*args, timeout=600):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "r1jax.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _params(workdir, step):
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "policy"))
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    _r1jax("pretrain", f"--workdir={root / 'base'}", *PRETRAIN)
    paths = general.write_preference_files(root / "prefs", n_pairs=360, seed=0)
    _r1jax("rm", f"--workdir={root / 'rm'}", f"--config.policy.path={root / 'base'}",
           f"--config.data.path={paths['helpful']}", *RM)
    return root, paths


def test_rm_logs_heldout_accuracy_above_chance_and_scores_on_a_mesh(trained):
    root, paths = trained
    rows = _rows(root / "rm")
    held = [(r["step"], r["heldout/accuracy"]) for r in rows if "heldout/accuracy" in r]
    assert [s for s, _ in held] == [0, 20, 40] and held[0][1] == 0.5  # the zero head ties every pair
    # 40 steps from a 20-step base learn the empty and missing summaries (40 % of the pairs), not yet the rest
    assert held[-1][1] >= 0.6, held
    assert "train/accuracy" in rows[-1] and "train/margin" in rows[-1]
    with open(root / "rm" / "reward_model.json") as f:
        record = json.load(f)
    assert (record["view"], record["template"], record["max_len"]) == ("summary", "r1_zero", 128)

    from r1jax.parallel.mesh import MeshConfig, make_mesh
    from r1jax.trainer.reward_model import RewardModel

    with open(paths["helpful"]) as f:
        pairs = [json.loads(line) for line in f][-N_HELDOUT:]
    rm = RewardModel.load(str(root / "rm"), make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    questions = [p["prompt"] for p in pairs]
    chosen = rm.score(questions, [p["chosen"] for p in pairs])
    rejected = rm.score(questions, [p["rejected"] for p in pairs])
    assert chosen.dtype == np.float32 and chosen.shape == (N_HELDOUT,)
    accuracy = float(np.mean(chosen > rejected))
    # the scorer renders rows as training did (same view, template, tokens): the logged accuracy, again
    assert accuracy >= 0.6 and abs(accuracy - held[-1][1]) < 0.02, (accuracy, held[-1])


def test_rm_resumes_bit_identically_after_losing_its_last_checkpoint(trained):
    root, paths = trained
    shutil.copytree(root / "rm", root / "rm_cut")
    shutil.rmtree(root / "rm_cut" / "checkpoints" / "40")  # as if killed between the checkpoints at 20 and 40
    _r1jax("rm", f"--workdir={root / 'rm_cut'}", f"--config.policy.path={root / 'base'}",
           f"--config.data.path={paths['helpful']}", *RM)
    for a, b in zip(_params(root / "rm", 40), _params(root / "rm_cut", 40), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["step"] for r in _rows(root / "rm_cut")] == [r["step"] for r in _rows(root / "rm")]
    assert _rows(root / "rm_cut")[-1]["heldout/accuracy"] == _rows(root / "rm")[-1]["heldout/accuracy"]


# ── in process: start-up checks and the data position ──────────────────────────────────────────────


def _config(variant):
    spec = importlib.util.spec_from_file_location("rm_config", os.path.join(ROOT, "configs", "rm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_rm_variants_build_and_bad_fields_are_named():
    from r1jax.stages import rm

    for variant, view in (("tiny", "summary"), ("tiny_harmless", "response")):
        c = _config(variant)
        with pytest.raises(ConfigError, match="config.data.path"):
            rm.build(c)
        c.data.path, c.policy.path = "prefs.jsonl", "runs/base"
        spec = rm.build(c)
        assert spec.pipeline.view == view and spec.pipeline.template == "r1_zero"
    for field, value, message in (("rm.view", "reasoning", "config.rm.view"),
                                  ("data.batch_size", 12, "config.data.batch_size"),
                                  ("policy.source", "pretrain", "config.policy.source"),
                                  ("data.fields.format", "chat", "config.data.fields")):
        c = _config("tiny")
        c.data.path, c.policy.path = "prefs.jsonl", "runs/base"
        section, _, name = field.rpartition(".")
        node = c
        for part in section.split("."):
            node = node[part]
        node[name] = value
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            rm.build(c)


def test_every_rm_config_field_has_a_doc():
    from r1jax.main import _docs_of, config_help
    from r1jax.trainer.config_docs import field_docs

    for variant in ("tiny", "tiny_harmless"):
        undocumented = [k for k, v in field_docs(_config(variant), *_docs_of("rm")).items() if not v]
        assert not undocumented, f"rm:{variant} fields without a doc: {undocumented}"
    assert "--config.rm.view='summary'" in config_help("rm", _config("tiny"))


def test_pair_iterator_resumes_at_the_identical_next_batch():
    from r1jax.trainer.reward_model import PairPipelineConfig, make_pair_dataset

    rng = np.random.default_rng(0)
    encoded = [(rng.integers(3, 50, size=int(rng.integers(2, 9))).astype(np.int32),
                rng.integers(3, 50, size=int(rng.integers(2, 9))).astype(np.int32)) for _ in range(21)]
    cfg = PairPipelineConfig(batch_size=4, seq_len=10, seed=3, num_epochs=2)
    ds = make_pair_dataset(encoded, 0, cfg)
    assert len(ds) == 11  # 42 pairs in batches of 4, the last topped up
    full = list(ds)
    assert full[-1].weight_p.tolist() == [1, 1, 0, 0]
    it = iter(ds)
    for _ in range(7):  # into the second epoch
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    again = iter(make_pair_dataset(encoded, 0, cfg))
    again.set_state(state)
    for a, b in zip(full[7:], again, strict=True):
        np.testing.assert_array_equal(a.chosen_pl, b.chosen_pl)
        np.testing.assert_array_equal(a.rejected_last_p, b.rejected_last_p)
    # every pair once per epoch, in a new order each epoch
    rows = [tuple(b.chosen_pl[j]) for b in full for j in range(4) if b.weight_p[j]]
    expected = sorted(tuple(np.pad(c, (0, 10 - len(c)))) for c, _ in encoded)
    assert len(rows) == 42 and sorted(rows[:21]) == sorted(rows[21:]) == expected and rows[:21] != rows[21:]
