#!/usr/bin/env bash
# The ARM64 check through the device workflow, without a Raspberry Pi.
#
# As the README's device workflow does: the artifacts are built on this x86-64 host
# (ort-cpu, ort-cpu-int8) with the repository's own environment; only the runtime
# install (the edgekit-toolchain wheel with its `runtime` extra: numpy, onnxruntime,
# pillow, typer, rich; no torch) runs on arm64, here under qemu-user:
#   - an arm64 CPython 3.11 from Debian bookworm's arm64 packages, unpacked (no
#     debootstrap, no maintainer scripts under emulation), run by qemu-aarch64-static -L;
#   - the wheel's aarch64 dependencies downloaded and installed for that platform by the
#     host's pip (--platform manylinux_2_28_aarch64), nothing built under emulation;
#   - `edgekit bench` on the real CIFAR-10 test set, in a private mount namespace whose
#     /sys is an empty tmpfs (with the host's /sys, ONNX Runtime's cpuinfo reads x86
#     topology and segfaults under qemu-user), with --in-process (the harness's
#     per-artifact subprocess would exec an aarch64 python3.11, which needs binfmt_misc).
# It prints top-1 per target on arm64 next to the same wheel on x86-64. Latency under
# emulation means nothing; top-1 is what it checks.
#
# Usage (as root, on a Debian/Ubuntu x86-64 host, from the repository):
#   docker/rpi/check-arm64-device.sh [--work DIR] [--shared DIR] [--targets LIST]
# Defaults: --work /tmp/edgekit-arm64  --shared REPO/../shared  --targets ort-cpu,ort-cpu-int8
# Host packages: qemu-user-static (apt-get install), and `dpkg --add-architecture arm64`
# with an apt update, for apt-get download of the arm64 packages.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK=/tmp/edgekit-arm64
SHARED=""
TARGETS=ort-cpu,ort-cpu-int8
# Debian bookworm's arm64 CPython 3.11 and the libraries it and the wheels load.
DEBS=(libc6 libgcc-s1 libstdc++6 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libcrypt1 libsqlite3-0 libtinfo6
  libncursesw6 libreadline8 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
  libkrb5support0 libcom-err2 libkeyutils1)
PLATFORM=(--only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64
  --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp --abi cp311)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --work) WORK="$2"; shift 2 ;;
    --shared) SHARED="$2"; shift 2 ;;
    --targets) TARGETS="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
SHARED="$(realpath "${SHARED:-$REPO/../shared}")"
DATA="$SHARED/data/cifar10"
WEIGHTS="$SHARED/models/resnet20-12fca82f.th"
die() { echo "check-arm64-device: STOPPED: $*" >&2; exit 1; }
stage() { printf '\n==== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

stage "host checks"
[[ $EUID -eq 0 ]] || die "needs root (unshare -m, mount)"
command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static missing: apt-get install qemu-user-static"
[[ -f "$DATA/cifar10-test.npz" && -f "$WEIGHTS" ]] || die "no CIFAR-10 or ResNet-20 under $SHARED"
[[ -x "$REPO/.venv/bin/edgekit" ]] || die "no $REPO/.venv: uv sync --locked --extra cpu --extra build"
mkdir -p "$WORK"

stage "build on the host: the shared ResNet-20, then ${TARGETS}"
EK="$REPO/.venv/bin/edgekit"
[[ -f "$WORK/ws/model.onnx" ]] || "$EK" export --dataset "npz:$DATA" --model resnet20 \
  --weights "$WEIGHTS" --work-dir "$WORK/ws"
IFS=, read -r -a TLIST <<< "$TARGETS"
for t in "${TLIST[@]}"; do "$EK" build --target "$t" --work-dir "$WORK/ws" --force; done
(cd "$REPO" && uv build --wheel -o "$WORK/dist")
WHEEL="$(ls "$WORK"/dist/edgekit_toolchain-*-py3-none-any.whl | tail -1)"

stage "arm64 CPython from Debian's arm64 packages"
if [[ ! -x "$WORK/root/usr/bin/python3.11" ]]; then
  mkdir -p "$WORK/debs" "$WORK/root"
  (cd "$WORK/debs" && apt-get download "${DEBS[@]/%/:arm64}") \
    || die "apt-get download failed: dpkg --add-architecture arm64 && apt-get update"
  for f in "$WORK"/debs/*.deb; do dpkg-deb -x "$f" "$WORK/root"; done
fi
qemu-aarch64-static -L "$WORK/root" "$WORK/root/usr/bin/python3.11" -c \
  "import platform; assert platform.machine() == 'aarch64', platform.machine()"

stage "the runtime install for aarch64: $(basename "$WHEEL")[runtime]"
rm -rf "$WORK/wheels" "$WORK/site"
pip download --isolated "${PLATFORM[@]}" -d "$WORK/wheels" "$WHEEL[runtime]"
pip install --isolated --no-index --find-links "$WORK/wheels" "${PLATFORM[@]}" \
  --target "$WORK/site" "edgekit-toolchain[runtime]"
python3 -m venv "$WORK/x86" && "$WORK/x86/bin/pip" install -q "$WHEEL[runtime]"

bench() {  # bench ARCH TARGET: writes $WORK/ARCH-TARGET.json
  local out="$WORK/$1-$2.json" args=(bench --artifact "$WORK/ws/artifacts/$2" --dataset "npz:$DATA"
    --threads 1 --quick --batch-sizes 1 --in-process --force -o)
  if [[ $1 == x86 ]]; then
    "$WORK/x86/bin/edgekit" "${args[@]}" "$out"
  else
    unshare -m --propagation private sh -c "mount -t tmpfs tmpfs /sys \
      && mkdir -p /sys/devices/system/cpu && echo 0 > /sys/devices/system/cpu/possible \
      && echo 0 > /sys/devices/system/cpu/present \
      && PYTHONPATH='$WORK/site' qemu-aarch64-static -L '$WORK/root' '$WORK/root/usr/bin/python3.11' \
         -m edgekit ${args[*]} '$out'"
  fi
}
for t in "${TLIST[@]}"; do
  stage "$t: x86-64, then arm64 under emulation"
  bench x86 "$t"
  SECONDS=0
  bench arm64 "$t"
  echo "arm64 bench of $t: ${SECONDS} s under emulation"
done

stage "top-1 per target (real CIFAR-10 test set)"
python3 - "$WORK" "${TLIST[@]}" <<'PY'
import json, sys
work, targets = sys.argv[1], sys.argv[2:]
print(f"{'target':14} {'x86-64':>8} {'arm64':>8} {'diff':>6}")
for t in targets:
    top = [json.load(open(f"{work}/{a}-{t}.json"))["rows"][0]["top1"] for a in ("x86", "arm64")]
    print(f"{t:14} {top[0]:8.2f} {top[1]:8.2f} {top[1] - top[0]:+6.2f}")
PY
