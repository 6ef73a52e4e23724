"""MetricsWriter resume semantics and the run plots."""

import json
import os

from r1jax.metrics import MetricsWriter, plot_run, read_jsonl, reflection_rate


def test_resume_drops_steps_after_checkpoint_and_continues_without_gaps(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    for s in range(5):
        w.write(s, {"loss": s * 1.0})
    w.close()
    # A crash after logging step 4 but with the last checkpoint at step 3: resume from 3.
    w = MetricsWriter(str(tmp_path), start_step=3, tensorboard=False)
    for s in range(3, 6):
        w.write(s, {"loss": 10.0 + s})
    steps = [r["step"] for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))]
    assert steps == [0, 1, 2, 3, 4, 5]
    assert read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))[3]["loss"] == 13.0


def test_torn_last_line_is_tolerated(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 0}) + "\n" + '{"step": 1, "lo')
    assert [r["step"] for r in read_jsonl(str(p))] == [0]


def test_reflection_rate():
    assert reflection_rate(["Wait, let me check.", "5 + 3 = 8", "I should verify this"]) == 2 / 3
    assert reflection_rate([]) == 0.0


def test_plot_run_writes_pngs(tmp_path):
    w = MetricsWriter(str(tmp_path), tensorboard=False)
    for s in range(4):
        w.write(s, {"eval/pass@1": 0.1 * s, "rollout/length_mean": 20 + s, "rollout/reflection_rate": 0.0})
    paths = plot_run(str(tmp_path))
    assert len(paths) == 3
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
