"""GPU check (issue #15): explorer, ASE, NPT, training and selection throughput, and a shrunk
quickstart campaign on the GPU, in one timed run that writes a markdown table.

Run it through ``tests/benchmarks/gpu_check.sh`` (installs the carried wheels, sets
PYTHONPATH); docs/performance.md gives the device command and explains the figures.

    python tests/benchmarks/gpu_check.py --out DIR [--cpu] [--budget 450] [--cap-scale 1] [--only ITEM ...]

Every item runs in its own subprocess with a time cap (the caps fit a total budget; an item
that finds too little time left is skipped): a failing, hanging or CUDA-poisoned item costs only
itself, its error goes into the table and the next item runs. Items append their rows to a JSON
lines file as they go, so an item stopped at its cap still reports what it measured.
``--cpu`` is the rehearsal: the same items on the CPU with small sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # the other benchmark scripts, imported by name

ALA2_START = ROOT / "data" / "ala2" / "alanine-dipeptide.extxyz"
ALA2_LABELLED = ROOT / "data" / "ala2" / "ala2_xtb_300K.extxyz"
MIL53 = [ROOT / "data" / "mil53" / f"mil53al_{p}_76atoms.extxyz" for p in ("cp", "lp")]
MIL53_TEST = ROOT / "data" / "mil53" / "mil53_gfn1_test.extxyz"
SPECIES = [1, 6, 7, 8]

# Sizes: (GPU, --cpu rehearsal)
SIZES = {
    # largest first on the GPU: if the cap stops an item, the likely best counts are measured
    "replicas": ([1024, 4096, 256, 32], [8, 32]),
    "explore_steps": ((20, 2), (5, 2)),  # timed steps per round, rounds
    "explorer_run": ((1024, 60), (16, 20)),  # run_explorer: replicas, n_steps
    "ase_steps": (200, 20),
    "mil53_replicas": (64, 8),
    "train_structures": (512, 64),
    "train_batches": ([8, 32], [8]),
    "train_epochs": (3, 3),  # the first is warm-up: 2 timed
    "select": ((100_000, 512), (5_000, 64)),  # candidates, features
}

# name, cap in seconds (GPU, CPU), what it measures. Order = priority: the budget runs out at
# the end of the list first.
ITEMS = [
    ("env", (25, 60), "versions, device, where each carried package comes from"),
    ("explore_eager", (55, 120), "biased ala2 explorer, eager"),
    ("ase", (20, 60), "ASE Langevin + UBMDCalculator, one replica"),
    ("mil53", (35, 90), "MIL-53(Al) NPT + stress bias, 64 replicas, eager"),
    ("select", (35, 60), "max_det and lcmd on random features"),
    ("train_builtin", (30, 90), "training throughput, built-in PaiNN"),
    ("train_mace", (40, 120), "training throughput, MACE backend"),
    ("explore_compiled", (90, 240), "biased ala2 explorer, torch.compile"),
    ("quickstart", (80, 300), "shrunk quickstart campaign, device auto, local site"),
    ("mil53_compiled", (60, 360), "MIL-53(Al) NPT + stress bias, 64 replicas, compiled"),
]


# --------------------------------------------------------------------------- item helpers
class Ctx:
    """What an item needs: the device, sizes, and where its rows go."""

    def __init__(self, cpu: bool, results: Path, item: str) -> None:
        import torch

        self.cpu = cpu
        self.dev = torch.device("cpu" if cpu else "cuda")
        self.results = results
        self.item = item
        if not cpu and not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device (use --cpu for the CPU rehearsal)")

    def size(self, key: str):
        return SIZES[key][1 if self.cpu else 0]

    def sync(self) -> None:
        if self.dev.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def emit(self, case: str, value, unit: str = "", target: str = "", note: str = "") -> None:
        row = {"item": self.item, "case": case, "value": value, "unit": unit,
               "target": target, "note": note}  # fmt: skip
        with open(self.results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"  {case}: {value} {unit} {note}", flush=True)


def _ala2_model(ctx: Ctx, compiled: bool):
    """Untrained float32 PaiNN on the device with a last-layer posterior fitted on 64 labelled
    ala2 frames, as the explorer's MD model (weights do not change the cost)."""
    import torch
    from ase.io import read

    from ubmd.md.adapter import UBMDModel
    from ubmd.models import build_model
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty

    torch.manual_seed(0)
    model = build_model("painn", SPECIES, dtype="float32", device=ctx.dev)
    est = fit_uncertainty(model, read(ALA2_LABELLED, ":64"), UncertaintyConfig(method="posterior"))
    return model, est, UBMDModel(model, est, compile=compiled)


