"""A gs:// workdir end to end on a local fake GCS (gcp-storage-emulator, in this process, on 127.0.0.1):
fileio, MetricsWriter (+ TensorBoard), CheckpointManager (orbax -> tensorstore's GCS driver) and a
stage's policy record loaded back as a policy source. Nothing here is mocked: epath -> gcsfs and
tensorstore speak the GCS JSON API to the emulator, as they would to GCS."""

import dataclasses
import logging
import os
import socket

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax import fileio
from r1jax.checkpoint import CheckpointManager, abstract_state
from r1jax.data.tokenizer import SentencePieceTokenizer
from r1jax.metrics import MetricsWriter, plot_run, read_jsonl
from r1jax.model import create_sharded, get_variant, state_shardings
from r1jax.parallel.mesh import MeshConfig, make_mesh
from r1jax.trainer import policy as policy_lib
from r1jax.trainer.config import ModelSpec, PolicySpec
from r1jax.trainer.state import split_model_state

BUCKET = "r1jax-test"


def _clear_fs_caches():
    """gcsfs instances (and epath's cache of them) remember the endpoint they were made with."""
    import gcsfs
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()


def _send_generation_headers():
    """The emulator's media downloads lack GCS's x-goog-generation header, which tensorstore reads (orbax's
    OCDBT manifest is read back while a save runs): add it, as GCS sends it."""
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    plain = objects.download
    if getattr(plain, "sends_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        plain(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the 404 stands
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    download.sends_generation = True
    objects.download = download  # objects.get (alt=media) calls it by this name
    for _, handlers in emulator.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is plain:
                handlers[method] = download


@pytest.fixture(scope="module")
def gcs():
    """gs://r1jax-test on an in-memory GCS emulator; the env vars point gcsfs, google-cloud-storage
    and tensorstore at it (tensorstore takes a fixed bearer token for testing)."""
    from gcp_storage_emulator.server import create_server

    _send_generation_headers()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for name in ("gcsfs", "gcp_storage_emulator"):  # "no default credentials" / "not found" probes: noise
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", url)
        mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        _clear_fs_caches()
        try:
            yield f"gs://{BUCKET}"
        finally:
            _clear_fs_caches()
            server.stop()


def _objects(prefix: str) -> list[str]:
    return sorted(str(p) for p in fileio.as_path(prefix).glob("*"))


def test_fileio_round_trips(gcs):
    run = f"{gcs}/fileio"
    assert fileio.is_remote(run) and not fileio.is_remote("runs/x") and not fileio.is_remote("file:///tmp/x")
    fileio.makedirs(run)
    assert not fileio.exists(f"{run}/a.json") and fileio.read_jsonl(f"{run}/rows.jsonl") == []
    fileio.write_json(f"{run}/a.json", {"x": [1, 2], "é": "ü"})
    assert fileio.read_json(f"{run}/a.json") == {"x": [1, 2], "é": "ü"}
    assert fileio.isfile(f"{run}/a.json") and fileio.isdir(run) and not fileio.isdir(f"{run}/nothing")
    fileio.append_jsonl(f"{run}/rows.jsonl", [{"i": 0}, {"i": 1}])
    fileio.append_jsonl(f"{run}/rows.jsonl", [{"i": 2}])
    assert [r["i"] for r in fileio.read_jsonl(f"{run}/rows.jsonl")] == [0, 1, 2]
    # an object is written whole (no temporary object is left beside it)
    assert _objects(run) == [f"{run}/a.json", f"{run}/rows.jsonl"]
    fileio.write_atomic(f"{run}/torn.jsonl", '{"i": 0}\n{"i": 1, "lo')
    assert fileio.read_jsonl(f"{run}/torn.jsonl") == [{"i": 0}]
    fileio.write_atomic(f"{run}/bad.jsonl", '{"i": 0}\n{"i": \n{"i": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        fileio.read_jsonl(f"{run}/bad.jsonl")


def test_metrics_writer_buffers_rewrites_and_resumes(gcs):
    run = f"{gcs}/metrics"
    w = MetricsWriter(run, flush_every_s=1e9)
    for s in range(5):
        w.write(s, {"loss": float(s), "eval/pass@1": 0.1 * s, "rollout/length_mean": 10.0 + s})
    w.write_samples(4, [{"completion": "Wait, let me check."}])
    assert not fileio.exists(f"{run}/metrics.jsonl")  # buffered: an object store cannot append
    w.flush()
    assert [r["step"] for r in read_jsonl(f"{run}/metrics.jsonl")] == [0, 1, 2, 3, 4]
    w.write(5, {"loss": 5.0})
    w.close()  # close flushes
    assert [r["step"] for r in read_jsonl(f"{run}/metrics.jsonl")] == [0, 1, 2, 3, 4, 5]
    assert read_jsonl(f"{run}/samples.jsonl") == [{"step": 4, "completion": "Wait, let me check."}]
    tb = [p.name for p in fileio.as_path(f"{run}/tb").iterdir()]
    assert len(tb) == 1 and tb[0].startswith("events.out.tfevents"), tb
    assert fileio.as_path(f"{run}/tb/{tb[0]}").stat().length > 0

    # resumed from a checkpoint at step 3: rows from step 3 on are dropped at once, then continued
    w = MetricsWriter(run, start_step=3, tensorboard=False, flush_every_s=0)
    assert [r["step"] for r in read_jsonl(f"{run}/metrics.jsonl")] == [0, 1, 2]
    assert read_jsonl(f"{run}/samples.jsonl") == []
    w.write(3, {"loss": 13.0})  # flush_every_s=0: every row is written at once
    assert [r["loss"] for r in read_jsonl(f"{run}/metrics.jsonl")] == [0.0, 1.0, 2.0, 13.0]
    w.close()

    paths = plot_run(run)
    assert paths == [f"{run}/plots/{n}" for n in ("accuracy.png", "response_length.png", "reflection.png")]
    assert fileio.read_bytes(paths[0])[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny_policy(mesh):
    corpus = ["What is 12 + 7? The answer is 19.", "Let me check: 3 * 4 = 12.", *[str(i) for i in range(50)]]
    tok = SentencePieceTokenizer.train(corpus, vocab_size=300)
    cfg = dataclasses.replace(get_variant("tiny_dense"), vocab_size=tok.vocab_size)
    graphdef, state = create_sharded(cfg, mesh, 0)
    params, model_state = split_model_state(state)
    return policy_lib.Policy(cfg, graphdef, params, model_state, tok, origin="test")


def test_checkpoints_and_policy_record_round_trip(gcs):
    mesh = make_mesh(MeshConfig(fsdp=8))
    run = f"{gcs}/stage"
    policy = _tiny_policy(mesh)
    policy_lib.write_policy_record(run, policy, "test")
    item = {"params": policy.params, "model_state": policy.model_state}
    with CheckpointManager(f"{run}/{policy_lib.CHECKPOINT_DIR}", keep=2) as ckpt:
        assert ckpt.directory == f"{run}/checkpoints"  # not made absolute (./gs:/...)
        assert ckpt.latest_step() is None
        for step in (1, 2, 3):
            doubled = jax.tree.map(lambda x, k=step: x * k, item)
            ckpt.save(step, {"policy": doubled}, data_state={"step": step})
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 3]
    # a new manager (a resumed process) lists and restores from the bucket
    like = jax.tree.map(lambda x: x, item)
    shardings = jax.tree.map(lambda x: x.sharding, item)
    with CheckpointManager(f"{run}/checkpoints", create=False) as ckpt:
        assert ckpt.latest_step() == 3
        items, data = ckpt.restore(2, {"policy": abstract_state(shardings, like=like)})
    assert data == {"step": 2}
    for a, b in zip(jax.tree.leaves(items["policy"]), jax.tree.leaves(item), strict=True):
        np.testing.assert_array_equal(np.asarray(a), 2 * np.asarray(b))
    names = [p.name for p in fileio.as_path(f"{run}/checkpoints/3").iterdir()]
    assert "commit_success.txt" in names  # orbax's commit marker on an object store (no rename there)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        CheckpointManager(f"{gcs}/nowhere/checkpoints", create=False)

    # the workdir is a policy source for a later stage: record, tokenizer and the latest checkpoint
    loaded = policy_lib.load_policy(PolicySpec(source="workdir", path=run), ModelSpec(), mesh)
    assert loaded.origin == f"workdir:{run}@3" and loaded.model_cfg == policy.model_cfg
    text = "What is 12 + 7? Let me check."
    assert loaded.tokenizer.encode(text) == policy.tokenizer.encode(text)
    got = nnx.merge_state(loaded.params, loaded.model_state)
    want = nnx.merge_state(policy.params, policy.model_state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), 3 * np.asarray(b))
    shardings_loaded = state_shardings(loaded.params, mesh)
    assert jax.tree.structure(shardings_loaded) == jax.tree.structure(state_shardings(policy.params, mesh))
    assert {os.path.basename(p) for p in _objects(f"{run}/tokenizer")} == {
        "tokenizer.model", "tokenizer.json", "tokenizer_config.json"}
