"""config.init_from: a fresh run starts from another run's model (verified, shape-checked), with a fresh optimizer
and adversary; a resume of that run takes its own checkpoint."""

import shutil

import jax
import numpy as np
import pytest

from hrrl_jax import robust
from hrrl_jax.data import load_data
from hrrl_jax.errors import ConfigError
from hrrl_jax.train.init_from import initialise_from
from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.run import build_run
from hrrl_jax.workdir import CheckpointError
from tests.train.helpers import assert_trees_equal, read_checkpoint_state, tiny_config
from tests.train.test_integrity import corrupt_largest_data_file

# Each test trains and restores runs end to end: the full suite runs them, the fast tier leaves them out.
pytestmark = pytest.mark.slow

PRETRAIN_STEPS = 3


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An ERM run of PRETRAIN_STEPS steps: its work directory."""
    workdir = tmp_path_factory.mktemp("pretrained")
    train_and_evaluate(tiny_config(total_steps=PRETRAIN_STEPS), str(workdir))
    return workdir


@pytest.fixture(scope="module")
def splits():
    return load_data(tiny_config())


def _fresh_state(config, splits):
    return build_run(config, devices=jax.devices()[:1], splits=splits).trainer.state


def test_the_model_comes_from_the_checkpoint_and_the_optimizer_and_adversary_start_afresh(pretrained, splits, capsys):
    config = tiny_config(robust__method="cl")
    fresh = _fresh_state(config, splits)
    state, source = initialise_from(fresh, str(pretrained))
    saved = read_checkpoint_state(str(pretrained), PRETRAIN_STEPS)
    assert source == str(pretrained / "checkpoints" / str(PRETRAIN_STEPS))
    assert_trees_equal(state.params, saved["params"])
    assert_trees_equal(state.batch_stats, saved["batch_stats"])
    assert_trees_equal(state.opt_state, fresh.opt_state)  # Zero momentum, the adversary at its prior, step 0.
    assert int(state.step) == 0 and int(robust.find_reweighting_state(state.opt_state).step) == 0
    assert not np.allclose(jax.tree.leaves(saved["params"])[0], jax.tree.leaves(fresh.params)[0])
    assert f"Initialised the model from the checkpoint at step {PRETRAIN_STEPS}" in capsys.readouterr().out


def test_a_checkpoint_folder_names_its_step(pretrained, splits):
    config = tiny_config()
    state, source = initialise_from(_fresh_state(config, splits), str(pretrained / "checkpoints" / "3"))
    assert source.endswith("checkpoints/3")
    assert_trees_equal(state.params, read_checkpoint_state(str(pretrained), 3)["params"])


def test_another_model_is_refused_naming_the_first_differing_array_and_both_shapes(pretrained, splits):
    with pytest.raises(
        ConfigError,
        match=r"^config.init_from='.*': the checkpoint at step 3 in .* holds batch_stats/stage1_block1/unit1/bn/mean "
        r"with shape \(4,\), this model expects \(8,\): it was trained with another model or data set",
    ):
        initialise_from(_fresh_state(tiny_config(model__width=8), splits), str(pretrained))


def test_the_auxiliary_batch_norm_starts_as_a_copy_of_the_main_one(pretrained, splits, capsys):
    config = tiny_config(
        robust__method="el", robust__example_level="input", robust__input_beta=0.5, robust__input_batch_norm="auxiliary"
    )
    state, _ = initialise_from(_fresh_state(config, splits), str(pretrained))
    saved = read_checkpoint_state(str(pretrained), PRETRAIN_STEPS)
    stem_params, stem_stats = state.params["stem"], state.batch_stats["stem"]
    for name in ("scale", "bias"):
        np.testing.assert_array_equal(stem_params["bn_aux"][name], saved["params"]["stem"]["bn"][name])
    for name in ("mean", "var"):
        np.testing.assert_array_equal(stem_stats["bn_aux"][name], saved["batch_stats"]["stem"]["bn"][name])
    assert "has no auxiliary BatchNorm (bn_aux): its" in capsys.readouterr().out


def test_a_corrupt_checkpoint_or_a_wrong_path_is_refused(pretrained, splits, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(pretrained, damaged)
    corrupt_largest_data_file(damaged / "checkpoints" / "3")
    with pytest.raises(CheckpointError, match=r"step 3 (is corrupt|cannot be read).*: config.init_from was not used\."):
        initialise_from(_fresh_state(tiny_config(), splits), str(damaged))
    with pytest.raises(ConfigError, match=r"^config.init_from='.*nowhere': is neither a work directory"):
        train_and_evaluate(tiny_config(init_from=str(tmp_path / "nowhere")), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # Refused before any data or state.


def test_a_resume_takes_its_own_checkpoint_not_init_from_again(pretrained, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(pretrained, source)
    config = tiny_config(robust__method="cl", total_steps=2, init_from=str(source))
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=1)
    shutil.rmtree(source)  # The resume needs only its own checkpoint.
    resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
    assert_trees_equal(
        read_checkpoint_state(str(tmp_path / "straight"), 2), read_checkpoint_state(str(tmp_path / "resumed"), 2)
    )
    expected_source = str(source / "checkpoints" / str(PRETRAIN_STEPS))
    assert straight["init_from"] == resumed["init_from"] == expected_source
