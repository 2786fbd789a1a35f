"""The features CLI: shapes and labels from a run's checkpoint, and user images embedded like the source."""

import json
import shutil

import numpy as np
import pytest

from hrrl_jax.data import load_split
from hrrl_jax.evaluate import features as features_cli
from hrrl_jax.train.loop import train_and_evaluate
from tests.train.helpers import tiny_config


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(tiny_config(total_steps=6), str(workdir))
    return workdir


def test_dataset_features_have_the_right_shapes(trained_workdir, tmp_path):
    out = tmp_path / "digits_test.npz"
    features_cli.main(["--workdir", str(trained_workdir), "--dataset", "digits", "--split", "test", "--out", str(out)])
    saved = np.load(out)
    test = load_split("digits", "test")
    assert saved["features"].dtype == np.float32
    assert saved["features"].shape == (len(test), 4 * 8)  # ResNet features: 8 x width.
    np.testing.assert_array_equal(saved["labels"], test.labels)
    assert np.isfinite(saved["features"]).all() and saved["features"].std() > 0


def test_a_run_written_before_the_batch_norm_variance_key_loads_as_two_pass(trained_workdir, tmp_path):
    old_run = tmp_path / "old_run"
    shutil.copytree(trained_workdir, old_run)
    config = json.loads((old_run / "config.json").read_text())
    assert config["model"].pop("batch_norm_variance") == "shifted_one_pass"
    (old_run / "config.json").write_text(json.dumps(config))
    trained = features_cli.load_trained_model(str(old_run))
    assert trained.model.batch_norm_variance == "two_pass"
    assert trained.step == features_cli.load_trained_model(str(trained_workdir)).step


def test_user_images_are_embedded_exactly_like_the_source(trained_workdir, tmp_path):
    test = load_split("digits", "test")
    images = test.get_images(np.arange(40))
    npz = tmp_path / "mine.npz"
    np.savez(npz, images=images[..., 0], labels=test.labels[:40])  # N x H x W: one channel, no axis.
    out_user, out_source = tmp_path / "user.npz", tmp_path / "source.npz"
    features_cli.main(["--workdir", str(trained_workdir), "--images", str(npz), "--out", str(out_user)])
    features_cli.main(["--workdir", str(trained_workdir), "--dataset", "digits", "--out", str(out_source)])
    np.testing.assert_allclose(
        np.load(out_user)["features"], np.load(out_source)["features"][:40], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np.load(out_user)["labels"], test.labels[:40])


def test_user_images_of_another_size_and_channels(trained_workdir, tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "colour.npz"
    np.savez(npz, images=rng.integers(0, 256, (6, 40, 30, 3), dtype=np.uint8))
    out = tmp_path / "colour_features.npz"
    features_cli.main(["--workdir", str(trained_workdir), "--images", str(npz), "--out", str(out)])
    assert np.load(out)["features"].shape == (6, 32)


def test_cli_needs_exactly_one_input(trained_workdir, tmp_path):
    with pytest.raises(SystemExit):
        features_cli.main(["--workdir", str(trained_workdir), "--out", str(tmp_path / "x.npz")])


def test_extractions_with_equal_models_share_one_trace(trained_workdir, monkeypatch):
    # A protocol run embeds a dozen splits and every run of one config has an equal model: tracing the network once
    # per extraction cost a protocol test more than its training.
    traces = []
    plain_features = features_cli._features
    monkeypatch.setattr(features_cli, "_features", lambda *args: traces.append(1) or plain_features(*args))
    features_cli._embedding_function.cache_clear()
    test = load_split("digits", "test")
    first = features_cli.extract_features(features_cli.load_trained_model(str(trained_workdir)), test)
    again = features_cli.extract_features(features_cli.load_trained_model(str(trained_workdir)), test.select(range(9)))
    assert len(traces) == 1
    np.testing.assert_array_equal(again[0], first[0][:9])
