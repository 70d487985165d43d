"""PF-WILLOW as a TFDS builder."""

from data_builders.pf_willow.pf_willow_dataset_builder import PfWillow

__all__ = ["PfWillow"]