def _explore(ctx: Ctx, compiled: bool) -> None:
    from ase.io import read
    from explore_bench import batched_runner, min_times

    from ubmd.md.bias import BiasConfig

    mode = "compiled" if compiled else "eager"
    start = read(ALA2_START)
    n_at = len(start)
    t0 = time.perf_counter()
    _, _, md = _ala2_model(ctx, compiled)
    print(f"  model + posterior fit: {time.perf_counter() - t0:.1f} s", flush=True)
    bias = BiasConfig(window=2, norm_every=10, species_weights={1: 0.0})  # w_H = 0
    steps, rounds = ctx.size("explore_steps")
    for R in ctx.size("replicas"):
        t0 = time.perf_counter()
        run = batched_runner(md, [start], R, bias)  # 3 warm-up steps (and compiling) inside
        ctx.sync()
        setup = time.perf_counter() - t0
        t = min_times({"x": run}, steps, rounds, sync=ctx.sync)["x"]
        ctx.emit(f"ala2 biased (w_H=0), {R} replicas, {mode}", round(R * n_at / t),
                 "atom-steps/s", ">= 1e7 at the best R" if not ctx.cpu else "",
                 f"{t * 1e3:.2f} ms/step; set-up + 3 warm-up steps {setup:.1f} s"
                 + ("" if not compiled else f"; compiled={md.compiled}"))  # fmt: skip
        del run


def item_explore_eager(ctx: Ctx) -> None:
    _explore(ctx, compiled=False)
    # the whole explorer as a campaign runs it: stop rules, candidate frames, refills
    from ase.io import read

    from ubmd.md.explore import ExploreConfig, run_explorer

    R, n_steps = ctx.size("explorer_run")
    _, _, md = _ala2_model(ctx, compiled=False)
    config = ExploreConfig(n_steps=n_steps, record_every=20, species_weights={1: 0.0},
                           device=str(ctx.dev), dtype="float32")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        s = run_explorer(config, md, [read(ALA2_START)], out_path=Path(tmp) / "c.h5", replicas=R)
    rate = s.get("steady_atom_steps_per_s") or s.get("atom_steps_per_s")
    stops: dict[str, int] = {}
    for rep in s.get("replicas", {}).values():
        key = rep.get("stop_reason") or "ran to the end"
        stops[key] = stops.get(key, 0) + 1
    ctx.emit(f"run_explorer (stop rules, frames, refills), {R} replicas, eager",
             round(rate) if rate else None, "atom-steps/s", "",
             f"{n_steps} steps, warm-up {s.get('warmup_s', float('nan')):.1f} s, "
             f"{s.get('n_frames')} frames; replicas: {stops}")  # fmt: skip


def item_explore_compiled(ctx: Ctx) -> None:
    _explore(ctx, compiled=True)


def item_ase(ctx: Ctx) -> None:
    from ase.io import read
    from explore_bench import ase_rate

    from ubmd.calculator import UBMDCalculator

    model, _, _ = _ala2_model(ctx, compiled=False)
    calc = UBMDCalculator(model, device=ctx.dev)  # the calculator as shipped: eager, no estimator
    steps = ctx.size("ase_steps")
    rate = max(ase_rate(calc, [read(ALA2_START)], 1, steps) for _ in range(2))
    ctx.emit(
        "ASE Langevin + UBMDCalculator, 1 replica, eager",
        round(rate),
        "atom-steps/s",
        "",
        f"{22 / rate * 1e3:.2f} ms/step, unbiased, no estimator; best of 2 x {steps} steps",
    )


