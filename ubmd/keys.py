"""Property names shared by models, store, explorers, selectors and labelers.

One constant per property, with its shape and unit. Shapes use
``S`` = number of structures, ``A`` = total number of atoms over all structures,
``K`` = feature dimension, ``M`` = ensemble members.

ASE units everywhere: Å, eV, eV/Å, eV/Å^3. Stress is in ASE Voigt order
(xx, yy, zz, yz, xz, xy); positive means tensile (ASE's sign, the opposite of VASP's kB).

Flat ("ragged") batches concatenate the atoms of all structures; ``BATCH`` maps
each atom to its structure and ``N_ATOMS`` gives the per-structure counts, so the
atoms of structure ``s`` are ``offsets[s]:offsets[s] + n_atoms[s]`` with
``offsets = concatenate([[0], cumsum(n_atoms)[:-1]])``.
"""

# --- structure (per atom) ---------------------------------------------------------
NUMBERS = "numbers"  # (A,) int: atomic numbers
POSITIONS = "positions"  # (A, 3) float: Cartesian positions, Å
BATCH = "batch"  # (A,) int64: index of the structure each atom belongs to

# --- structure (per structure) ----------------------------------------------------
N_ATOMS = "n_atoms"  # (S,) int: atoms per structure
CELL = "cell"  # (S, 3, 3) float: lattice vectors as rows, Å (zeros where undefined)
PBC = "pbc"  # (S, 3) bool: periodic directions

# --- labels -----------------------------------------------------------------------
ENERGY = "energy"  # (S,) float: total potential energy, eV
FREE_ENERGY = "free_energy"  # (S,) float: Mermin free energy where the code gives one, eV
FORCES = "forces"  # (A, 3) float: eV/Å
STRESS = "stress"  # (S, 6) float: ASE Voigt, eV/Å^3 (NaN rows where HAS_STRESS is False)
# ASE's Voigt order xx, yy, zz, yz, xz, xy: the (row, column) of each component in a 3x3 tensor
VOIGT_ROWS = (0, 1, 2, 1, 0, 0)
VOIGT_COLS = (0, 1, 2, 2, 2, 1)
HAS_STRESS = "has_stress"  # (S,) bool: whether STRESS holds a label
ATOMIC_ENERGIES = "atomic_energies"  # (A,) float: per-atom energy contributions, eV

# --- model outputs: features and uncertainties ------------------------------------
ATOMIC_FEATURES = "atomic_features"  # (A, K) float: per-atom gradient/last-layer features
FEATURES = "features"  # (S, K) float: structure features, mean of atomic features
LATENT = "latent"  # (A, L) float: per-atom latent features (GMM input)
UNCERTAINTY = "uncertainty"  # (S,) float: raw total uncertainty (method units)
ATOMIC_UNCERTAINTY = "atomic_uncertainty"  # (A,) float: raw atom-based uncertainty
# Calibrated (conformal) uncertainties carry the residual's unit:
CALIBRATED_UNCERTAINTY = "calibrated_uncertainty"  # (S,) float: eV/atom (|ΔE|/N)
CALIBRATED_ATOMIC_UNCERTAINTY = "calibrated_atomic_uncertainty"  # (A,) float: eV/Å
ENSEMBLE_ENERGY = "ensemble_energy"  # (M, S) float: member energies, eV
ENSEMBLE_FORCES = "ensemble_forces"  # (M, A, 3) float: member forces, eV/Å

# --- MD / exploration -------------------------------------------------------------
VELOCITIES = "velocities"  # (A, 3) float: Å/fs
MASSES = "masses"  # (A,) float: amu
TEMPERATURE_K = "temperature_K"  # (S,) float: instantaneous or target temperature, K
PRESSURE_EV_A3 = "pressure_eV_A3"  # (S,) float: instantaneous pressure, eV/Å^3
BIAS_STRENGTH = "bias_strength"  # (S,) float: effective force-bias strength tau_eff
BIAS_STRESS_STRENGTH = "bias_stress_strength"  # (S,) float: effective stress-bias strength
MD_STEP = "md_step"  # (S,) int: MD step of the frame
REPLICA = "replica"  # (S,) int: replica index inside an explorer
EXPLORER = "explorer"  # (S,) int: explorer index inside an iteration
STOP_REASON = "stop_reason"  # (S,) str: why the replica stopped ("" while running)
SAMPLER = "sampler"  # (S,) str: "biased_md", "md", "adversarial", "uncertainty_cv", ...

# --- provenance (per structure, in the store) -------------------------------------
CAMPAIGN_ID = "campaign_id"  # (S,) str
ITERATION = "iteration"  # (S,) int: active-learning iteration (-1: initial data / import)
SELECTION_UNCERTAINTY = "selection_uncertainty"  # (S,) float: uncertainty when selected
SELECTION_METHOD = "selection_method"  # (S,) str: "max_det", "random", ... ("" if none)
LABELER = "labeler"  # (S,) str: reference code name, e.g. "cp2k", "xtb", "emt"
LABELER_HASH = "labeler_hash"  # (S,) str: hash of the labeler's settings
STATUS = "status"  # (S,) str: "ok" or "failed"
REASON = "reason"  # (S,) str: failure reason ("" when ok)
WALL_TIME_S = "wall_time_s"  # (S,) float: labeling wall time, s
CREATED_AT = "created_at"  # (S,) float: UNIX time the record was committed, s

STATUS_OK = "ok"
STATUS_FAILED = "failed"
