#!/usr/bin/env bash
# Puts the official PyTorch CATs (Cost-Aggregation-transformers, GPL-3.0) at the pinned commit into
# .official_cats/ (git-ignored; never committed here), for benchmarks/torch_cats_bench.py.
# Run once on a machine with network: the GPU machine has none, so the device tool carries the
# folder there: run(command="...torch_cats_bench.py...", carry=[".official_cats"]).
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=d01785adcd046213c5b79c557a67237e2b2ea119
DEST=.official_cats
if [ ! -d "$DEST/.git" ]; then
    rm -rf "$DEST"
    git clone --quiet https://github.com/SunghwanHong/Cost-Aggregation-transformers.git "$DEST"
fi
git -C "$DEST" checkout --quiet "$COMMIT"
# The model needs only the Python files: drop the images (about 1.2 MB) so the carry stays small.
rm -rf "$DEST/images"
echo "official CATs at $(git -C "$DEST" rev-parse --short HEAD) in $DEST"