def _mil53(ctx: Ctx, compiled: bool) -> None:
    import torch
    from ase.io import read
    from explore_bench import batched_runner, min_times

    from ubmd.md.adapter import UBMDModel
    from ubmd.md.bias import BiasConfig
    from ubmd.md.integrators import BarostatConfig
    from ubmd.models import build_model
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty

    starts = [read(p, index=-1) for p in MIL53]
    species = sorted({int(z) for a in starts for z in a.numbers})
    torch.manual_seed(0)
    model = build_model("painn", species, dtype="float32", device=ctx.dev)
    est = fit_uncertainty(model, read(MIL53_TEST, ":"), UncertaintyConfig(method="posterior"))
    # as workflows/mil53_npt/campaign.yaml: force and stress bias, anisotropic barostat
    bias = BiasConfig(tau_rel=0.25, tau_stress_rel=0.05, window=2, norm_every=10)
    npt = {"pressure_eV_A3": 0.0,
           "barostat": BarostatConfig(mode="anisotropic", time_fs=100.0,
                                      compressibility_per_GPa=0.05)}  # fmt: skip
    R = ctx.size("mil53_replicas")
    steps, rounds = ctx.size("explore_steps")
    md = UBMDModel(model, est, compile=compiled)
    t0 = time.perf_counter()
    run = batched_runner(md, starts, R, bias, npt=npt)  # 3 warm-up steps (and compiling) inside
    ctx.sync()
    setup = time.perf_counter() - t0
    t = min_times({"x": run}, steps, rounds, sync=ctx.sync)["x"]
    n_at = R * len(starts[0])
    ctx.emit(f"MIL-53(Al) NPT + stress bias, {R} replicas, "
             f"{'compiled' if compiled else 'eager'}", round(n_at / t), "atom-steps/s",
             ">= 1e6" if not ctx.cpu else "",
             f"{t * 1e3:.2f} ms/step; set-up + 3 warm-up steps {setup:.1f} s; "
             f"{md.neighbours.n_searches} replica neighbour searches in "
             f"{3 + 1 + steps * rounds} force calls")  # fmt: skip


def item_mil53(ctx: Ctx) -> None:
    _mil53(ctx, compiled=False)


def item_mil53_compiled(ctx: Ctx) -> None:
    _mil53(ctx, compiled=True)


def item_select(ctx: Ctx) -> None:
    import numpy as np
    from select_bench import features

    from ubmd.select import select_batch

    n, k = ctx.size("select")
    t0 = time.perf_counter()
    pool, train = features(n, 512, k)
    print(f"  features {pool.shape} made in {time.perf_counter() - t0:.1f} s", flush=True)
    for method in ("max_det", "lcmd"):
        # warm-up: the device's linear-algebra libraries load at their first call
        select_batch(pool[:1000], 8, method=method, train_features=train, device=ctx.dev)
        ctx.sync()
        t0 = time.perf_counter()
        res = select_batch(pool, 64, method=method, train_features=train, device=ctx.dev)
        ctx.sync()
        dt = time.perf_counter() - t0
        assert len(set(np.asarray(res.indices).tolist())) == 64
        ctx.emit(f"select_batch {method}, {n} x {k} features, batch 64, 512 training",
                 round(dt, 3), "s", "< 2 s at 100 000" if not ctx.cpu else "",
                 f"device={ctx.dev.type} (select_batch(device=...)); float32 input from the host "
                 "(copy included), float64 compute")  # fmt: skip


