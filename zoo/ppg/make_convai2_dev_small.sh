#!/usr/bin/env bash
# Builds zoo:ppg/convai2_dev_small: the projects/ppg recipe on the 800 ConvAI2 dev episodes
# (700 train), then exports the response generator after RL as `model` (it generates partner
# personas with `ppg`), the persona generator after RL as `ppg` and the critic as `critic`.
# Usage (from the repository root, venv active):
#   OUT=runs/ppg bash zoo/ppg/make_convai2_dev_small.sh
set -euo pipefail
OUT=${OUT:-runs/ppg}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$OUT/rl" ] || bash projects/ppg/convai2_dev800.sh "$OUT"
# rl.drg: the RL run's response generator alone (-m ppg_response_generator), rl.ppg its PPG
python -m parlai_ext.zoo.common "$OUT/rl.drg" "$HERE/convai2_dev_small" model \
  --set ppg_model_file=zoo:ppg/convai2_dev_small/ppg partner_personas=generated
python -m parlai_ext.zoo.common "$OUT/rl.ppg" "$HERE/convai2_dev_small" ppg
python -m parlai_ext.zoo.common "$OUT/critic" "$HERE/convai2_dev_small" critic
