"""Tests of the auxiliary BatchNorm option (AdvProp): two BatchNorm sets sharing convolutions and head.

As in test_resnet.py, the variables are filled on the host (no compiled initialisers) except in the one test
of the initialisers themselves, which runs on single blocks. The passes run on a two-block ResNet (stem, an
identity block, a projection block), which has every kind of BatchNorm and compiles in seconds on a CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax import schema
from hrrl_jax.models import INPUT_BATCH_NORMS, configured_model, count_flops, create_model
from hrrl_jax.models.resnet import BasicBlock, BottleneckBlock, ResNet

NUM_CLASSES = 5
IMAGES_SHAPE = (4, 8, 8, 3)
# resnet18: stem, 8 blocks of two units, and a projection at the first block of stages 2-4.
RESNET18_BATCH_NORMS = 1 + 8 * 2 + 3
# _model: stem, 2 blocks of two units, a projection at the first block of stage 2.
BATCH_NORMS = 1 + 2 * 2 + 1


def _model(auxiliary_batch_norm=True):
    return ResNet(
        stage_sizes=(1, 1),
        block_cls=BasicBlock,
        num_classes=NUM_CLASSES,
        width=4,
        stem="small",
        auxiliary_batch_norm=auxiliary_batch_norm,
    )


def _resnet18(auxiliary_batch_norm=True):
    return create_model(
        "resnet18", num_classes=NUM_CLASSES, width=4, stem="small", auxiliary_batch_norm=auxiliary_batch_norm
    )


def _abstract_variables(model):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(IMAGES_SHAPE), train=False))


def _host_variables(model, seed=0):
    """Random kernels, scales, biases and running statistics, with each bn_aux a copy of its bn."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
        if name in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), jnp.float32)

    filled = jax.tree_util.tree_map_with_path(fill, _abstract_variables(model))
    return _with_auxiliary_copied_from_main(filled)


def _with_auxiliary_copied_from_main(tree):
    if not isinstance(tree, dict):
        return tree
    tree = {key: _with_auxiliary_copied_from_main(value) for key, value in tree.items()}
    if "bn_aux" in tree:
        tree["bn_aux"] = tree["bn"]
    return tree


def _without_auxiliary(tree):
    if isinstance(tree, tuple):
        return tuple(_without_auxiliary(value) for value in tree)
    if not isinstance(tree, dict):
        return tree
    return {key: _without_auxiliary(value) for key, value in tree.items() if key != "bn_aux"}


def _leaves_by_path(tree):
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _scaled_auxiliary(variables, factor):
    """The variables with every bn_aux scale and running variance multiplied by `factor`."""

    def scale(path, leaf):
        keys = [entry.key for entry in path]
        return leaf * factor if "bn_aux" in keys and keys[-1] in ("scale", "var") else leaf

    return jax.tree_util.tree_map_with_path(scale, variables)


def _images(seed=0):
    return jax.random.normal(jax.random.key(seed), IMAGES_SHAPE, jnp.float32) * 2.0 + 0.5


@jax.jit
def _train_passes(variables, images):
    """Train-mode main and auxiliary passes of the auxiliary model: ((logits, features), batch_stats) each."""
    model = _model()
    main = model.apply(variables, images, train=True, mutable=["batch_stats"])
    auxiliary = model.apply(variables, images, train=True, batch_norm="auxiliary", mutable=["batch_stats"])
    return main, auxiliary


def test_allowed_names_are_the_schemas():
    assert INPUT_BATCH_NORMS == ("main", "auxiliary") == schema.INPUT_BATCH_NORMS


def test_without_the_option_the_model_and_its_variables_are_unchanged():
    plain, off = create_model("resnet18", num_classes=NUM_CLASSES, width=4, stem="small"), _resnet18(False)
    assert off == plain
    shapes = _abstract_variables(plain)
    assert jax.tree.structure(_abstract_variables(off)) == jax.tree.structure(shapes)
    assert "bn_aux" not in str(_leaves_by_path(shapes))
    # The auxiliary model has exactly the plain model's variables plus one bn_aux per BatchNorm.
    auxiliary_shapes = _abstract_variables(_resnet18())
    assert jax.tree.structure(_without_auxiliary(auxiliary_shapes)) == jax.tree.structure(shapes)
    for collection in ("params", "batch_stats"):
        paths = _leaves_by_path(auxiliary_shapes[collection])
        auxiliary_paths = [path for path in paths if "'bn_aux'" in path]
        assert len(auxiliary_paths) == 2 * RESNET18_BATCH_NORMS
        for path in auxiliary_paths:
            assert paths[path.replace("'bn_aux'", "'bn'")].shape == paths[path].shape


