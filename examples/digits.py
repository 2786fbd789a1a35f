"""What the digits examples share: scikit-learn's 8 x 8 digits, a concept map over them and a small Flax model.

The digits carry no hierarchy of their own, so the examples group the ten classes into three concepts by the
shape of their strokes. Any class -> concept map works the same way (the identity if there is no hierarchy).
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

CONCEPT_OF_CLASS = np.array([0, 1, 2, 2, 1, 2, 0, 1, 0, 0])  # digit -> concept
CONCEPT_NAMES = ("loops (0 6 8 9)", "straight (1 4 7)", "curves (2 3 5)")


class Digits(NamedTuple):
    train_images: np.ndarray  # float32 [N, 64], pixels scaled to [0, 1]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def concept_sizes(self) -> np.ndarray:
        """n_k: training examples per concept, the counts that make the loss weights unbiased."""
        return np.bincount(CONCEPT_OF_CLASS[self.train_labels], minlength=len(CONCEPT_NAMES))


def load(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """The 1,797 digits (shipped inside scikit-learn: no download), split stratified into train and test."""
    images, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        (images / 16.0).astype(np.float32),
        labels.astype(np.int32),
        test_size=test_fraction,
        stratify=labels,
        random_state=seed,
    )
    return Digits(train_x, train_y, test_x, test_y)


def uniform_batches(digits: Digits, batch_size: int, seed: int):
    """Endless minibatches drawn uniformly from the training set, as the unbiased weights require."""
    rng = np.random.default_rng(seed)
    while True:
        rows = rng.choice(len(digits.train_labels), batch_size, replace=False)
        yield digits.train_images[rows], digits.train_labels[rows]


class MLP(nn.Module):
    """Two hidden layers; returns the logits and the deep features (the input of the last linear layer)."""

    hidden: int = 64
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = nn.relu(nn.Dense(self.hidden)(images))
        features = nn.relu(nn.Dense(self.hidden)(features))
        return nn.Dense(self.num_classes)(features), features