def _training_arrays(n: int):
    """``n`` labelled ala2 structures: the 300 xTB frames repeated, repeats rattled by 0.01 Å
    (labels kept: timing only)."""
    import numpy as np

    from ubmd import keys
    from ubmd.models.data import labelled_arrays, select

    base = labelled_arrays(str(ALA2_LABELLED))
    n_base = len(base[keys.N_ATOMS])
    arrays = select(base, np.arange(n) % n_base)
    rng = np.random.default_rng(0)
    repeat = np.repeat(np.arange(n) >= n_base, arrays[keys.N_ATOMS])
    noise = rng.normal(0.0, 0.01, arrays[keys.POSITIONS].shape)
    arrays[keys.POSITIONS] = arrays[keys.POSITIONS] + noise * repeat[:, None]
    return arrays


def _train(ctx: Ctx, kind: str) -> None:
    from ubmd.models.train import TrainConfig, train_model

    n = ctx.size("train_structures")
    arrays = _training_arrays(n)
    epochs = ctx.size("train_epochs")
    for batch in ctx.size("train_batches"):
        stamps: list[float] = []
        config = TrainConfig(model=kind, max_epochs=epochs, patience=epochs + 1,
                             batch_size=batch, device=str(ctx.dev), dtype="float32",
                             valid_fraction=0.1)  # fmt: skip
        t0 = time.perf_counter()
        train_model(config, arrays, log=lambda rec, s=stamps: s.append(time.perf_counter()))
        per_epoch = min(b - a for a, b in itertools.pairwise(stamps))
        n_train = n - round(0.1 * n)
        ctx.emit(f"train {kind}, {n} ala2 structures, batch {batch}", round(n_train / per_epoch, 1),
                 "structures/s", "",
                 f"{per_epoch:.2f} s/epoch ({n_train} trained + {n - n_train} validated, float32); "
                 f"first epoch + set-up {stamps[0] - t0:.1f} s")  # fmt: skip


def item_train_builtin(ctx: Ctx) -> None:
    _train(ctx, "painn")


def item_train_mace(ctx: Ctx) -> None:
    _train(ctx, "mace")


PROBE = """\
# written by tests/benchmarks/gpu_check.py: every Python process started with this folder on
# PYTHONPATH records, twice a second once it has imported torch, whether it initialised CUDA
# and its peak GPU memory
import json, os, sys, threading, time


def _probe(folder):
    while True:
        time.sleep(0.5)
        torch = sys.modules.get("torch")
        try:
            if torch is not None and hasattr(torch, "cuda"):
                cuda = torch.cuda.is_initialized()
                rec = {"pid": os.getpid(), "argv": " ".join(sys.argv)[-120:], "cuda": cuda,
                       "max_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0}
                with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as fh:
                    json.dump(rec, fh)
        except Exception:
            pass


if os.environ.get("UBMD_GPU_PROBE"):
    threading.Thread(target=_probe, args=(os.environ["UBMD_GPU_PROBE"],), daemon=True).start()
"""


def _labeler_check(timeout: float) -> tuple[bool, str]:
    """Whether tblite (the xtb labeler) computes a GFN2-xTB single point here."""
    code = ("import time; from ase.io import read; from tblite.interface import Calculator; "
            f"a = read({str(ALA2_START)!r}); t = time.perf_counter(); "
            "c = Calculator('GFN2-xTB', a.numbers, a.positions / 0.52917721); c.set('verbosity', 0); "
            "r = c.singlepoint(); print(r.get('energy'), time.perf_counter() - t)")  # fmt: skip
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, f"tblite single point took over {timeout:.0f} s"
    if out.returncode != 0:
        return False, (out.stderr.strip().splitlines() or ["?"])[-1][:200]
    return True, f"tblite GFN2-xTB single point {float(out.stdout.split()[1]):.2f} s"


def _nvidia_apps() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=5)  # fmt: skip
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        return []