def test_main_pass_of_the_auxiliary_model_is_the_plain_model_bit_for_bit():
    """Outputs, running statistics and gradients of the main pass ignore the auxiliary set entirely."""
    plain = _model(False)
    variables = _scaled_auxiliary(_host_variables(_model()), 3.0)  # An auxiliary set unlike the main one.
    plain_variables = _without_auxiliary(variables)
    images = _images()

    def loss(model, params, collections):
        (logits, features), updated = model.apply(
            {**collections, "params": params}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(logits**2) + jnp.sum(features), (logits, features, updated)

    def run(model, tree):
        return jax.jit(jax.grad(lambda p: loss(model, p, tree), has_aux=True))(tree["params"])

    grads, outputs = run(_model(), variables)
    plain_grads, plain_outputs = run(plain, plain_variables)
    jax.tree.map(np.testing.assert_array_equal, _without_auxiliary(grads), plain_grads)
    jax.tree.map(np.testing.assert_array_equal, _without_auxiliary(outputs), plain_outputs)


@pytest.mark.parametrize("block_cls", [BasicBlock, BottleneckBlock])
def test_init_creates_both_sets_alike_and_the_shared_weights_of_the_plain_block(block_cls):
    """bn_aux starts as its bn (zero last scale included); convolutions are those the plain block draws."""
    inputs = jnp.ones((2, 4, 4, 8))
    key = jax.random.key(0, impl="unsafe_rbg")

    def init(auxiliary_batch_norm, batch_norm):
        block = block_cls(features=8 // block_cls.expansion, strides=2, auxiliary_batch_norm=auxiliary_batch_norm)
        return jax.jit(lambda x: block.init(key, x, train=True, batch_norm=batch_norm))(inputs)

    plain = init(False, "main")
    for batch_norm in INPUT_BATCH_NORMS:
        variables = init(True, batch_norm)
        assert set(variables["params"]) == {"unit1", "unit2", "projection"} | (
            {"unit3"} if block_cls.expansion > 1 else set()
        )
        jax.tree.map(np.testing.assert_array_equal, _without_auxiliary(variables), plain)
        for unit in variables["params"]:
            for collection in ("params", "batch_stats"):
                jax.tree.map(
                    np.testing.assert_array_equal,
                    variables[collection][unit]["bn_aux"],
                    variables[collection][unit]["bn"],
                )
        last_unit = "unit3" if block_cls.expansion > 1 else "unit2"
        np.testing.assert_array_equal(variables["params"][last_unit]["bn_aux"]["scale"], 0.0)
        np.testing.assert_array_equal(variables["params"]["unit1"]["bn_aux"]["scale"], 1.0)
        np.testing.assert_array_equal(variables["batch_stats"]["unit1"]["bn_aux"]["var"], 1.0)


def test_each_train_pass_updates_only_its_own_running_statistics():
    variables = _host_variables(_model())
    (_, main_stats), (_, auxiliary_stats) = _train_passes(variables, _images())
    before = _leaves_by_path(variables["batch_stats"])
    after_main, after_auxiliary = (
        _leaves_by_path(main_stats["batch_stats"]),
        _leaves_by_path(auxiliary_stats["batch_stats"]),
    )
    assert set(after_main) == set(after_auxiliary) == set(before)
    assert len(before) == 2 * 2 * BATCH_NORMS  # (mean, var) x (bn, bn_aux)
    for path, old in before.items():
        updated, unchanged = (after_auxiliary, after_main) if "'bn_aux'" in path else (after_main, after_auxiliary)
        np.testing.assert_array_equal(unchanged[path], old, err_msg=path)
        assert np.all(updated[path] != old), path
    # With equal sets, both passes compute the same statistics, each into its own set.
    for path in before:
        if "'bn_aux'" in path:
            np.testing.assert_array_equal(after_auxiliary[path], after_main[path.replace("'bn_aux'", "'bn'")])


def test_the_auxiliary_pass_normalises_with_the_auxiliary_set():
    variables = _host_variables(_model())
    images = _images()
    (main_outputs, _), (auxiliary_outputs, _) = _train_passes(variables, images)
    jax.tree.map(np.testing.assert_array_equal, auxiliary_outputs, main_outputs)  # Equal sets, equal passes.
    changed = _scaled_auxiliary(variables, 2.0)
    (main_outputs_changed, _), (auxiliary_outputs_changed, _) = _train_passes(changed, images)
    jax.tree.map(np.testing.assert_array_equal, main_outputs_changed, main_outputs)
    assert not np.allclose(auxiliary_outputs_changed[0], main_outputs[0])
    # Eval mode reads the running averages of the selected set.
    evaluate = jax.jit(
        lambda v, batch_norm: _model().apply(v, images, train=False, batch_norm=batch_norm), static_argnums=1
    )
    np.testing.assert_array_equal(evaluate(changed, "main")[0], evaluate(variables, "main")[0])
    np.testing.assert_array_equal(evaluate(variables, "auxiliary")[0], evaluate(variables, "main")[0])
    assert not np.allclose(evaluate(changed, "auxiliary")[0], evaluate(variables, "main")[0])


def test_gradients_of_the_auxiliary_pass_skip_the_main_batch_norm():
    model = _model()
    variables = _host_variables(model)
    images = _images()

    def loss(params):
        (logits, features), _ = model.apply(
            {**variables, "params": params}, images, train=True, batch_norm="auxiliary", mutable=["batch_stats"]
        )
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0]) + jnp.sum(features**2)

    grads = _leaves_by_path(jax.jit(jax.grad(loss))(variables["params"]))
    assert len([path for path in grads if "'bn'" in path]) == 2 * BATCH_NORMS
    for path, grad in grads.items():
        if "'bn'" in path:
            np.testing.assert_array_equal(grad, 0.0, err_msg=path)
        else:  # Shared convolutions and head, and the auxiliary scales and biases.
            assert np.linalg.norm(grad) > 0, path


