"""Protocol v2 on CIFAR-100 (20 superclasses): select each method's arm on validation data, confirm on 5 seeds.

    python launch.py --config configs/protocol_cifar100.py --workdir workdirs/protocol_cifar100

The protocol of configs/protocol_fashion_mnist.py (its arms, families, score and rule: hrrl_jax/experiments/protocol.py)
on CIFAR-100 with its superclasses as concepts. Pre-training leaves out one class of each superclass (the last by label:
whale, trout, tulip, plate, sweet_pepper, television, wardrobe, cockroach, wolf, skyscraper, sea, kangaroo, skunk,
worm, woman, turtle, squirrel, willow_tree, train, tractor) and a stratified 10 % of the other 40,000 training
images. Targets: the 80 source classes under the 5 appearance shifts (example level), the 20 held-out classes and
CIFAR-10 (concept level); few-shot probes on the latter two, and 5-way few-shot tasks inside each superclass that
include its held-out class. Needs `cifar100` and `cifar10` prepared as array_record in `config.dataset.data_dir`.

Scale: ResNet-18 of width 64 with the small-image stem, 4,000 steps of batch 256 (28 epochs of the 36,000 training
images), SGD Nesterov 0.1 cosine, bf16. The arms' warm start and annealing span 3,000 steps, the deferral 1,000.
Cost: not measured (no CIFAR-100 can be had offline). Estimate: about 0.56 GFLOPs per image forward, 1.0 M images
per run: 2 to 4 minutes per run on one H100/H200-class GPU with the target measurements (about 150,000 images
embedded per run), so the 20 arms of selection take about 1 hour and the 25 confirmation runs about 1 h 15 min.
"""

import ml_collections

from configs import base
from configs.protocol_fashion_mnist import protocol_compare_config

# The last class (by label) of each of the 20 superclasses, ascending.
HELD_OUT_CLASSES = (24, 38, 61, 71, 75, 76, 80, 83, 87, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99)


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.dataset.name = "cifar100"
    config.dataset.exclude_classes = HELD_OUT_CLASSES
    config.dataset.validation_fraction = 0.1
    config.batch_size = 256
    config.total_steps = 4_000
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1_000
    config.precision = "bfloat16"

    config.compare = protocol_compare_config(config.total_steps, other_dataset="cifar10", probe_train_examples=10_000)
    return config
