"""What the real builders' tests share: reading a prepared split back, and the split check."""

SPLITS = ("train", "validation", "test")


def examples(builder, split: str) -> dict:
    """{pair_id: example} of a prepared split of `builder`."""
    source = builder.as_data_source(split)
    return {ex["pair_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}


def assert_no_image_pair_in_two_splits(builder) -> None:
    """Fails when one (source image, target image) pair lies in two splits of `builder`."""
    pairs = {
        split: {
            (ex["source_image_name"], ex["target_image_name"])
            for ex in examples(builder, split).values()
        }
        for split in SPLITS
    }
    assert not pairs["train"] & pairs["validation"]
    assert not pairs["train"] & pairs["test"]
    assert not pairs["validation"] & pairs["test"]
