#!/usr/bin/env bash
# Builds zoo:p2bot/convai2_dev_small: the projects/p2bot recipe on the 800 ConvAI2 dev episodes
# (700 train), then exports the self-play P2Bot transmitter as `model` and the receiver as
# `receiver` (float16 weights, no optimizer state, no local paths).
# Usage (from the repository root, venv active):
#   OUT=runs/p2bot bash zoo/p2bot/make_convai2_dev_small.sh
set -euo pipefail
OUT=${OUT:-runs/p2bot}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$OUT/sp" ] || bash projects/p2bot/convai2_dev800.sh "$OUT"
python -m parlai_ext.zoo.common "$OUT/sp" "$HERE/convai2_dev_small" model \
  --set skip_generation=false inference=beam beam_size=2
python -m parlai_ext.zoo.common "$OUT/rx" "$HERE/convai2_dev_small" receiver
