"""SPair-71k as a TFDS builder."""

from data_builders.spair71k.spair71k_dataset_builder import Spair71k

__all__ = ["Spair71k"]
