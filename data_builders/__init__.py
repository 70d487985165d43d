"""TFDS builders of matchme_jax, and what the rest of the project must know about them.

Importing this package stays light (no TFDS), so that validating a config needs no TFDS;
`register()` imports the builder modules, which registers every builder with TFDS.
"""

import importlib

# The builder modules, one per dataset; TFDS registers a builder class when its module is imported.
BUILDER_MODULES = (
    "data_builders.pf_pascal",
    "data_builders.pf_willow",
    "data_builders.spair71k",
    "data_builders.spair_c",
    "data_builders.synthetic_correspondence",
    "data_builders.unlabeled_images",
)
# Builders whose data is generated on the spot: preparing them needs nothing from outside,
# so a run prepares them on first use instead of asking the user to.
GENERATED_DATASETS = ("synthetic_correspondence",)
# The one builder rendered from `config.dataset.generator_seed`; the others take seed 0 only.
SEEDED_DATASET = "synthetic_correspondence"
NOT_SEEDED = f"only dataset.name={SEEDED_DATASET!r} is rendered from a seed; use 0 (the default)"


def register() -> None:
    """Registers every builder of this package with TFDS (`tfds.builder(name)` finds them)."""
    for module in BUILDER_MODULES:
        importlib.import_module(module)
