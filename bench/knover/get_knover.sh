#!/bin/sh
# Check out the authors' PLATO-2 code (PaddlePaddle/Knover, plato-2 branch tip 4bad22c: the code
# of the released 24L/32L models) into DIR, for bench/knover/knover_reference.py. Not vendored.
# Usage: bench/knover/get_knover.sh DIR
set -eu
dir=${1:?usage: $0 DIR}
git clone --quiet https://github.com/PaddlePaddle/Knover.git "$dir"
git -C "$dir" checkout --quiet 4bad22c
echo "Knover 4bad22c in $dir"
