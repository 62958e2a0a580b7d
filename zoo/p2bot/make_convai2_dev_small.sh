#!/usr/bin/env bash
# Builds zoo:p2bot/convai2_dev_small: the projects/p2bot recipe on the 800 ConvAI2 dev episodes
# (700 train), then exports the self-play P2Bot transmitter as `model` and the receiver as
# `receiver` (float16 weights, no optimizer state, no local paths).
# Usage (from the repository root, venv active):
#   OUT=runs/p2bot bash zoo/p2bot/make_convai2_dev_small.sh
set -euo pipefail
OUT=${OUT:-runs/p2bot}
HERE=$(cd "$(dirname "$0")" && pwd)
# SP / RX: which self-play transmitter and receiver of the run to ship (the shipped entry:
# SP=sp_rx2 RX=rx_lr1e4, see the model card)
SP=${SP:-sp} RX=${RX:-rx}
[ -f "$OUT/$SP" ] || bash projects/p2bot/convai2_dev800.sh "$OUT"
python -m parlai_ext.zoo.common "$OUT/$SP" "$HERE/convai2_dev_small" model \
  --set skip_generation=false inference=beam beam_size=2
python -m parlai_ext.zoo.common "$OUT/$RX" "$HERE/convai2_dev_small" receiver
