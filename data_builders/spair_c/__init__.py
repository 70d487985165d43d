"""SPair-C (SPair-71k's test pairs under ImageNet-C corruptions) as a TFDS builder."""

from data_builders.spair_c.spair_c_dataset_builder import SpairC

__all__ = ["SpairC"]
