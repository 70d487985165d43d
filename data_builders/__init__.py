"""TFDS builders of matchme_jax; importing this package registers every builder with TFDS."""

from data_builders.synthetic_correspondence import SyntheticCorrespondence

__all__ = ["SyntheticCorrespondence"]