def item_quickstart(ctx: Ctx) -> None:
    import threading

    import yaml

    sys.path.insert(0, str(ROOT / "tests" / "pipeline"))
    from conftest import shrunk_quickstart

    cap = float(os.environ.get("GPU_CHECK_CAP", "90"))
    t_item = time.perf_counter()
    if os.environ.get("GPU_CHECK_LABELER") == "emt":
        ok, how = False, "GPU_CHECK_LABELER=emt"
    else:
        ok, how = _labeler_check(timeout=30)
    print(f"  labeler check: {ok} {how}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_qs_"))
    config = shrunk_quickstart(tmp, name="qs", iterations=1)
    data = yaml.safe_load(config.read_text())
    data["device"] = "auto"
    if ctx.cpu:  # the rehearsal: a tinier run still
        data["exploration"]["settings"]["n_steps"] = 40
    if not ok:  # EMT has H, C, N, O parameters ("just for fun"): cheap, enough to run the loop
        data["labeler"] = {"name": "emt", "settings": {"allow_fun_elements": True}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    labeler = "xtb (tblite)" if ok else f"emt (allow_fun_elements; tblite failed: {how})"
    probe = tmp / "probe"
    probe.mkdir()
    (tmp / "sitecustomize.py").write_text(PROBE)
    env = {**os.environ, "UBMD_GPU_PROBE": str(probe),
           "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    smi: set[str] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.wait(1.0):
            smi.update(_nvidia_apps())

    if not ctx.cpu:
        threading.Thread(target=poll, daemon=True).start()
    left = cap - (time.perf_counter() - t_item) - 8
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ubmd.cli", "run", str(config), "--site",
                             "local", "--no-live"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, _ = proc.communicate()
        out = (out or "") + f"\n[gpu_check: stopped after {left:.0f} s]"
    wall = time.perf_counter() - t0
    done.set()
    (ctx.results.parent / "quickstart.log").write_text(out or "")
    root = Path(data["directory"])
    finished = proc.returncode == 0 and "reached max_iterations = 1" in (out or "")
    procs = [json.loads(p.read_text()) for p in probe.glob("*.json")]
    gpu_procs = [p for p in procs if p["max_mib"] > 0]
    roles = {}
    with contextlib.suppress(OSError, ValueError, KeyError):
        summary = json.loads((root / "reports" / "roles.json").read_text())["summary"]
        roles = {r: round(s["busy_s"], 1) for r, s in summary.items()}
    used = (f"of {len(procs)} processes that imported torch, {len(gpu_procs)} allocated GPU "
            "memory (max " + (f"{max(p['max_mib'] for p in gpu_procs):.0f} MiB)"
                              if gpu_procs else "-)"))  # fmt: skip
    if not ctx.cpu:
        used += f"; nvidia-smi saw {len({s.split(',')[0] for s in smi})} compute processes"
    clock = [ln.split("]")[0].strip("[ s") for ln in (out or "").splitlines() if ln.startswith("[")]
    if clock:
        used += f"; campaign clock {clock[-1]} s of the {wall:.0f} s (rest: start-up, shut-down)"
    ctx.emit("shrunk quickstart, 1 iteration, device auto, site local", round(wall, 1), "s",
             "finishes; GPU used" if not ctx.cpu else "finishes",
             f"{'finished' if finished else f'FAILED (rc {proc.returncode}, see quickstart.log)'}; "
             f"labeler {labeler}; {used}; busy s by role {roles}")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    if not ctx.cpu and finished and not gpu_procs:
        raise RuntimeError("the campaign finished but no process of it allocated GPU memory")


def item_env(ctx: Ctx) -> None:
    import importlib
    import platform

    import torch

    info = [f"python {platform.python_version()}", f"torch {torch.__version__}",
            f"CUDA {torch.version.cuda}", f"{os.cpu_count()} CPUs"]  # fmt: skip
    if ctx.dev.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        info += [p.name, f"{p.total_memory / 2**30:.0f} GiB", f"sm_{p.major}{p.minor}",
                 f"{p.multi_processor_count} SMs"]  # fmt: skip
        a = torch.randn(4096, 4096, device="cuda")
        ctx.sync()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ a
        ctx.sync()
        info.append(
            f"fp32 matmul {10 * 2 * 4096**3 / (time.perf_counter() - t0) / 1e12:.0f} TFLOP/s"
        )
    ctx.emit("machine", "; ".join(info))
    site = os.environ.get("GPU_CHECK_SITE", "/tmp/site")
    where = []
    for mod in ("ase", "pydantic", "pydantic_core", "parsl", "zmq", "vesin", "mace", "e3nn",
                "torch_ema", "tblite", "cffi", "typeguard", "h5py", "typer", "rich", "yaml",
                "sklearn", "scipy", "numpy", "matplotlib", "psutil", "torchmetrics", "pandas"):  # fmt: skip
        try:
            m = importlib.import_module(mod)
            ver = getattr(m, "__version__", "?")
            src = "carried" if str(Path(m.__file__).resolve()).startswith(site) else "image"
            where.append(f"{mod} {ver} ({src})")
        except Exception as exc:  # any import failure is the finding
            where.append(f"{mod} MISSING ({type(exc).__name__}: {str(exc)[:80]})")
    ctx.emit("packages", "; ".join(where))


# --------------------------------------------------------------------------- the driver
def _kill_tree(pid: int) -> None:
    """The item's process group, and its descendants that left the group (parsl's)."""
    try:
        import psutil

        kids = psutil.Process(pid).children(recursive=True)
    except Exception:
        kids = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(Exception):
            k.kill()


def _run_item_process(name: str, cap: float, cpu: bool, results: Path, log) -> str:
    """Run one item in its own process (group) for at most ``cap`` seconds; its status."""
    import threading

    cmd = [sys.executable, __file__, "--item", name, "--results", str(results)]
    cmd += ["--cpu"] if cpu else []
    t0 = time.perf_counter()
    env = {**os.environ, "GPU_CHECK_CAP": str(cap)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)  # fmt: skip
    tail: list[str] = []
    timer = threading.Timer(cap, _kill_tree, args=(proc.pid,))
    timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(f"[{name}] {line}")
            tail = [*tail[-299:], line.rstrip()]
        proc.wait()
    finally:
        timer.cancel()
        _kill_tree(proc.pid)  # leftovers (parsl workers) must not disturb the next item
        log.flush()
    dt = time.perf_counter() - t0
    if proc.returncode == 0:
        return "ok"
    if dt >= cap - 1:
        where = _stuck_at(tail)
        return (f"stopped at its cap of {cap:.0f} s (rows above are what it measured)"
                + (f"; it was at {where}" if where else ""))  # fmt: skip
    err = next((ln for ln in reversed(tail) if ln.strip() and not ln.startswith(" ")),
               f"exit code {proc.returncode}")  # fmt: skip
    return f"error after {dt:.0f} s: {err[:300]}"


def run_item(name: str, cpu: bool, results: Path) -> None:
    import faulthandler

    # a hang shows where it hangs: every thread's stack shortly before the cap kills the item
    cap = float(os.environ.get("GPU_CHECK_CAP", "0"))
    if cap > 5:
        faulthandler.dump_traceback_later(cap - 3, exit=False)
    ctx = Ctx(cpu, results, name)
    globals()[f"item_{name}"](ctx)


def _stuck_at(tail: list[str]) -> str:
    """The innermost frame of the main thread in a faulthandler dump (most recent first)."""
    heads = [k for k, ln in enumerate(tail) if ln.startswith(("Current thread", "Thread 0x"))]
    if heads:  # the main thread comes last
        for frame in tail[heads[-1] + 1 :]:
            if frame.strip().startswith("File "):
                return frame.strip()[:200]
    return ""


def _table(rows: list[dict], status: dict, head: str) -> str:
    lines = [head, "", "| item | case | value | unit | target | notes |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, *_ in ITEMS:
        mine = [r for r in rows if r["item"] == name]
        for r in mine:
            v = r["value"]
            v = f"{v:,.0f}" if isinstance(v, int | float) and abs(v) >= 1000 else v
            lines.append(f"| {name} | {r['case']} | {v} | {r['unit']} | {r['target']} | "
                         f"{r['note']} |")  # fmt: skip
        st = status.get(name, "not run")
        if st != "ok":
            lines.append(f"| {name} | (item) | - | | | **{st}** |")
    return "\n".join(lines) + "\n"


def _summary(rows: list[dict], cpu: bool) -> list[str]:
    """The issue's targets, read off the rows."""

    def best(prefix):
        vals = [(r["value"], r["case"]) for r in rows
                if r["case"].startswith(prefix) and isinstance(r["value"], int | float)]  # fmt: skip
        return max(vals) if vals else (None, "")

    out = []
    b, case = best("ala2 biased")
    a, _ = best("ASE Langevin")
    m, mcase = best("MIL-53")
    sel = [r for r in rows if r["case"].startswith("select_batch")]
    qs = [r for r in rows if r["case"].startswith("shrunk quickstart")]

    def tick(ok: bool) -> str:
        return "" if cpu else (" (met)" if ok else " (NOT met)")

    if b:
        out.append(
            f"- best biased explorer: {b:,.0f} atom-steps/s ({case}); target >= 10,000,000"
            + tick(b >= 1e7)
        )
    if b and a:
        out.append(f"- best batched / ASE: {b / a:.1f}x; target >= 50x" + tick(b / a >= 50))
    if m:
        out.append(
            f"- MIL-53 NPT with stress bias: {m:,.0f} atom-steps/s ({mcase}); target >= "
            "1,000,000" + tick(m >= 1e6)
        )
    for r in sel:
        out.append(f"- {r['case']}: {r['value']} s; target < 2 s at 100 000" + tick(r["value"] < 2))
    for r in qs:
        out.append(f"- quickstart: {r['note'].split(';')[0]}, {r['value']} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="rehearsal: CPU, small sizes")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_check")))
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all items (default 450 on the GPU, 1500 with --cpu)",
    )
    ap.add_argument(
        "--cap-scale",
        type=float,
        default=1.0,
        help="multiply every item's cap (a machine shared with other jobs runs slower)",
    )
    ap.add_argument("--only", nargs="+", choices=[n for n, *_ in ITEMS], help="run these items")
    ap.add_argument("--item", help=argparse.SUPPRESS)
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.item:
        run_item(args.item, args.cpu, args.results)
        return

    budget = args.budget or (1500.0 if args.cpu else 450.0)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "rows.jsonl"
    results.write_text("")
    deadline = time.perf_counter() + budget
    status: dict[str, str] = {}
    with open(args.out / "gpu_check.log", "a") as log:
        for name, caps, what in ITEMS:
            if args.only and name not in args.only:
                status[name] = "not asked for (--only)"
                continue
            left = deadline - time.perf_counter()
            cap = min(caps[1 if args.cpu else 0] * args.cap_scale, left)
            if cap < 10:
                status[name] = f"skipped: {left:.0f} s of the budget left"
                print(f"== {name}: {status[name]}", flush=True)
                continue
            print(f"== {name} ({what}), cap {cap:.0f} s", flush=True)
            t0 = time.perf_counter()
            status[name] = _run_item_process(name, cap, args.cpu, results, log)
            print(f"== {name}: {status[name]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = [json.loads(ln) for ln in results.read_text().splitlines() if ln.strip()]
    head = (f"# ubmd GPU check ({'CPU rehearsal, small sizes' if args.cpu else 'GPU'}), "
            f"{time.strftime('%Y-%m-%d %H:%M')}\n")  # fmt: skip
    text = _table(rows, status, head) + "\n" + "\n".join(_summary(rows, args.cpu)) + "\n"
    (args.out / "gpu_check.md").write_text(text)
    print("\n" + text, flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
