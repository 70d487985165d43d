"""The embedded synthetic semantic-correspondence benchmark (TFDS builder and renderer)."""

from data_builders.synthetic_correspondence.synthetic_correspondence_dataset_builder import (
    SyntheticCorrespondence,
    SyntheticCorrespondenceConfig,
)

__all__ = ["SyntheticCorrespondence", "SyntheticCorrespondenceConfig"]
