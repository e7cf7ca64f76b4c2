#!/usr/bin/env bash
# The ARM64 check of edgekit's CPU path, without a Raspberry Pi.
#
# It makes an arm64 Debian bookworm root filesystem with debootstrap, runs it
# under qemu-user-static (binfmt_misc), installs the registry's aarch64 wheels of
# onnxruntime and torch plus edgekit with the `cpu` extra, then builds and
# benchmarks the given targets for the shared ResNet-20 on the real CIFAR-10
# test set. Latency under emulation means nothing; top-1 is what it checks.
#
# Usage (as root, on a Debian/Ubuntu x86-64 host):
#   docker/rpi/check-arm64.sh [--rootfs DIR] [--src DIR] [--shared DIR]
#                             [--targets LIST] [--work DIR] [--log FILE]
# Defaults: --rootfs /work/arm64-rootfs  --src (the repository holding this script)
#           --shared SRC/../shared  --targets ort-cpu-int8,ts-fx-int8
#           --work /root/edgekit-work (inside the rootfs)  --log /work/arm64-check.log
# Host packages: debootstrap qemu-user-static binfmt-support (apt-get install ...).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOTFS=/work/arm64-rootfs
SRC="$(cd "$HERE/../.." && pwd)"
SHARED=""
TARGETS=ort-cpu-int8,ts-fx-int8
WORK=/root/edgekit-work
LOG=/work/arm64-check.log
SUITE=bookworm
MIRROR=http://deb.debian.org/debian

# The Python packages installed in the rootfs. CPU_EXTRA is the `cpu` extra of
# pyproject.toml and BUILD_PACKAGES the part of the `build` extra that building
# the targets from the checkpoint needs; tests/test_docker.py checks both lists
# against pyproject.toml so they cannot drift apart.
CPU_EXTRA=("onnxruntime>=1.20")
BUILD_PACKAGES=("torch==2.13.0" "onnx>=1.17" "onnxscript>=0.5" "onnxslim>=0.1.50")

while [[ $# -gt 0 ]]; do
  case "$1" in
    --rootfs) ROOTFS="$2"; shift 2 ;;
    --src) SRC="$2"; shift 2 ;;
    --shared) SHARED="$2"; shift 2 ;;
    --targets) TARGETS="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --log) LOG="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
SHARED="$(realpath "${SHARED:-$SRC/../shared}")"

exec > >(tee "$LOG") 2>&1
stage() { printf '\n==== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { echo "check-arm64: STOPPED: $*" >&2; exit 1; }
SECONDS=0

stage "host checks"
[[ $EUID -eq 0 ]] || die "needs root (debootstrap, chroot, mount)"
for tool in debootstrap qemu-aarch64-static chroot; do
  command -v "$tool" >/dev/null || die "$tool missing: apt-get install debootstrap qemu-user-static binfmt-support"
done
[[ -f "$SHARED/data/cifar10/cifar10-test.npz" ]] || die "no CIFAR-10 at $SHARED/data/cifar10"
[[ -f "$SHARED/models/resnet20-12fca82f.th" ]] || die "no ResNet-20 checkpoint at $SHARED/models"
# arm64 binaries run through binfmt_misc; without it every exec inside the
# chroot (pip's subprocesses, the shell itself) would need qemu by hand.
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (needs a privileged host)"
  update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt qemu-aarch64 is disabled"
echo "binfmt: $(tr '\n' ' ' < /proc/sys/fs/binfmt_misc/qemu-aarch64 | cut -c1-80)"
echo "source: $SRC   shared (read-only): $SHARED   rootfs: $ROOTFS   targets: $TARGETS"

stage "arm64 Debian $SUITE root filesystem"
if [[ ! -x "$ROOTFS/usr/bin/python3" ]]; then
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" || die "debootstrap failed"
else
  echo "reusing $ROOTFS"
fi
# This network inspects TLS: the host's CA bundle lets pip inside the rootfs verify it.
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"

mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounts+=("$2")
  if [[ "${3:-}" == ro ]]; then mount -o remount,bind,ro "$2"; fi
}
mount -t proc proc "$ROOTFS/proc" && mounts+=("$ROOTFS/proc")
# No /sys: with the host's sysfs mounted, torch's aarch64 CPU probe (xbyak_aarch64) looks for
# MIDR_EL1 there, does not find it on an x86 host, and segfaults under qemu-user. Without it,
# cpuinfo only warns.
bind /dev "$ROOTFS/dev"
bind "$SHARED" "$ROOTFS/mnt/shared" ro
# The source is copied (not mounted): pip builds the wheel from it.
rm -rf "$ROOTFS/opt/edgekit-src" && mkdir -p "$ROOTFS/opt/edgekit-src"
tar -C "$SRC" --exclude=.venv --exclude=.git --exclude='__pycache__' --exclude=edgekit-work \
  -cf - pyproject.toml README.md LICENSE edgekit targets | tar -C "$ROOTFS/opt/edgekit-src" -xf -

inroot() {
  chroot "$ROOTFS" /usr/bin/env -i HOME=/root PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "$@"
}
inroot uname -m | grep -qx aarch64 || die "the chroot does not run arm64 binaries"
inroot python3 -c 'import platform, sys; print("python", sys.version.split()[0], platform.machine())'

stage "aarch64 wheels: cpu extra (${CPU_EXTRA[*]}) + ${BUILD_PACKAGES[*]} + edgekit"
t0=$SECONDS
[[ -x "$ROOTFS/opt/venv/bin/python" ]] || inroot python3 -m venv /opt/venv
inroot pip install "/opt/edgekit-src[cpu]" "${CPU_EXTRA[@]}" "${BUILD_PACKAGES[@]}" \
  || die "pip install of the aarch64 wheels failed"
echo "install: $((SECONDS - t0)) s"
inroot pip list 2>/dev/null | grep -Ei '^(edgekit|torch|onnx|onnxruntime|onnxscript|onnxslim|numpy|nvidia-) ' || true
inroot python -c 'import torch; print("torch", torch.__version__, "cuda:", torch.version.cuda, "engines:", torch.backends.quantized.supported_engines)'

stage "edgekit doctor (under qemu-aarch64)"
inroot edgekit doctor || die "edgekit doctor failed"

stage "edgekit run: resnet20 on the real CIFAR-10 test set, targets $TARGETS"
t0=$SECONDS
inroot edgekit run --work-dir "$WORK" \
  --dataset npz:/mnt/shared/data/cifar10 --model resnet20 \
  --weights /mnt/shared/models/resnet20-12fca82f.th \
  --targets "$TARGETS" --threads 1 --quick --exporter torchscript --force \
  || die "edgekit run failed"
echo "run: $((SECONDS - t0)) s"

stage "top-1 on the real CIFAR-10 test set (arm64, emulated)"
inroot python - "$WORK/report.json" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
for r in rep["rows"]:
    top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.2f}%" if r["top1"] <= 1 else f"{r['top1']:.2f}%"
    print(f"{r['target']:<16} {r['status']:<12} top-1 {top1:>8}  {r.get('reason') or ''}")
PY
echo "total: $SECONDS s"