def test_count_flops_counts_the_main_forward_pass_only():
    shapes = _abstract_variables(_model())
    with_option = count_flops(_model(), shapes, IMAGES_SHAPE)
    without_option = count_flops(_model(False), _without_auxiliary(shapes), IMAGES_SHAPE)
    assert with_option == without_option  # One forward pass, through the main set: nothing added.
    assert with_option > 5e4  # XLA on CPU counts 7.0e4: about 4e4 multiply-adds of the convolutions and head.


def test_configured_model_follows_the_input_batch_norm_key():
    config = schema.default_config()
    config.model.width = 4
    assert config.robust.input_batch_norm == "main"
    assert not configured_model(config, NUM_CLASSES).auxiliary_batch_norm
    config.robust.input_batch_norm = "auxiliary"
    model = configured_model(config, NUM_CLASSES)
    assert model.auxiliary_batch_norm and model == create_model(
        "resnet18", num_classes=NUM_CLASSES, width=4, auxiliary_batch_norm=True
    )
    del config.robust["input_batch_norm"]  # A config written before the key existed.
    assert not configured_model(config, NUM_CLASSES).auxiliary_batch_norm


def test_bad_requests_are_rejected_in_one_line():
    images = jax.ShapeDtypeStruct(IMAGES_SHAPE, jnp.float32)
    plain = _model(False)
    # The message is one line; raised under tracing, jax appends its note on filtered frames below it.
    missing = r"^batch_norm='auxiliary' needs [^\n]*=True \(config.robust.input_batch_norm='auxiliary'\)\.\n"
    with pytest.raises(ValueError, match=missing):
        jax.eval_shape(
            lambda v, x: plain.apply(v, x, train=True, batch_norm="auxiliary"), _abstract_variables(plain), images
        )
    with pytest.raises(ValueError, match=missing):  # A block on its own checks too.
        jax.eval_shape(lambda x: BasicBlock(4).init(jax.random.key(0), x, train=True, batch_norm="auxiliary"), images)
    with pytest.raises(ValueError, match=r"^Unknown batch_norm 'adversarial'; choose one of main, auxiliary\.\n"):
        jax.eval_shape(
            lambda v, x: _model().apply(v, x, train=True, batch_norm="adversarial"),
            _abstract_variables(_model()),
            images,
        )
    with pytest.raises(ValueError, match=r"^auxiliary_batch_norm must be True or False, got 'auxiliary'; "):
        _resnet18("auxiliary")
