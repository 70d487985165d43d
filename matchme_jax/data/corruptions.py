"""SPair-C pairs for the evaluation pipeline: a data source whose pairs come out corrupted.

The corruptions themselves (names, severities, seeds, `corrupt_pair`) are the recipe of
`data_builders.corruption_recipe`, which the `spair_c` TFDS builder also uses, so the on-the-fly
evaluation (`--config.mode=evaluate_corruptions`) and a prepared `spair_c` config hold the same
pixels.
"""

from data_builders.corruption_recipe import check, corrupt_pair


class CorruptedPairs:
    """The pairs of a random-access source with both images corrupted (`corrupt_pair`).

    A source like any other: grain reads it in its threads or worker processes, so the
    corruption runs on the host as part of the evaluation pipeline, before the resize.
    """

    def __init__(self, source, corruption: str, severity: int):
        check(corruption, severity)
        self.source = source
        self.corruption = corruption
        self.severity = severity

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return corrupt_pair(self.source[i], self.corruption, self.severity)
