"""A folder of the user's own unannotated images as a TFDS builder."""

from data_builders.unlabeled_images.unlabeled_images_dataset_builder import UnlabeledImages

__all__ = ["UnlabeledImages"]
