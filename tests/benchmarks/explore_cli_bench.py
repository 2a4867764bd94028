"""`ubmd explore` against the bare batched engine, at equal settings, on one model file.

Both run biased MD with the model's last-layer posterior uncertainty and its calibration, the
same 32 start frames of the 300 K alanine dipeptide set, one torch thread, the same bias window
(2 samples) and stop rules that never fire (so no replica leaves the batch). The engine is timed
as in explore_bench.py section (b) (``batched_runner``, minimum over interleaved rounds); the CLI
reports the mean steady-state rate over its whole run after set-up, and the best of
``--cli-runs`` runs is kept (a compiled run's steady rate varies by about 10 % from one process
to the next here, so best against best). The last line is the ratio CLI / engine for eager and
for compiled (target: within about 5 %; a best-of-rounds minimum sits a few per cent above a
mean even with no overhead).

    OMP_NUM_THREADS=1 python tests/benchmarks/explore_cli_bench.py [--steps 1000] [--model FILE]

Without ``--model`` a model is trained for 2 epochs first (weights do not change the cost).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from ase.io import read

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("explore_bench", HERE / "explore_bench.py")
explore_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(explore_bench)
FRAMES = "100:132"
RATE = re.compile(r"steady state (\d+) atom-steps/s")


def train_model(out: Path) -> None:
    cmd = ["ubmd", "train", str(explore_bench.DATA), "--out", str(out), "--epochs", "2"]
    subprocess.run([*cmd, "--quiet", "--uncertainty", "posterior"], check=True)


def engine_rate(model_file: Path, *, compiled: bool, steps: int, rounds: int) -> float:
    from ubmd.md.adapter import UBMDModel
    from ubmd.md.bias import BiasConfig
    from ubmd.uncertainty import load_bundle

    torch.manual_seed(0)
    start, stop = (int(x) for x in FRAMES.split(":"))
    starts = read(explore_bench.DATA, f"{start}:{stop}")
    model, estimator, calibration = load_bundle(model_file, device="cpu")
    md = UBMDModel(model, estimator, calibration, compile=compiled)
    bias = BiasConfig(window=2, norm_every=10)
    runner = explore_bench.batched_runner(md, starts, len(starts), bias)
    seconds = explore_bench.min_times({"engine": runner}, steps, rounds)["engine"]
    return len(starts) * len(starts[0]) / seconds


def cli_rate(model_file: Path, out: Path, *, compiled: bool, steps: int) -> float:
    cmd = ["ubmd", "explore", str(model_file), str(explore_bench.DATA), "--frames", FRAMES]
    cmd += ["--replicas", "32", "--steps", str(steps), "--window", "2", "--threads", "1"]
    cmd += ["--min-distance", "0.0001", "--max-force", "1e9", "--record-every", "100000"]
    cmd += ["--out", str(out)] + (["--compile"] if compiled else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    text = res.stdout + res.stderr
    match = RATE.search(text)
    if res.returncode != 0 or match is None:
        raise SystemExit(f"ubmd explore failed or printed no steady rate:\n{text[-3000:]}")
    if "replicas running on average" in text:
        print("warning: replicas stopped in the CLI run; the batch was not full")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=1000, help="CLI steps per run")
    parser.add_argument("--engine-steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cli-runs", type=int, default=3, help="ubmd explore runs per mode")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from ubmd.md.allocator import retain_freed_memory

    # the engine arm runs in this process: the malloc setting that `ubmd explore` and
    # explore_bench.py make (without it every eager step pays fresh page faults)
    retain_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "ala2.pt"
        if args.model is None:
            train_model(model)
        ratios = {}
        for compiled in (False, True):
            mode = "compiled" if compiled else "eager"
            engine = engine_rate(model, compiled=compiled, steps=args.engine_steps,
                                 rounds=args.rounds)  # fmt: skip
            runs = [
                cli_rate(model, Path(tmp) / f"{mode}{k}.h5", compiled=compiled, steps=args.steps)
                for k in range(args.cli_runs)
            ]
            cli = max(runs)
            print(f"{mode:>8}: ubmd explore runs " + ", ".join(f"{r:.0f}" for r in runs))
            ratios[mode] = cli / engine
            print(f"{mode:>8}: engine {engine:8.0f}, ubmd explore {cli:8.0f} atom-steps/s")
    print(f"ubmd explore / engine: eager {ratios['eager']:.3f}, compiled {ratios['compiled']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
