#!/bin/bash
# Wall-clock time of the README's commands, with the load average before and after each.
# Usage: bash benchmarks/readme_durations.sh [OUTDIR]   (from the repository root; needs ../shared)
# Writes OUTDIR/times.txt (one line per command) and each command's stdout/stderr.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
E=$ROOT/.venv/bin/edgekit
S=$(cd "$ROOT/../shared" 2>/dev/null && pwd || echo /work/shared)
OUT=${1:-/tmp/edgekit-readme-durations}
mkdir -p "$OUT" && cd "$OUT" || exit 2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
rm -rf w0 w r20 times.txt
m() {
  local name=$1; shift
  local la0; la0=$(cut -d' ' -f1-3 /proc/loadavg)
  local t0; t0=$(date +%s.%N)
  "$@" >"$name.out" 2>"$name.err"
  local rc=$?
  local t1; t1=$(date +%s.%N)
  echo "$name rc=$rc seconds=$(echo "$t1 - $t0" | bc) load_start=[$la0] load_end=[$(cut -d' ' -f1-3 /proc/loadavg)]" >>times.txt
}
m run-noargs "$E" run -w w0
m export-r20 "$E" export --dataset "npz:$S/data/cifar10" --model resnet20 --weights "$S/models/resnet20-12fca82f.th" -w w
m build-2 "$E" build -t pytorch-fp32,ort-cpu -w w
m bench-2 "$E" bench -t ort-cpu --threads 1 -w w
m run-r20 "$E" run --dataset "npz:$S/data/cifar10" --model resnet20 --weights "$S/models/resnet20-12fca82f.th" -w r20
cat times.txt
