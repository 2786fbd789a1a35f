"""ERM on CIFAR-100 (20 superclasses as concepts) with a standard-width ResNet-18 and the small-image stem.

    python launch.py --config configs/cifar100_resnet18.py --workdir workdirs/cifar100_r18

Needs the tfds `cifar100` data set prepared as array_record in `config.dataset.data_dir`.
Cost: 200 epochs = 78,200 steps of batch 128 at 32x32 (about 0.56 G multiply-adds per image forward): a GPU job.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.dataset.name = "cifar100"
    config.model.width = 64
    config.batch_size = 128
    config.num_epochs = 200.0
    config.log_every_steps = 100
    config.eval_every_steps = 3910
    config.checkpoint_every_steps = 3910
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.precision = "bfloat16"
    return config
