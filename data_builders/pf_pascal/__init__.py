"""PF-PASCAL as a TFDS builder."""

from data_builders.pf_pascal.pf_pascal_dataset_builder import PfPascal

__all__ = ["PfPascal"]
