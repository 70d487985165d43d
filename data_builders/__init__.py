"""TFDS builders of matchme_jax; importing this package registers every builder with TFDS."""

from data_builders.pf_pascal import PfPascal as PfPascal
from data_builders.pf_willow import PfWillow as PfWillow
from data_builders.spair71k import Spair71k as Spair71k
from data_builders.spair_c import SpairC as SpairC
from data_builders.synthetic_correspondence import SyntheticCorrespondence
from data_builders.unlabeled_images import UnlabeledImages as UnlabeledImages

__all__ = ["SyntheticCorrespondence"]
