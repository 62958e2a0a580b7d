#!/usr/bin/env bash
# The speed grid on a GPU, in one prepared command that fits 8 minutes (the day a GPU is lent;
# run it with run(timeout_s=540)):
#   bash bench/gpu.sh OUT_FOLDER
# fp32 and bf16 tables (autocast), the matmul peak of each precision measured on the card in
# the same rounds (4096^2 and 8192^2; TF32 off, torch's default), the card's name in every
# table (harness.machine_info), the CUDA allocator's peak memory in the growth table.
# Needs a Python with CUDA torch, ParlAI and this package importable ($PYTHON, default
# .venv/bin/python, else python3). Data: ../shared/data/dailydialog if there, else ParlAI's
# synthetic ext_demo task (the tables say which). Each part has its own time limit, so one
# slow part cannot eat the others' time; a part that runs out still leaves its log.
# Not included: bench/hf_speed.py (its loops run on the CPU), the HRED family (RNNs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/gpu.sh OUT_FOLDER}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PARLAI_DATAPATH="${PARLAI_DATAPATH:-$PWD/data}"
DATA=../shared/data/dailydialog
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } > "$OUT/card.txt" 2>&1
"$PY" -c 'import torch, sys; ok = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if ok else None); sys.exit(0 if ok else 3)' >> "$OUT/card.txt" 2>&1 \
  || { echo "no CUDA device visible to $PY: see $OUT/card.txt"; exit 3; }
cat "$OUT/card.txt"
run() {  # run NAME SECONDS COMMAND...: one part under its own time limit, log beside
  local name=$1 limit=$2; shift 2
  echo "[gpu] $name (limit ${limit}s): $*"
  timeout "$limit" "$PY" "$@" > "$OUT/$name.log" 2>&1; echo "[gpu] $name exit $?"
}
# training fp32 + bf16 at the benchmark dims and at hidden 1024 (where a GPU is busy), generation.
# Limits (s): 150 + 100 + 90 + 80 + 50 = 470 (7.8 min); worker start-up (CUDA init, the
# dictionary) is most of each part at these sizes, so rounds are few and chunks long.
run generators 150 bench/bench_generators.py --data "$DATA" --rounds 3 --steps 5 \
  --models 'unified_transformer (2' --no-growth --out "$OUT/generators"
run realistic 100 bench/bench_generators.py --data "$DATA" --rounds 3 --steps 5 --dim 1024 \
  --batch 64 --models 'unified_transformer (2' --no-generation --no-growth --out "$OUT/realistic"
run plato2_fp32 90 bench/plato2_speed.py --data "$DATA" --quick --rounds 3 --steps 5 \
  --gen-batches 2 --precision fp32 --out "$OUT/plato2_fp32"
run plato2_bf16 80 bench/plato2_speed.py --data "$DATA" --quick --rounds 3 --steps 5 \
  --gen-batches 2 --precision bf16 --out "$OUT/plato2_bf16"
run growth 50 bench/growth.py --families unified,plato2,p2bot_transmitter,coral_generator \
  --contexts 128,512,1024 --batches 16,64 --batch 32 --steps 3 --max-gib 60 --out "$OUT/growth"
cat "$OUT"/*.md > "$OUT/gpu.md" 2>/dev/null
echo "[gpu] tables: $OUT/gpu.md"
