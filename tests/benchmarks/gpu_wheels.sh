#!/usr/bin/env bash
# Download the wheels the bare GPU machine lacks into .whl/ (issue #15, docs/performance.md).
#
# That machine (kind nvidia-h200) has python3 3.12 with torch, numpy, scipy, h5py, e3nn, typer,
# rich, matplotlib, scikit-learn, pyyaml, psutil, requests, filelock, sortedcontainers, pandas,
# torchmetrics, tqdm, sympy, opt-einsum(-fx) ... (the device README's list), and no network.
# Everything else ubmd's GPU check imports travels as wheels: .whl/ is ignored by git
# (.git/info/exclude) and named in the device call's `carry`. Run here, in the repo root:
#
#     bash tests/benchmarks/gpu_wheels.sh                  # cp312 wheels into .whl/
#     PYVER=3.11 DEST=/tmp/whl311 bash tests/benchmarks/gpu_wheels.sh   # the same set for the
#                                                          # CPU rehearsal on this machine's 3.11
#
# Versions are the ones tested on this machine. --no-deps: each runtime dependency is named
# here; the check at the end lists every Requires-Dist (without extras) of the downloaded
# wheels that is neither downloaded nor on the device image (tests/benchmarks/gpu_image.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYVER=${PYVER:-3.12}
DEST=${DEST:-.whl}
PY=${PY:-python3}

# name==version  # why
PKGS=(
  ase==3.29.0                  # ubmd core (Atoms, io, units, calculators)
  pydantic==2.13.4             # campaign config, labeler settings, selection settings
  pydantic-core==2.46.4        # pinned by pydantic 2.13.4 (checked below)
  annotated-types==0.7.0       # pydantic
  typing-inspection==0.4.2     # pydantic
  typing-extensions==4.15.0    # pydantic >= 2.13 and typeguard want >= 4.14 (image's is unknown)
  vesin==0.6.2                 # neighbour lists (ubmd.models.graph)
  parsl==2026.10.26            # the campaign (HighThroughputExecutor, LocalProvider)
  dill==0.4.1                  # parsl
  tblib==3.2.2                 # parsl
  typeguard==4.6.1             # parsl
  setproctitle==1.3.8          # parsl (worker pool, interchange)
  pyzmq==27.3.0                # parsl (interchange <-> workers)
  mace-torch==0.3.16           # the MACE backend (ubmd.models.mace_backend)
  torch-ema==0.3               # imported by mace.modules
  e3nn==0.4.4                  # mace-torch 0.3.16 pins it; the image's e3nn may be newer
  tblite==0.8.0                # the xtb labeler (GFN2-xTB in process)
  cffi==2.0.0                  # tblite
  pycparser==3.0               # cffi
)
# mace-torch's other Requires-Dist are not imported by mace.modules (what ubmd uses):
# configargparse, GitPython, lmdb, matscipy, orjson, prettytable, python-hostlist; the check
# below lists them as "not carried" on purpose.
NOT_NEEDED="configargparse gitpython lmdb matscipy orjson prettytable python-hostlist"

mkdir -p "$DEST"
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done
log=$(mktemp)
if ! nice -n 19 "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLAT[@]}" -d "$DEST" "${PKGS[@]}" 2>"$log"; then
  cat "$log" >&2; exit 1
fi
grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
rm -f "$log"

# the exclude line (the device README's recipe), once
if [ "$DEST" = .whl ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
  mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude
fi

"$PY" - "$DEST" "$PYVER" "$NOT_NEEDED" "${PKGS[@]}" <<'EOF'
import re, sys, zipfile
from pathlib import Path

from packaging.requirements import Requirement

dest, pyver, not_needed, pkgs = Path(sys.argv[1]), sys.argv[2], set(sys.argv[3].split()), sys.argv[4:]
# the device: CPython on x86-64 Linux; no extras asked for
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
wanted = {norm(p.split("==")[0]): p.split("==")[1] for p in pkgs}
image = {norm(l.split()[0]) for l in Path("tests/benchmarks/gpu_image.txt").read_text().splitlines()
         if l.strip() and not l.startswith("#")}
have, bad = {}, []
for whl in sorted(dest.glob("*.whl")):
    name, ver = whl.name.split("-")[:2]
    have.setdefault(norm(name), []).append((ver, whl))
for n, v in wanted.items():
    vers = [ver for ver, _ in have.get(n, [])]
    if vers != [v]:
        bad.append(f"{n}: want {v}, have {vers or 'nothing'}")
for n in set(have) - set(wanted):
    bad.append(f"{n}: in {dest} but not listed (two versions stop the install: remove it)")
missing = set()
for n, entries in have.items():
    for _, whl in entries:
        with zipfile.ZipFile(whl) as z:
            meta = z.read(next(f for f in z.namelist() if f.endswith(".dist-info/METADATA")))
        for line in meta.decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or a back-port for other Pythons
            dep = norm(req.name)
            if dep in wanted and wanted[dep] not in req.specifier:
                bad.append(f"{n} wants {dep}{req.specifier}, carried {wanted[dep]}")
            if dep not in wanted and dep not in image:
                missing.add((dep, n))
carried = sorted(d for d, _ in missing if d in not_needed)
unknown = sorted(f"{d} (for {n})" for d, n in missing if d not in not_needed)
total = sum(w.stat().st_size for w in dest.glob("*.whl"))
print(f"{len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {dest}")
if carried:
    print("not carried on purpose (not imported by what ubmd uses):", ", ".join(sorted(set(carried))))
if unknown:
    print("WARNING: needed by a wheel, neither carried nor on the device image:", ", ".join(unknown))
for b in bad:
    print("ERROR:", b)
sys.exit(1 if bad else 0)
EOF
