"""Where a streaming campaign (``mode: streaming``) keeps its files, and how models are published.

Model version ``v`` is trained like iteration ``v`` of an iterations-mode campaign and lives in
the same place (``iter_NNN/models``, ``iter_NNN/model.pt``, ``iter_NNN/report.json``), so the
final model, ``ubmd status`` and the reports work unchanged. Next to it::

    DIR/stream/starts.extxyz                 the systems' start structures
    DIR/stream/snapshots/vNNNN.h5            the labels model version NNNN is trained on
    DIR/stream/models/vNNNN.pt               published model versions (complete, never rewritten)
    DIR/stream/explore/eEE/sSSSSS.json       a segment's request (model version, where it starts)
    DIR/stream/explore/eEE/sSSSSS.next.json  where the next segment of the explorer continues
    DIR/stream/explore/eEE/sSSSSS.h5         its candidates (written last: the segment is done)
    DIR/stream/select/pPPPP.json             a selection's request (segments, versions, batch)
    DIR/stream/select/pPPPP.condition.extxyz  structures labelled or being labelled at request
    DIR/stream/select/pPPPP.extxyz           the picks (written last: the selection is done)
    DIR/stream/labels/pPPPP/KKKK.npz         one label result per pick
    DIR/stream/roles.json                    busy/idle time per role, and every task's span

Requests are written (atomically) before their task is submitted: on a restart a request
without its result is submitted again exactly as it was, so what a task computes never depends
on when the driver was killed.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ubmd.campaign.layout import CampaignLayout, write_atomic

_VERSION = re.compile(r"^v(\d{4,})\.pt$")  # temporary files start with "." and never match


@dataclass(frozen=True)
class StreamLayout:
    root: Path

    @property
    def campaign(self) -> CampaignLayout:
        return CampaignLayout(self.root)

    @property
    def base(self) -> Path:
        return self.root / "stream"

    @property
    def starts(self) -> Path:
        return self.base / "starts.extxyz"

    @property
    def roles(self) -> Path:
        return self.base / "roles.json"

    def snapshot(self, version: int) -> Path:
        return self.base / "snapshots" / f"v{version:04d}.h5"

    def model(self, version: int) -> Path:
        return self.base / "models" / f"v{version:04d}.pt"

    def segment(self, explorer: int, segment: int) -> Path:
        return self.base / "explore" / f"e{explorer:02d}" / f"s{segment:05d}.h5"

    def segment_request(self, explorer: int, segment: int) -> Path:
        return self.segment(explorer, segment).with_suffix(".json")

    def continuation(self, explorer: int, segment: int) -> Path:
        return self.segment(explorer, segment).with_suffix(".next.json")

    def segments_of(self, explorer: int) -> list[int]:
        """Segment numbers of an explorer that have a request (done or not), in order."""
        folder = self.base / "explore" / f"e{explorer:02d}"
        return sorted(int(p.stem[1:]) for p in folder.glob("s" + "[0-9]" * 5 + ".json"))

    def selection(self, pick: int) -> Path:
        return self.base / "select" / f"p{pick:04d}.extxyz"

    def selection_request(self, pick: int) -> Path:
        return self.selection(pick).with_suffix(".json")

    def condition(self, pick: int) -> Path:
        return self.selection(pick).with_suffix(".condition.extxyz")

    def selections(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in (self.base / "select").glob("p[0-9]*.json"))

    def label(self, pick: int, k: int) -> Path:
        return self.base / "labels" / f"p{pick:04d}" / f"{k:04d}.npz"

    def label_workdir(self, pick: int, k: int) -> Path:
        return self.base / "labels" / f"p{pick:04d}" / f"{k:04d}.work"


def published_versions(layout: StreamLayout) -> list[int]:
    """Every published model version, in order; a file being written is never among them."""
    folder = layout.base / "models"
    found = (_VERSION.match(p.name) for p in folder.glob("v*.pt")) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def latest_version(layout: StreamLayout) -> int:
    """The newest published model version (0: none yet)."""
    versions = published_versions(layout)
    return versions[-1] if versions else 0


def publish_model(layout: StreamLayout, version: int, bundle: str | Path) -> Path:
    """Publish a complete bundle as ``version``: copied to a temporary name next to its place
    and renamed, so a reader finds the whole file or none (never a part of one)."""
    out = layout.model(version)
    if not out.exists():
        write_atomic(out, lambda tmp: shutil.copyfile(bundle, tmp), suffix=".pt")
    return out


def write_snapshot(store: Any, path: Path) -> int:
    """Copy every stored row (ok and failed, with provenance) into a new store at ``path``,
    atomically: the data a model version trains on, fixed while the campaign store grows.
    Returns the number of rows."""
    from ubmd.store import StructureStore

    atoms = store.read_atoms()

    def write(tmp: Path) -> None:
        from ubmd.store.lock import lock_path

        tmp.unlink()  # StructureStore.create makes its own file
        with StructureStore.create(tmp) as snap:
            snap.append(atoms)
        Path(lock_path(tmp)).unlink(missing_ok=True)  # a closed snapshot has no writer

    write_atomic(path, write, suffix=".h5")
    return len(atoms)


def snapshot_ok_labels(path: Path) -> int:
    """How many ok labels a snapshot holds (what the next training is counted from)."""
    from ubmd import keys
    from ubmd.store import StructureStore

    with StructureStore.open(path, mode="r") as snap:
        return len(snap.select(status=keys.STATUS_OK))
