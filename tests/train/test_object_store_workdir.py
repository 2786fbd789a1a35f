"""`--workdir gs://bucket/run` end to end, offline: training, interruption, resume and the features CLI on a bucket."""

import io
import os

import numpy as np
import pytest

from hrrl_jax import features
from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.workdir import WorkDir
from tests.train.helpers import tiny_config
from tests.workdir.object_store import fake_bucket

# A run trained, interrupted and resumed end to end: the full suite runs it, the fast tier leaves it out.
pytestmark = pytest.mark.slow


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    with fake_bucket(str(tmp_path / "bucket_objects"), monkeypatch) as root:
        yield root


def test_a_run_in_a_bucket_interrupts_resumes_and_finishes_like_a_local_run(bucket, tmp_path, capsys):
    config = tiny_config(total_steps=6, log_every_steps=2, checkpoint_every_steps=4)
    interrupted = train_and_evaluate(config, "gs://runs/tiny", stop_at_step=3)
    assert interrupted["status"] == "interrupted" and interrupted["step"] == 3
    resumed = train_and_evaluate(config, "gs://runs/tiny")
    local = train_and_evaluate(config, str(tmp_path / "local"))
    assert resumed["status"] == "finished" and resumed["test_accuracy"] == local["test_accuracy"]

    objects = os.path.join(bucket, "runs", "tiny")
    names = set(os.listdir(objects))
    assert {"config.json", "config_history.jsonl", "results.json", "checkpoints", "tensorboard"} <= names
    assert "metrics.jsonl" not in names and "run.lock" not in names  # Parts instead of appends; the lock released.
    bucket_dir, local_dir = WorkDir("gs://runs/tiny"), WorkDir(tmp_path / "local")
    bucket_records, local_records = bucket_dir.read_metrics(), local_dir.read_metrics()
    assert [record["step"] for record in bucket_records] == [record["step"] for record in local_records] == [2, 4, 6]
    for index in (0, 2):  # The window of step 4 spans the interruption (step 4 alone after it); the others match.
        assert bucket_records[index]["loss"] == local_records[index]["loss"]
    assert bucket_dir.checkpoint_steps() == [3, 4, 6] and local_dir.checkpoint_steps() == [4, 6]
    assert os.listdir(os.path.join(objects, "tensorboard"))[0].startswith("events.out.tfevents")

    capsys.readouterr()
    images = io.BytesIO()
    np.savez(images, images=np.zeros((3, 8, 8), np.uint8))
    WorkDir("gs://inputs").prepare()
    (WorkDir("gs://inputs").root / "images.npz").write_bytes(images.getvalue())
    features.main(["--workdir", "gs://runs/tiny", "--images", "gs://inputs/images.npz", "--out", "gs://out/f.npz"])
    extracted = np.load(os.path.join(bucket, "out", "f.npz"))
    assert extracted["features"].shape[0] == 3 and np.all(np.isfinite(extracted["features"]))
