"""Data: TFDS builders and sources, concept hierarchies, appearance shifts, sharded uint8 input batches built by
worker processes, and their normalisation inside the jitted steps."""

from hrrl_jax.data.hierarchy import ConceptHierarchy
from hrrl_jax.data.normalisation import normalise_images
from hrrl_jax.data.pipeline import InputPipeline
from hrrl_jax.data.registry import describe_dataset, image_side, load_data, load_split
from hrrl_jax.data.shifts import KNOWN_SHIFTS, apply_shift
from hrrl_jax.data.split_data import DatasetInfo, SplitData
from hrrl_jax.schema import KNOWN_DATASETS

__all__ = [
    "KNOWN_DATASETS",
    "KNOWN_SHIFTS",
    "ConceptHierarchy",
    "DatasetInfo",
    "InputPipeline",
    "SplitData",
    "apply_shift",
    "describe_dataset",
    "image_side",
    "load_data",
    "load_split",
    "normalise_images",
]
