#!/usr/bin/env bash
# GPU check (issue #15; docs/performance.md). On the bare device machine, from the repo root,
# with the wheels of tests/benchmarks/gpu_wheels.sh carried in .whl/:
#
#     bash tests/benchmarks/gpu_check.sh            # GPU sizes, about 8 minutes, table in $OUT
#     bash tests/benchmarks/gpu_check.sh --cpu      # the CPU rehearsal (small sizes)
#
# Installs the wheels into $GPU_CHECK_SITE (default /tmp/site; no build, no network), puts it
# and the repo on PYTHONPATH (ubmd itself is not installed), and runs gpu_check.py, which
# writes gpu_check.md (the table), gpu_check.log, rows.jsonl and quickstart.log to $OUT.
# Overrides for the rehearsal elsewhere: PY (interpreter), GPU_CHECK_WHL (wheel folder).
# Further arguments go to gpu_check.py (--only ITEM..., --budget SECONDS).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WHL=${GPU_CHECK_WHL:-.whl}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export GPU_CHECK_SITE=$SITE OUT PYTHONUNBUFFERED=1
# library chatter (e3nn, TorchScript, ASE deprecations) would push the table out of the
# console's tail; RuntimeWarnings (a compile that fell back to eager) stay visible
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning}

echo "== interpreter: $(command -v "$PY")"
"$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' \
  || { echo "no torch in $PY"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -m pip list 2>/dev/null > "$OUT/pip_list.txt" || true

shopt -s nullglob
wheels=("$WHL"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "no wheels in $WHL: run tests/benchmarks/gpu_wheels.sh here and carry .whl"; exit 1
fi
t0=$SECONDS
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "${wheels[@]}" || { echo "installing the wheels failed"; exit 1; }
echo "== ${#wheels[@]} wheels into $SITE in $((SECONDS - t0)) s"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# tblite's library wants the system's libgomp.so.1; where the loader has none, lend it torch's
if ! "$PY" -c 'import tblite.interface' 2>/dev/null; then
  gomp=$("$PY" -c 'import glob, os, torch; print(next(iter(sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*")))), ""))')
  if [ -n "$gomp" ]; then
    mkdir -p /tmp/gpu_check_lib && ln -sf "$gomp" /tmp/gpu_check_lib/libgomp.so.1
    export LD_LIBRARY_PATH="/tmp/gpu_check_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  "$PY" -c 'import tblite.interface' 2>&1 | tail -1 | sed 's/^/tblite: /'
fi

exec "$PY" tests/benchmarks/gpu_check.py --out "$OUT" "$@"
