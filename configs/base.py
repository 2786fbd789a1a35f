"""Every config key with its default; the experiment configs import this and change a few fields."""

import ml_collections

from hrrl_jax.train.objective import default_robust_config
from hrrl_jax.train.optimizers import default_optimizer_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 128  # Global batch, split over all devices of all hosts.
    config.eval_batch_size = 0  # 0: same as batch_size.
    config.total_steps = 1000
    config.num_epochs = 0.0  # > 0: overrides total_steps (converted with the epoch size).
    config.log_every_steps = 50
    config.eval_every_steps = 0  # 0: evaluate at the end only.
    config.checkpoint_every_steps = 500  # A checkpoint is also saved at the end and on SIGTERM/SIGINT.
    config.keep_checkpoints = 3
    config.precision = "float32"  # Compute dtype: float32 | bfloat16 (parameters and losses stay float32).

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "fashion_mnist"
    config.dataset.data_dir = ""  # "": the tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    config.dataset.train_split = "train"
    config.dataset.test_split = "test"
    config.dataset.image_size = 0  # 0: native resolution.
    config.dataset.augment = True
    config.dataset.exclude_classes = ()  # Classes held out of training (relabelled contiguously).
    config.dataset.only_classes = ()

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"
    config.model.width = 64
    config.model.stem = "auto"  # small | imagenet | auto (imagenet stem from 128 px up).
    # one_pass: BatchNorm variance E[x²] - E[x]² (one read of each activation, as in Flax's default);
    # two_pass: E[(x - E[x])²] (exact however large the mean; one more memory-bound read per layer).
    config.model.batch_norm_variance = "one_pass"

    config.optimizer = default_optimizer_config()
    config.robust = default_robust_config()
    return config
