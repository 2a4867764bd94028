"""Bad input against the real command line: every command, every campaign section.

Each case must end with a non-zero exit status, a one-line message naming the offending value
or file, no traceback, and the working directory (and the good inputs beside it) byte for byte
as before: nothing created, nothing changed. Cases that used to hang run under a timeout.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ubmd.cli import get_app

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "workflows" / "quickstart" / "campaign.yaml"
RESULT = ROOT / "docs" / "results" / "quickstart" / "smallF_biased_seed0"

runner = CliRunner()

XYZ_ONE = """3
Properties=species:S:1:pos:R:3 pbc="F F F"
O 0.0 0.0 0.0
H 0.96 0.0 0.0
H -0.24 0.93 0.0
"""


def xyz(positions: str) -> str:
    lines = positions.strip().splitlines()
    return f'{len(lines)}\nProperties=species:S:1:pos:R:3 pbc="F F F"\n' + "\n".join(lines) + "\n"


NAN_XYZ = xyz("O 0.0 0.0 0.0\nH nan 0.0 0.0\nH -0.24 0.93 0.0")
NAN_CU = xyz("Cu 0.0 0.0 0.0\nCu nan 0.0 0.0")
COINCIDENT_XYZ = xyz("O 0.0 0.0 0.0\nH 0.0 0.0 0.0\nH -0.24 0.93 0.0")
GARBAGE = "this is not a structure file\n\x00\x01 at all"
BILLION_LAUGHS = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


# ---------------------------------------------------------------- the good inputs


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """Valid inputs that each case spoils one thing of (they must stay untouched)."""
    d = tmp_path_factory.mktemp("good")
    shutil.copyfile(ROOT / "data" / "ala2" / "alanine-dipeptide.extxyz", d / "start.xyz")
    shutil.copyfile(RESULT / "model.pt", d / "model.pt")
    from ase.build import bulk

    bulk("Cu", "fcc", a=3.6, cubic=True).write(d / "cu.xyz", format="extxyz")
    shutil.copyfile(RESULT / "store.h5", d / "store.h5")
    frames = (ROOT / "data" / "ala2" / "ala2_xtb_300K.extxyz").read_text().splitlines()
    per = int(frames[0]) + 2
    (d / "labelled.xyz").write_text("\n".join(frames[: 4 * per]) + "\n")
    rng = np.random.default_rng(0)
    np.savez(d / "pool.npz", features=rng.normal(size=(20, 4)), uncertainty=rng.random(20))
    np.savez(d / "train.npz", features=rng.normal(size=(10, 4)))
    data = yaml.safe_load(QUICKSTART.read_text())
    data["systems"][0]["structure"] = str(d / "start.xyz")
    for key in ("test_set",):
        data["evaluation"][key] = str((QUICKSTART.parent / data["evaluation"][key]).resolve())
    data["evaluation"]["test_sets"] = {
        k: str((QUICKSTART.parent / v).resolve())
        for k, v in data["evaluation"]["test_sets"].items()
    }
    data["directory"] = "camp"
    (d / "campaign.json").write_text(yaml.safe_dump(data))
    (d / "site.yaml").write_text((ROOT / "site_configs" / "local.yaml").read_text())
    return d


def snapshot(*dirs: Path) -> dict[str, str]:
    out = {}
    for base in dirs:
        for p in sorted(base.rglob("*")):
            key = str(p)
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def campaign(good: Path, changes: dict) -> str:
    """The good campaign with dotted keys changed (list items by index; None deletes)."""
    data = copy.deepcopy(yaml.safe_load((good / "campaign.json").read_text()))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return yaml.safe_dump(data)


def never_start(config):
    raise AssertionError(f"campaign {config.name!r} passed every check and would start")


def check(good: Path, tmp_path: Path, args: list[str], files: dict, expect: str | list[str]):
    """Run ``ubmd ARGS`` in a fresh working directory holding ``files``; check the failure."""
    work = tmp_path / "work"
    work.mkdir()
    for name, content in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = content(good) if callable(content) else content
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    args = [a.replace("{good}", str(good)) for a in args]
    before = snapshot(work, good)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = runner.invoke(get_app(), args)
    finally:
        os.chdir(cwd)
    output = result.output
    assert result.exit_code not in (0, None), f"exit 0 for {args}:\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args} raised {result.exception!r}:\n{output}"
    )
    assert "Traceback" not in output, output
    for needle in [expect] if isinstance(expect, str) else expect:
        needle = needle.replace("{good}", str(good))
        assert needle in output, f"{needle!r} not named for {args}:\n{output}"
    assert len(output) < 2000, f"message too long ({len(output)} chars):\n{output[:3000]}"
    assert snapshot(work, good) == before, f"{args} changed or created files"


# ---------------------------------------------------------------- ubmd run: campaign sections

C = "c.yaml"


def run_case(changes: dict, expect, extra: tuple = (), more_files: dict | None = None):
    files = {C: lambda g: campaign(g, changes), **(more_files or {})}
    return (["run", C, "--site", "local", "--no-live", *extra], files, expect)


RUN_CASES = {
    "top-level unknown key": run_case({"seeed": 1}, ["seeed", "seed"]),
    "name empty": run_case({"name": ""}, "name"),
    "seed not an int": run_case({"seed": "abc"}, ["seed", "abc"]),
    "device tpu": run_case({"device": "tpu"}, "tpu"),
    "dtype float16": run_case({"dtype": "float16"}, "float16"),
    "directory is a file": run_case({"directory": "afile"}, "afile", more_files={"afile": "x"}),
    "no systems": run_case({"systems": []}, "systems"),
    "system unknown key": run_case({"systems.0.strucure": "x.xyz"}, ["strucure", "structure"]),
    "structure missing": run_case({"systems.0.structure": "nowhere.xyz"}, "nowhere.xyz"),
    "structure empty": run_case(
        {"systems.0.structure": "empty.xyz"}, "empty.xyz", more_files={"empty.xyz": ""}
    ),
    "structure garbage": run_case(
        {"systems.0.structure": "junk.xyz"}, "junk.xyz", more_files={"junk.xyz": GARBAGE}
    ),
    "structure NaN": run_case(
        {"systems.0.structure": "nan.xyz"}, ["nan.xyz", "NaN"], more_files={"nan.xyz": NAN_XYZ}
    ),
    "structure coincident atoms": run_case(
        {"systems.0.structure": "two.xyz"},
        ["two.xyz", "atoms 0 and 1"],
        more_files={"two.xyz": COINCIDENT_XYZ},
    ),
    "structure is a directory": run_case(
        {"systems.0.structure": "adir"}, "adir", more_files={"adir/x": "1"}
    ),
    "random_displacements 0": run_case(
        {"initial_data.random_displacements": 0}, "random_displacements"
    ),
    "random_displacements too few": run_case(
        {"initial_data.random_displacements": 2}, "random_displacements"
    ),
    "displacement negative": run_case({"initial_data.displacement_A": -0.1}, "displacement_A"),
    "initial_data typo": run_case(
        {"initial_data.random_displacement": 4}, ["random_displacement", "random_displacements"]
    ),
    "labelled missing": run_case({"initial_data.labelled": "gone.xyz"}, "gone.xyz"),
    "labelled garbage": run_case(
        {"initial_data.labelled": "junk.xyz"}, "junk.xyz", more_files={"junk.xyz": GARBAGE}
    ),
    "labelled without labels": run_case(
        {"initial_data.labelled": "bare.xyz"}, "bare.xyz", more_files={"bare.xyz": XYZ_ONE}
    ),
    "model kind": run_case({"model.kind": "schnet"}, "schnet"),
    "ensemble_size 0": run_case({"model.ensemble_size": 0}, "ensemble_size"),
    "model typo": run_case({"model.trainnig": {}}, ["trainnig", "training"]),
    "training epochs negative": run_case({"model.training.max_epochs": -1}, "max_epochs"),
    "training lr text": run_case({"model.training.lr": "fast"}, ["lr", "fast"]),
    "training unknown key": run_case({"model.training.epochz": 3}, ["epochz", "epochs"]),
    "fine_tuning unknown key": run_case(
        {"model.fine_tuning.max_epoch": 3}, ["max_epoch", "max_epochs"]
    ),
    "energy filter negative": run_case(
        {"model.max_energy_above_min_eV_atom": -1}, "max_energy_above_min_eV_atom"
    ),
    "retrain_every negative": run_case({"model.retrain_every": -2}, "retrain_every"),
    "uncertainty method": run_case({"uncertainty.settings.method": "oracle"}, "oracle"),
    "uncertainty sigma": run_case({"uncertainty.settings.sigma": -1}, "sigma"),
    "uncertainty typo": run_case({"uncertainty.setings": {}}, ["setings", "settings"]),
    "calibration alpha": run_case({"uncertainty.calibration.alpha": 1.5}, "alpha"),
    "calibration fraction": run_case({"uncertainty.calibration.fraction": 0}, "fraction"),
    "explorers 0": run_case({"exploration.explorers": 0}, "explorers"),
    "replicas negative": run_case({"exploration.replicas": -1}, "replicas"),
    "sampler": run_case({"exploration.settings.sampler": "warp"}, "warp"),
    "ensemble npx": run_case({"exploration.settings.ensemble": "npx"}, "npx"),
    "temperature negative": run_case({"exploration.settings.temperature_K": -5}, "temperature_K"),
    "timestep zero": run_case({"exploration.settings.timestep_fs": 0}, "timestep_fs"),
    "n_steps zero": run_case({"exploration.settings.n_steps": 0}, "n_steps"),
    "record_every zero": run_case({"exploration.settings.record_every": 0}, "record_every"),
    "stop typo": run_case(
        {"exploration.settings.stop.max_atomic_uncertanty": 1.0},
        ["max_atomic_uncertanty", "max_atomic_uncertainty"],
    ),
    "stop negative": run_case({"exploration.settings.stop.min_distance_A": -1}, "min_distance_A"),
    "species weight element": run_case({"exploration.settings.species_weights": {"Xx": 0.0}}, "Xx"),
    "settings typo": run_case({"exploration.settings.tau_rell": 0.1}, ["tau_rell", "tau_rel"]),
    "selection method": run_case({"selection.method": "best"}, "best"),
    "selection batch 0": run_case({"selection.batch_size": 0}, "batch_size"),
    "selection kernel": run_case({"selection.settings.kernel": "rbf9"}, "rbf9"),
    "labeler name": run_case({"labeler.name": "gaussian"}, "gaussian"),
    "labeler settings typo": run_case(
        {"labeler.settings": {"acuracy": 1.0}}, ["acuracy", "accuracy"]
    ),
    "amber prmtop missing": run_case(
        {"labeler.name": "amber", "labeler.settings": {"prmtop": "none.prmtop"}}, "none.prmtop"
    ),
    "max_iterations negative": run_case({"stopping.max_iterations": -1}, "max_iterations"),
    "label_budget 0": run_case({"stopping.label_budget": 0}, "label_budget"),
    "stopping typo": run_case({"stopping.label_budjet": 3}, ["label_budjet", "label_budget"]),
    "test_set missing": run_case({"evaluation.test_set": "gone.xyz"}, "gone.xyz"),
    "test_set empty": run_case({"evaluation.test_set": "e.xyz"}, "e.xyz", more_files={"e.xyz": ""}),
    "test_set garbage": run_case(
        {"evaluation.test_sets": {"plane": "junk.xyz"}},
        "junk.xyz",
        more_files={"junk.xyz": GARBAGE},
    ),
    "test_set unlabelled": run_case(
        {"evaluation.test_set": "bare.xyz"}, "bare.xyz", more_files={"bare.xyz": XYZ_ONE}
    ),
    "evaluation typo": run_case(
        {"evaluation.ramachandaran": True}, ["ramachandaran", "ramachandran"]
    ),
    "max-iterations -1": run_case({}, ["max_iterations", "-1"], extra=("--max-iterations", "-1")),
    "site unknown": run_case({}, "nosuchsite", extra=("--site", "nosuchsite")),
    "site accelerators -2": run_case(
        {},
        ["available_accelerators", "-2"],
        extra=("--site", "bad_site.yaml"),
        more_files={
            "bad_site.yaml": lambda g: (
                (g / "site.yaml")
                .read_text()
                .replace(
                    "cores_per_worker: 1", "cores_per_worker: 1\n    available_accelerators: -2"
                )
            )
        },
    ),
    "dir is a file": run_case({}, "afile", extra=("--dir", "afile"), more_files={"afile": "x"}),
    "costs garbage": run_case(
        {},
        "costs.yaml",
        extra=("--dry-run", "--costs", "costs.yaml"),
        more_files={"costs.yaml": "[1, 2"},
    ),
    "costs unknown key": run_case(
        {},
        "train_sec",
        extra=("--dry-run", "--costs", "costs.yaml"),
        more_files={"costs.yaml": "train_sec: 3\n"},
    ),
}

FILE_CASES = {
    "campaign missing": (["run", "nowhere.yaml", "--site", "local"], {}, "nowhere.yaml"),
    "campaign is a directory": (["run", "adir", "--site", "local"], {"adir/x": "1"}, "adir"),
    "campaign empty": (["run", "e.yaml", "--site", "local"], {"e.yaml": ""}, "e.yaml"),
    "campaign a list": (["run", "l.yaml", "--site", "local"], {"l.yaml": "- 1\n- 2\n"}, "l.yaml"),
    "campaign bad YAML": (["run", "b.yaml", "--site", "local"], {"b.yaml": "name: [x\n"}, "b.yaml"),
    "campaign binary": (
        ["run", "b.yaml", "--site", "local"],
        {"b.yaml": b"\xff\xfe\x00bad"},
        "b.yaml",
    ),
    "campaign billion laughs": (
        ["run", "lol.yaml", "--site", "local"],
        {"lol.yaml": BILLION_LAUGHS},
        "lol.yaml",
    ),
    "status missing": (["status", "nowhere"], {}, "nowhere"),
    "status no campaign": (["status", "adir"], {"adir/x": "1"}, "adir"),
    "status a file": (["status", "f.txt"], {"f.txt": "x"}, "f.txt"),
}

# ---------------------------------------------------------------- ubmd store


def truncated(g: Path) -> bytes:
    return (g / "store.h5").read_bytes()[:100_000]


def damaged(g: Path) -> bytes:
    data = bytearray((g / "store.h5").read_bytes())
    data[100:400] = b"\xff" * 300
    return bytes(data)


def plain_hdf5(g: Path) -> bytes:
    import h5py

    path = g.parent / "plain_source.h5"
    if not path.exists():
        with h5py.File(path, "w") as h5:
            h5["x"] = np.arange(3)
    return path.read_bytes()


STORE_CASES = {
    "info missing": (["store", "info", "gone.h5"], {}, "gone.h5"),
    "info text file": (["store", "info", "t.h5"], {"t.h5": "hello"}, "t.h5"),
    "info truncated": (["store", "info", "cut.h5"], {"cut.h5": truncated}, ["cut.h5", "truncated"]),
    "info damaged": (["store", "info", "bad.h5"], {"bad.h5": damaged}, ["bad.h5", "damaged"]),
    "info plain hdf5": (["store", "info", "p.h5"], {"p.h5": plain_hdf5}, "p.h5"),
    "info directory": (["store", "info", "adir"], {"adir/x": "1"}, "adir"),
    "export truncated": (["store", "export", "cut.h5", "o.xyz"], {"cut.h5": truncated}, "cut.h5"),
    "export damaged": (["store", "export", "bad.h5", "o.xyz"], {"bad.h5": damaged}, "bad.h5"),
    "validate truncated": (["store", "validate", "cut.h5"], {"cut.h5": truncated}, "cut.h5"),
    "validate missing": (["store", "validate", "gone.h5"], {}, "gone.h5"),
    "export suffix": (["store", "export", "{good}/store.h5", "o.txt"], {}, "o.txt"),
    "export status bogus": (
        ["store", "export", "{good}/store.h5", "o.xyz", "--status", "bogus"],
        {},
        "bogus",
    ),
    "export empty selection": (
        ["store", "export", "{good}/store.h5", "o.xyz", "--iteration", "999"],
        {},
        "999",
    ),
    "export db exists": (["store", "export", "{good}/store.h5", "o.db"], {"o.db": "x"}, "o.db"),
    "export sampler unknown": (
        ["store", "export", "{good}/store.h5", "o.xyz", "--sampler", "nosampler"],
        {},
        "nosampler",
    ),
    "import missing file": (["store", "import", "s.h5", "gone.xyz"], {}, "gone.xyz"),
    "import garbage": (["store", "import", "s.h5", "junk.xyz"], {"junk.xyz": GARBAGE}, "junk.xyz"),
    "import NaN": (["store", "import", "s.h5", "nan.xyz"], {"nan.xyz": NAN_XYZ}, "nan.xyz"),
    "import into text file": (
        ["store", "import", "t.h5", "{good}/labelled.xyz"],
        {"t.h5": "hello"},
        "t.h5",
    ),
    "import into damaged": (
        ["store", "import", "bad.h5", "{good}/labelled.xyz"],
        {"bad.h5": damaged},
        "bad.h5",
    ),
}

# ---------------------------------------------------------------- train, evaluate


def pickle_bomb(_g: Path) -> bytes:
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    return pickle.dumps(Boom())


MODEL_CASES = {
    "train missing data": (["train", "gone.xyz", "-o", "m.pt"], {}, "gone.xyz"),
    "train garbage": (["train", "junk.xyz", "-o", "m.pt"], {"junk.xyz": GARBAGE}, "junk.xyz"),
    "train empty": (["train", "e.xyz", "-o", "m.pt"], {"e.xyz": ""}, "e.xyz"),
    "train unlabelled": (["train", "bare.xyz", "-o", "m.pt"], {"bare.xyz": XYZ_ONE}, "bare.xyz"),
    "train NaN": (["train", "nan.xyz", "-o", "m.pt"], {"nan.xyz": NAN_XYZ}, "nan.xyz"),
    "train ensemble 0": (["train", "{good}/labelled.xyz", "-o", "m.pt", "-M", "0"], {}, "0"),
    "train epochs 0": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--epochs", "0"],
        {},
        "epochs",
    ),
    "train model": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--model", "nequip"],
        {},
        "nequip",
    ),
    "train device": (["train", "{good}/labelled.xyz", "-o", "m.pt", "--device", "tpu"], {}, "tpu"),
    "train dtype": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--dtype", "float16"],
        {},
        "float16",
    ),
    "train seed negative": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--seed", "-1"],
        {},
        "-1",
    ),
    "train config typo": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--config", "t.yaml"],
        {"t.yaml": "max_epoch: 3\n"},
        ["max_epoch", "max_epochs"],
    ),
    "train config bad YAML": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--config", "t.yaml"],
        {"t.yaml": "lr: [1\n"},
        "t.yaml",
    ),
    "train config billion laughs": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--config", "t.yaml"],
        {"t.yaml": BILLION_LAUGHS},
        "t.yaml",
    ),
    "train config lr negative": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--config", "t.yaml"],
        {"t.yaml": "lr: -0.1\n"},
        "lr",
    ),
    "train valid missing": (
        ["train", "{good}/labelled.xyz", "-o", "m.pt", "--valid", "gone.xyz"],
        {},
        "gone.xyz",
    ),
    "train out is a directory": (
        ["train", "{good}/labelled.xyz", "-o", "adir"],
        {"adir/x": "1"},
        "adir",
    ),
    "train from truncated store": (
        ["train", "cut.h5", "-o", "m.pt"],
        {"cut.h5": truncated},
        "cut.h5",
    ),
    "evaluate missing model": (["evaluate", "gone.pt", "{good}/labelled.xyz"], {}, "gone.pt"),
    "evaluate garbage model": (
        ["evaluate", "m.pt", "{good}/labelled.xyz"],
        {"m.pt": GARBAGE},
        "m.pt",
    ),
    "evaluate pickle": (["evaluate", "m.pt", "{good}/labelled.xyz"], {"m.pt": pickle_bomb}, "m.pt"),
    "evaluate empty model": (["evaluate", "m.pt", "{good}/labelled.xyz"], {"m.pt": b""}, "m.pt"),
    "evaluate missing data": (["evaluate", "{good}/model.pt", "gone.xyz"], {}, "gone.xyz"),
    "evaluate unlabelled": (
        ["evaluate", "{good}/model.pt", "bare.xyz"],
        {"bare.xyz": XYZ_ONE},
        "bare.xyz",
    ),
    "evaluate garbage data": (
        ["evaluate", "{good}/model.pt", "junk.xyz"],
        {"junk.xyz": GARBAGE},
        "junk.xyz",
    ),
    "evaluate wrong elements": (
        ["evaluate", "{good}/model.pt", "cu.xyz"],
        {"cu.xyz": xyz("Cu 0 0 0\nCu 2.5 0 0").replace("pbc", "energy=-1.0 pbc")},
        "Cu",
    ),
    "evaluate device": (
        ["evaluate", "{good}/model.pt", "{good}/labelled.xyz", "--device", "tpu"],
        {},
        "tpu",
    ),
    "evaluate batch 0": (
        ["evaluate", "{good}/model.pt", "{good}/labelled.xyz", "--batch-size", "0"],
        {},
        "batch-size",
    ),
}

# ---------------------------------------------------------------- explore

E = ["explore", "{good}/model.pt", "{good}/start.xyz", "-o", "c.h5"]
EXPLORE_CASES = {
    "explore missing model": (["explore", "gone.pt", "{good}/start.xyz"], {}, "gone.pt"),
    "explore pickle model": (
        ["explore", "m.pt", "{good}/start.xyz"],
        {"m.pt": pickle_bomb},
        "m.pt",
    ),
    "explore missing start": (["explore", "{good}/model.pt", "gone.xyz"], {}, "gone.xyz"),
    "explore empty start": (["explore", "{good}/model.pt", "e.xyz"], {"e.xyz": ""}, "e.xyz"),
    "explore NaN start": (
        ["explore", "{good}/model.pt", "nan.xyz"],
        {"nan.xyz": NAN_XYZ},
        ["nan.xyz", "NaN"],
    ),
    "explore coincident": (
        ["explore", "{good}/model.pt", "two.xyz"],
        {"two.xyz": COINCIDENT_XYZ},
        "two.xyz",
    ),
    "explore wrong elements": (
        ["explore", "{good}/model.pt", "cu.xyz"],
        {"cu.xyz": xyz("Cu 0 0 0\nCu 2.5 0 0")},
        "Cu",
    ),
    "explore steps 0": ([*E, "--steps", "0"], {}, "steps"),
    "explore temperature": ([*E, "--temperature", "-1"], {}, "temperature"),
    "explore replicas 0": ([*E, "--replicas", "0"], {}, "replicas"),
    "explore sampler": ([*E, "--sampler", "warp"], {}, "warp"),
    "explore species weight": ([*E, "--species-weight", "H=abc"], {}, "H=abc"),
    "explore species unknown": ([*E, "--species-weight", "Qq=0"], {}, "Qq"),
    "explore frames": ([*E, "--frames", "abc"], {}, "abc"),
    "explore frames out of range": ([*E, "--frames", "5"], {}, "5"),
    "explore dtype": ([*E, "--dtype", "float16"], {}, "float16"),
    "explore device": ([*E, "--device", "tpu"], {}, "tpu"),
    "explore timestep 0": ([*E, "--timestep-fs", "0"], {}, "timestep"),
    "explore record 0": ([*E, "--record-every", "0"], {}, "record_every"),
    "explore friction negative": ([*E, "--friction", "-1"], {}, "friction"),
    "explore window 0": ([*E, "--window", "0"], {}, "window"),
    "explore adversarial without data": ([*E, "--sampler", "adversarial"], {}, "training-data"),
    "explore out is text": (
        ["explore", "{good}/model.pt", "{good}/start.xyz", "-o", "t.h5"],
        {"t.h5": "x"},
        "t.h5",
    ),
}

# ---------------------------------------------------------------- select, design


def npz_with(**arrays):
    def make(_g: Path) -> bytes:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    return make


SELECT_CASES = {
    "select missing": (["select", "gone.npz"], {}, "gone.npz"),
    "select corrupt npz": (["select", "p.npz"], {"p.npz": b"PK\x03\x04garbage"}, "p.npz"),
    "select pickle npz": (
        ["select", "p.npz"],
        {"p.npz": npz_with(features=np.array([{"a": 1}], dtype=object))},
        "p.npz",
    ),
    "select no features": (["select", "p.npz"], {"p.npz": npz_with(x=np.ones(3))}, "features"),
    "select features 1-D": (
        ["select", "p.npz"],
        {"p.npz": npz_with(features=np.ones(3))},
        "features",
    ),
    "select features NaN": (
        ["select", "p.npz"],
        {"p.npz": npz_with(features=np.full((5, 2), np.nan))},
        "NaN",
    ),
    "select suffix": (["select", "p.txt"], {"p.txt": "1 2 3"}, "p.txt"),
    "select method": (["select", "{good}/pool.npz", "-m", "best"], {}, "best"),
    "select batch 0": (["select", "{good}/pool.npz", "-b", "0"], {}, "batch-size"),
    "select batch > pool": (["select", "{good}/pool.npz", "-b", "50"], {}, "50"),
    "select posterior no train": (
        ["select", "{good}/pool.npz", "--kernel", "posterior"],
        {},
        "train",
    ),
    "select kernel": (["select", "{good}/pool.npz", "--kernel", "rbf9"], {}, "rbf9"),
    "select sigma": (["select", "{good}/pool.npz", "--sigma", "-1"], {}, "sigma"),
    "select train width": (
        ["select", "{good}/pool.npz", "-t", "t.npz"],
        {"t.npz": npz_with(features=np.ones((3, 7)))},
        "7",
    ),
    "select device": (["select", "{good}/pool.npz", "--device", "tpu"], {}, "tpu"),
    "design missing": (["design", "gone.npz"], {}, "gone.npz"),
    "design corrupt": (["design", "p.npz"], {"p.npz": b"PK\x03\x04garbage"}, "p.npz"),
    "design lam": (["design", "{good}/pool.npz", "--lam", "-1"], {}, "lam"),
    "design batch > pool": (["design", "{good}/pool.npz", "-b", "50"], {}, "50"),
    "design threshold": (["design", "{good}/pool.npz", "--threshold", "-1"], {}, "threshold"),
    "design plot suffix": (["design", "{good}/pool.npz", "--plot", "p.txt"], {}, "p.txt"),
}

# ---------------------------------------------------------------- label

L = ["label", "{good}/cu.xyz", "-l", "emt", "-s", "s.h5"]
LABEL_CASES = {
    "label NaN": (["label", "nan.xyz", "-l", "emt", "-s", "s.h5"], {"nan.xyz": NAN_CU}, "nan.xyz"),
    "label missing": (["label", "gone.xyz", "-l", "emt", "-s", "s.h5"], {}, "gone.xyz"),
    "label garbage": (
        ["label", "junk.xyz", "-l", "emt", "-s", "s.h5"],
        {"junk.xyz": GARBAGE},
        "junk.xyz",
    ),
    "label empty": (["label", "e.xyz", "-l", "emt", "-s", "s.h5"], {"e.xyz": ""}, "e.xyz"),
    "label labeler": (
        ["label", "{good}/cu.xyz", "-l", "gaussian", "-s", "s.h5"],
        {},
        "gaussian",
    ),
    "label settings typo": ([*L, "--settings", "st.yaml"], {"st.yaml": "asap: true\n"}, "asap"),
    "label settings bad YAML": ([*L, "--settings", "st.yaml"], {"st.yaml": "a: [\n"}, "st.yaml"),
    "label settings missing": ([*L, "--settings", "gone.yaml"], {}, "gone.yaml"),
    "label max attempts 0": ([*L, "--max-attempts", "0"], {}, "max-attempts"),
    "label timeout negative": ([*L, "--timeout-s", "-1"], {}, "timeout"),
    "label store is text": (
        ["label", "{good}/cu.xyz", "-l", "emt", "-s", "t.h5"],
        {"t.h5": "x"},
        "t.h5",
    ),
    "label store truncated": (
        ["label", "{good}/cu.xyz", "-l", "emt", "-s", "cut.h5"],
        {"cut.h5": truncated},
        "cut.h5",
    ),
    "label cp2k command empty": (
        ["label", "{good}/start.xyz", "-l", "cp2k", "-s", "s.h5", "--command", ""],
        {},
        "command",
    ),
    "label xtb wrong method": (
        ["label", "{good}/start.xyz", "-l", "xtb", "-s", "s.h5", "--settings", "st.yaml"],
        {"st.yaml": "method: GFN9-xTB\n"},
        "GFN9-xTB",
    ),
}

ALL = {
    **{f"run: {k}": v for k, v in RUN_CASES.items()},
    **FILE_CASES,
    **STORE_CASES,
    **MODEL_CASES,
    **EXPLORE_CASES,
    **SELECT_CASES,
    **LABEL_CASES,
}


def test_there_are_enough_cases():
    assert len(ALL) >= 100


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("case", list(ALL), ids=list(ALL))
def test_bad_input(case, good, tmp_path, monkeypatch):
    # a case that slips through must not start a real campaign (processes, directories)
    monkeypatch.setattr("ubmd.campaign.validate.prepare_directory", never_start)
    args, files, expect = ALL[case]
    check(good, tmp_path, args, files, expect)
    assert not (tmp_path / "work" / "PWNED").exists()
