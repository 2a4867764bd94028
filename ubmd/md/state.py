"""The batched MD state: R replicas (possibly different systems) as flat tensors.

Per-atom tensors concatenate the atoms of all replicas (``keys`` ragged convention);
per-replica tensors have R rows. Every replica owns its random generator and its
adaptive-bias window, so a replica's trajectory does not depend on which other
replicas share the batch.

Internal units are ASE's: Å, eV, amu, and ASE time (``ase.units.fs`` per fs), so
velocities are Å per ASE time unit, like ``Atoms.get_velocities()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms, units

ATOM = {"per": "atom"}
REPLICA = {"per": "replica"}
LIST = {"per": "list"}
DTYPES = {"float64": torch.float64, "float32": torch.float32}  # the names configs take


def dtype_from_name(name: str) -> torch.dtype:
    """The float dtype a config names ("float64" or "float32")."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} not one of {list(DTYPES)}")
    return DTYPES[name]


@dataclass
class MDState:
    """Tensors of a batch of replicas (see module docstring for units)."""

    positions: torch.Tensor = field(metadata=ATOM)  # (A, 3) Å
    velocities: torch.Tensor = field(metadata=ATOM)  # (A, 3) Å / ASE time
    masses: torch.Tensor = field(metadata=ATOM)  # (A,) amu
    numbers: torch.Tensor = field(metadata=ATOM)  # (A,) int64
    forces: torch.Tensor = field(metadata=ATOM)  # (A, 3) eV/Å, total (biased) force
    cell: torch.Tensor = field(metadata=REPLICA)  # (R, 3, 3) Å, rows are lattice vectors
    pbc: torch.Tensor = field(metadata=REPLICA)  # (R, 3) bool
    n_atoms: torch.Tensor = field(metadata=REPLICA)  # (R,) int64
    step: torch.Tensor = field(metadata=REPLICA)  # (R,) int64: steps done by each replica
    replica_id: torch.Tensor = field(metadata=REPLICA)  # (R,) int64: stable replica label
    energy: torch.Tensor = field(metadata=REPLICA)  # (R,) eV, model energy (unbiased)
    stress: torch.Tensor = field(metadata=REPLICA)  # (R, 3, 3) eV/Å^3, total (biased), ASE sign
    # Adaptive bias: rolling sums of squared norms over the last W steps, per replica.
    win_f2: torch.Tensor = field(metadata=REPLICA)  # (R, W) ||F_E||^2
    win_g2: torch.Tensor = field(metadata=REPLICA)  # (R, W) ||w du/dr||^2
    win_s2: torch.Tensor = field(metadata=REPLICA)  # (R, W) ||sigma_E||^2
    win_gs2: torch.Tensor = field(metadata=REPLICA)  # (R, W) ||(1/V) du/deps||^2
    generators: list[torch.Generator] = field(metadata=LIST)
    batch: torch.Tensor = field(init=False)  # (A,) int64, derived from n_atoms

    def __post_init__(self) -> None:
        self.batch = batch_index(self.n_atoms)

    @property
    def n_replicas(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    @property
    def volume(self) -> torch.Tensor:
        """(R,) Å^3 (zero for cell-less replicas)."""
        return torch.linalg.det(self.cell).abs()

    def kinetic_energy(self) -> torch.Tensor:
        """(R,) eV."""
        ke_atom = 0.5 * self.masses * (self.velocities**2).sum(-1)
        return segment_sum(ke_atom, self.batch, self.n_replicas)

    def temperature(self) -> torch.Tensor:
        """(R,) K, instantaneous, from 3N degrees of freedom."""
        return 2.0 * self.kinetic_energy() / (3.0 * self.n_atoms.to(self.dtype) * units.kB)

    def kinetic_tensor(self) -> torch.Tensor:
        """(R, 3, 3) eV: sum_i m_i v_i v_i^T."""
        mvv = self.masses[:, None, None] * self.velocities[:, :, None] * self.velocities[:, None]
        out = torch.zeros(self.n_replicas, 3, 3, dtype=self.dtype, device=self.device)
        return out.index_add_(0, self.batch, mvv)

    def pressure_tensor(self) -> torch.Tensor:
        """(R, 3, 3) eV/Å^3: kinetic part minus the (biased) stress (ASE sign convention)."""
        vol = self.volume.clamp_min(1e-12)
        return self.kinetic_tensor() / vol[:, None, None] - self.stress

    def pressure(self) -> torch.Tensor:
        """(R,) eV/Å^3, instantaneous, including the kinetic term."""
        return torch.diagonal(self.pressure_tensor(), dim1=1, dim2=2).mean(-1)

    def atom_slice(self, r: int) -> slice:
        start = int(self.n_atoms[:r].sum())
        return slice(start, start + int(self.n_atoms[r]))


def batch_index(n_atoms: torch.Tensor) -> torch.Tensor:
    """(A,) replica index of each atom."""
    r = torch.arange(n_atoms.shape[0], device=n_atoms.device)
    return torch.repeat_interleave(r, n_atoms)


def segment_sum(values: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """Sum per-atom values (A, ...) into (n, ...) by replica."""
    out = torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, batch, values)


def replica_seed(seed: int, replica: int) -> int:
    """A well-mixed 63-bit seed per (run seed, replica id)."""
    state = np.random.SeedSequence([int(seed), int(replica)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def make_state(
    structures: Sequence[Atoms],
    *,
    replica_ids: Sequence[int] | None = None,
    seed: int = 0,
    temperature_K: float | None = None,
    window: int = 100,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> MDState:
    """Build a state from ASE structures.

    Velocities: drawn from Maxwell-Boltzmann at ``temperature_K`` (each replica from its
    own generator, centre-of-mass motion removed) or, when ``temperature_K`` is None,
    taken from the structures (``Atoms.get_velocities()``). Forces, energy and stress are
    zero until the first evaluation (see :func:`ubmd.md.integrators.initialize`).
    """
    if len(structures) == 0:
        raise ValueError("make_state needs at least one structure, got an empty list")
    if temperature_K is not None and temperature_K <= 0:
        raise ValueError(f"temperature_K must be > 0 to draw velocities, got {temperature_K}")
    if window < 1:
        raise ValueError(f"bias window must be >= 1 step, got {window}")
    ids = list(range(len(structures))) if replica_ids is None else [int(i) for i in replica_ids]
    if len(ids) != len(structures):
        raise ValueError(f"{len(ids)} replica ids for {len(structures)} structures")
    device = torch.device(device)
    gens, vel = [], []
    for atoms, rid in zip(structures, ids, strict=True):
        if len(atoms) == 0:
            raise ValueError(f"structure for replica {rid} has no atoms")
        g = torch.Generator(device=device)
        g.manual_seed(replica_seed(seed, rid))
        gens.append(g)
        vel.append(_velocities(atoms, g, temperature_K, dtype=dtype, device=device))
    cat = torch.cat
    n = torch.tensor([len(a) for a in structures], dtype=torch.long, device=device)
    R = len(structures)
    zeros_w = torch.zeros(R, window, dtype=dtype, device=device)
    return MDState(
        positions=cat([torch.as_tensor(a.positions, dtype=dtype) for a in structures]).to(device),
        velocities=cat(vel),
        masses=cat([torch.as_tensor(a.get_masses(), dtype=dtype) for a in structures]).to(device),
        numbers=cat([torch.as_tensor(a.numbers, dtype=torch.long) for a in structures]).to(device),
        forces=torch.zeros(int(n.sum()), 3, dtype=dtype, device=device),
        cell=torch.stack([torch.as_tensor(a.cell.array, dtype=dtype) for a in structures]).to(
            device
        ),
        pbc=torch.stack([torch.as_tensor(a.pbc, dtype=torch.bool) for a in structures]).to(device),
        n_atoms=n,
        step=torch.zeros(R, dtype=torch.long, device=device),
        replica_id=torch.tensor(ids, dtype=torch.long, device=device),
        energy=torch.zeros(R, dtype=dtype, device=device),
        stress=torch.zeros(R, 3, 3, dtype=dtype, device=device),
        win_f2=zeros_w,
        win_g2=zeros_w.clone(),
        win_s2=zeros_w.clone(),
        win_gs2=zeros_w.clone(),
        generators=gens,
    )


def _velocities(
    atoms: Atoms, g: torch.Generator, temperature_K: float | None, *, dtype, device
) -> torch.Tensor:
    """Maxwell-Boltzmann from the replica's generator (no centre-of-mass drift), or the
    structure's own velocities when ``temperature_K`` is None."""
    if temperature_K is None:
        return torch.as_tensor(atoms.get_velocities(), dtype=dtype, device=device)
    m = torch.as_tensor(atoms.get_masses(), dtype=dtype, device=device)
    v = torch.randn(len(atoms), 3, generator=g, dtype=dtype, device=device)
    v = v * torch.sqrt(units.kB * temperature_K / m)[:, None]
    p_com = (m[:, None] * v).sum(0) / m.sum()
    return v - p_com if len(atoms) > 1 else v


def select_replicas(state: MDState, keep: Sequence[int]) -> MDState:
    """A new state holding replicas ``keep`` (in that order)."""
    keep = [int(k) for k in keep]
    idx = torch.tensor(keep, dtype=torch.long, device=state.device)
    atom_idx = (
        torch.cat([torch.arange(state.atom_slice(k).start, state.atom_slice(k).stop) for k in keep])
        if keep
        else torch.zeros(0, dtype=torch.long)
    ).to(state.device)
    kw = {}
    for f in dataclasses.fields(state):
        if not f.init:
            continue
        val = getattr(state, f.name)
        per = f.metadata["per"]
        if per == "atom":
            kw[f.name] = val[atom_idx]
        elif per == "replica":
            kw[f.name] = val[idx]
        else:
            kw[f.name] = [val[k] for k in keep]
    return MDState(**kw)


def concat_states(states: Sequence[MDState]) -> MDState:
    """Concatenate batches (replica order preserved)."""
    kw = {}
    for f in dataclasses.fields(MDState):
        if not f.init:
            continue
        vals = [getattr(s, f.name) for s in states]
        kw[f.name] = (
            [g for v in vals for g in v] if f.metadata["per"] == "list" else torch.cat(vals)
        )
    return MDState(**kw)


def state_to_atoms(state: MDState, r: int) -> Atoms:
    """The current structure of replica ``r`` as ASE Atoms (with velocities)."""
    s = state.atom_slice(r)
    atoms = Atoms(
        numbers=state.numbers[s].cpu().numpy(),
        positions=state.positions[s].detach().cpu().numpy(),
        cell=state.cell[r].detach().cpu().numpy(),
        pbc=state.pbc[r].cpu().numpy(),
        masses=state.masses[s].cpu().numpy(),
    )
    atoms.set_velocities(state.velocities[s].detach().cpu().numpy())
    return atoms
