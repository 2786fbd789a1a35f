"""ERM on CIFAR-100 (20 superclasses as concepts) with a standard-width ResNet-18 (base: width 64, batch 128, SGD
Nesterov 0.1 cosine, weight decay 5e-4) and the small-image stem.

    python launch.py --config configs/cifar100_resnet18.py --workdir workdirs/cifar100_r18

Needs the tfds `cifar100` data set prepared as array_record in `config.dataset.data_dir`.
Cost: 200 epochs = 78,000 steps of batch 128 at 32x32 (about 0.56 G multiply-adds per image forward): a GPU job.
Result: not measured here (no CIFAR-100 can be had offline).
"""

from configs import base


def get_config():
    config = base.get_config()
    config.dataset.name = "cifar100"
    config.num_epochs = 200.0
    config.log_every_steps = 100
    config.eval_every_epochs = 10.0
    config.checkpoint_every_epochs = 10.0
    config.precision = "bfloat16"
    return config
