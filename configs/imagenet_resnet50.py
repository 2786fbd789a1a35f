"""ERM on ImageNet (11 WordNet concepts) with ResNet-50 at 224x224, bf16: the TPU/GPU-scale reference job.

    python launch.py --config configs/imagenet_resnet50.py --workdir /shared/workdirs/imagenet_r50

Needs the tfds `imagenet2012` data set prepared as array_record in `config.dataset.data_dir`.
Cost: 90 epochs = 112,590 steps of batch 1024, 115M images (about 8.2 GFLOPs per image forward, 3x that per
trained image: 2.8e18 FLOPs). At the 5,650 images/s a plain Flax ResNet-50 step reaches on one H100, that is
about 5.7 hours of compute on one H100 (the input pipeline must keep up), or 43 minutes on 8.
Result: not measured here (no ImageNet can be had offline).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.dataset.name = "imagenet2012"
    config.dataset.test_split = "validation"
    config.dataset.image_size = 224
    config.model.name = "resnet50"
    config.model.stem = "imagenet"
    config.batch_size = 1024
    config.num_epochs = 90.0
    config.log_every_steps = 100
    config.eval_every_epochs = 4.0
    config.checkpoint_every_epochs = 4.0
    config.precision = "bfloat16"
    # About 580 images/s per worker process (README, "How many workers a host needs"): one H200 step needs 11.
    config.dataset.num_workers = 12
    config.optimizer.learning_rate = 0.4  # 0.1 x batch / 256.
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_epochs = 5.0
    return config
