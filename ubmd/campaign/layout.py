"""Where a campaign keeps its files, and how they are written so that a kill never corrupts them.

Every artefact a task produces is written to a temporary name in the same folder and renamed
into place (``os.replace`` is atomic on POSIX), so an artefact either exists complete or not at
all. Resume is then a matter of looking at which artefacts exist: nothing else records state.

    DIR/campaign.yaml            the validated campaign (a resumed run must match it)
    DIR/store.h5                 every label, written by the driver only
    DIR/iter_000/labels/         iteration 0: the initial data (random displacements)
    DIR/iter_NNN/models/member_M.pt   trained ensemble members
    DIR/iter_NNN/model.pt        the bundle: members + uncertainty + calibration
    DIR/iter_NNN/explore/explorer_E.h5   candidates of one explorer
    DIR/iter_NNN/explore/explorer_E.json where its time went (start-up, steady rate, stops)
    DIR/iter_NNN/selection.extxyz the selected batch (structures + provenance)
    DIR/iter_NNN/labels/K.npz     one label result (ok or failed) per selected structure
    DIR/iter_NNN/report.json      metrics after the iteration (plots next to it)
    DIR/final/models/member_M.pt  the final model, trained on every label when the campaign stops
    DIR/final/model.pt           its bundle (what the campaign hands over)
    DIR/final/report.json        its metrics
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def write_atomic(
    path: str | os.PathLike[str], writer: Callable[[Path], None], suffix: str = ""
) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, suffix) as tmp:
        writer(tmp)
    return Path(path)


@dataclass(frozen=True)
class CampaignLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "campaign.yaml"

    @property
    def store(self) -> Path:
        return self.root / "store.h5"

    @property
    def run_dir(self) -> Path:
        return self.root / "parsl"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def roles(self) -> Path:
        """Busy and idle time per role and every task's span (``ubmd.campaign.roles``)."""
        return self.reports / "roles.json"

    def iteration(self, i: int) -> Path:
        return self.root / f"iter_{i:03d}"

    def member(self, i: int, m: int) -> Path:
        return self.iteration(i) / "models" / f"member_{m}.pt"

    def bundle(self, i: int) -> Path:
        return self.iteration(i) / "model.pt"

    def explorer(self, i: int, e: int) -> Path:
        return self.iteration(i) / "explore" / f"explorer_{e:02d}.h5"

    def explorer_stats(self, i: int, e: int) -> Path:
        """Where one explorer's time went (start-up, steady rate, stop reasons)."""
        return self.explorer(i, e).with_suffix(".json")

    def starts(self, i: int) -> Path:
        return self.iteration(i) / "explore" / "starts.extxyz"

    def selection(self, i: int) -> Path:
        return self.iteration(i) / "selection.extxyz"

    def label(self, i: int, k: int) -> Path:
        return self.iteration(i) / "labels" / f"{k:04d}.npz"

    def label_workdir(self, i: int, k: int) -> Path:
        return self.iteration(i) / "labels" / f"{k:04d}.work"

    def report(self, i: int) -> Path:
        return self.iteration(i) / "report.json"

    @property
    def final(self) -> Path:
        return self.root / "final"

    def final_member(self, m: int) -> Path:
        return self.final / "models" / f"member_{m}.pt"

    @property
    def final_bundle(self) -> Path:
        return self.final / "model.pt"

    @property
    def final_report(self) -> Path:
        return self.final / "report.json"

    def iterations_present(self) -> list[int]:
        out = []
        for p in self.root.glob("iter_*"):
            with contextlib.suppress(ValueError):
                out.append(int(p.name.split("_", 1)[1]))
        return sorted(out)
