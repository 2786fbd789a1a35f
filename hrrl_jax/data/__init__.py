"""Data: TFDS builders and sources, concept hierarchies, appearance shifts and sharded input batches."""

from hrrl_jax.data.hierarchy import ConceptHierarchy
from hrrl_jax.data.pipeline import InputPipeline
from hrrl_jax.data.registry import KNOWN_DATASETS, load_split
from hrrl_jax.data.shifts import KNOWN_SHIFTS, apply_shift
from hrrl_jax.data.split_data import DatasetInfo, SplitData

__all__ = [
    "ConceptHierarchy",
    "DatasetInfo",
    "SplitData",
    "load_split",
    "InputPipeline",
    "apply_shift",
    "KNOWN_DATASETS",
    "KNOWN_SHIFTS",
]
