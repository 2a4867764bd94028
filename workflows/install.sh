#!/usr/bin/env bash
# Install ubmd and what it needs into the current Python environment (a fresh venv is best).
#   bash workflows/install.sh            # the package with xTB/MACE/OpenMM extras (laptop campaigns)
#   bash workflows/install.sh --dev      # + test tools
#   bash workflows/install.sh --system   # + Debian packages the tests use: CP2K, xtb, SLURM, Torque wrappers
# torch is installed first and pinned: a plain `pip install torch` would pull a multi-GB CUDA build.
# On a GPU cluster install the torch build that matches your CUDA first, then run this script.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev=0; system=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --system) system=1 ;;
    *) echo "install.sh: unknown option '$arg' (accepted: --dev, --system)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}

if [ "$system" = 1 ]; then
  pkgs="cp2k xtb slurm-wlm munge slurm-wlm-torque"
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
  fi
fi

if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${UBMD_TORCH_VERSION:-2.13.0}"
fi
extras="all"; [ "$dev" = 1 ] && extras="all,dev"
"$PY" -m pip install -q -e "$here[$extras]"
