"""The examples under examples/ run and do what they say: loss falls, accuracy clears a bound, p stays on the simplex,
the sharded loops match the single-device one, a restored checkpoint equals the saved state, the notebook runs."""

import re
import sys
from pathlib import Path

import jax
import nbclient
import nbformat
import numpy as np
import pytest

from hrrl_jax import robust

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import checkpoint  # noqa: E402
import digits  # noqa: E402
import own_loop  # noqa: E402
import sharded  # noqa: E402

COMPARED_STEPS = 30  # steps of the sharded loops compared with the single-device one


def assert_on_simplex(distributions: np.ndarray) -> None:
    assert np.all(distributions >= 0)
    np.testing.assert_allclose(distributions.sum(axis=-1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def own_loop_run():
    lines = []
    return own_loop.train(num_steps=200, log_every=50, log=lines.append), lines


def test_own_loop_learns_the_digits_and_logs_p_and_the_ess(own_loop_run):
    result, lines = own_loop_run
    assert result.losses[-20:].mean() < 0.25 * result.losses[:10].mean()
    assert result.test_accuracy > 0.93
    assert result.test_concept_accuracy.min() > 0.9
    assert result.concept_distributions.shape == (200, len(digits.CONCEPT_NAMES))
    assert_on_simplex(result.concept_distributions)
    assert np.all((result.ess > 0) & (result.ess <= 1 + 1e-6)) and result.ess.min() < 0.99  # the weights do move
    assert len(lines) == 5 and all("ESS" in line and "p = loops" in line for line in lines[:4])
    assert re.fullmatch(r"test accuracy 0\.\d{4}, per concept \[.*\]", lines[-1])


def test_a_step_with_a_non_finite_gradient_leaves_the_model_and_the_adversary_unchanged():
    data = digits.load()
    model = digits.MLP()
    tx = own_loop.make_optimizer(data.concept_sizes)
    train_step = jax.jit(own_loop.make_train_step(model, tx))
    params = model.init(jax.random.key(0), data.train_images[:1])
    params, opt_state, _ = train_step(params, tx.init(params), data.train_images[:64], data.train_labels[:64])
    poisoned = data.train_images[64:128].copy()
    poisoned[0, 0] = np.nan
    new_params, new_state, _ = train_step(params, opt_state, poisoned, data.train_labels[64:128])
    jax.tree.map(np.testing.assert_array_equal, new_params, params)
    before, after = robust.find_reweighting_state(opt_state), robust.find_reweighting_state(new_state)
    np.testing.assert_array_equal(after.concept_losses, before.concept_losses)
    assert int(after.step) == int(before.step) == 1


@pytest.fixture(scope="module")
def single_device_run():
    return own_loop.train(num_steps=COMPARED_STEPS, log_every=0, log=lambda line: None)


@pytest.mark.parametrize("parallelism", ["jit", "shard_map"])
def test_the_sharded_loops_match_the_single_device_loop(single_device_run, parallelism):
    assert jax.device_count() == 8
    lines = []
    result = sharded.train(parallelism, num_steps=COMPARED_STEPS, log_every=10, log=lines.append)
    assert lines[0] == f"{parallelism} over 8 devices: cpu"
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), result.params, single_device_run.params
    )
    np.testing.assert_allclose(result.concept_distributions, single_device_run.concept_distributions, atol=1e-5)
    np.testing.assert_allclose(result.ess, single_device_run.ess, atol=1e-5)
    assert_on_simplex(result.concept_distributions)
    sharding = jax.tree.leaves(result.params)[0].sharding
    assert sharding.is_fully_replicated and len(sharding.device_set) == 8


def test_sharded_refuses_a_batch_that_does_not_split_over_the_devices():
    with pytest.raises(ValueError, match="batch_size=100 must be a multiple of the 8 devices"):
        sharded.train(batch_size=100)


def test_a_restored_checkpoint_equals_the_saved_state_and_resumes_the_same_run(tmp_path):
    out = checkpoint.main(str(tmp_path / "checkpoint"), steps_before=20, steps_after=10, log=lambda line: None)
    saved_params, saved_state = out["saved"]
    jax.tree.map(np.testing.assert_array_equal, out["restored"]["params"], saved_params)
    jax.tree.map(np.testing.assert_array_equal, out["restored"]["opt_state"], saved_state)
    adversary = robust.find_reweighting_state(out["restored"]["opt_state"])
    assert int(adversary.step) == 20 and np.all(np.asarray(adversary.concept_losses) > 0)
    assert adversary.settings == robust.find_reweighting_state(saved_state).settings
    jax.tree.map(np.testing.assert_array_equal, out["resumed"][:2], out["uninterrupted"][:2])


def test_the_readme_example_is_examples_quickstart():
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("A complete example (softmax regression", 1)[1].split("```python\n", 1)[1].split("```\n")[0]
    assert block in (EXAMPLES / "quickstart.py").read_text()


def test_the_notebook_runs_and_reaches_the_accuracy_of_the_script():
    notebook = nbformat.read(EXAMPLES / "own_loop.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed clean
    nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    output = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)
    assert len(re.findall(r"step \d+: loss .*, ESS .*, p = \[", output)) == 6
    assert float(re.search(r"^test accuracy (0\.\d+)$", output, re.MULTILINE).group(1)) > 0.93
