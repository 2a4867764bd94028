"""Retry policy: on a failed calculation try again with changed settings, then record failure.

``label_with_retries`` never raises for a calculation failure: after the last attempt it returns
a ``LabelResult`` with ``status="failed"`` and the reason, so the structure is stored as failed
rather than silently dropped.  Setup errors (``LabelerSetupError``) still raise, before anything
runs.  Each attempt runs in its own subdirectory ``attempt_<n>`` of ``workdir``; logs are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms

from ubmd.keys import STATUS_FAILED
from ubmd.labelers.base import Labeler, LabelResult
from ubmd.labelers.errors import (
    FAILURE_REASONS,
    AbsurdForces,
    CalculationFailed,
)

_DEFAULT_RETRY_ON = tuple(r for r in FAILURE_REASONS if r != AbsurdForces.reason)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and on which failures to try again.

    ``change_settings``: use the labeler's ``retry_variant`` (e.g. CP2K: more SCF steps, the other
    solver, smearing; VASP: ALGO Normal -> All -> Damped with smaller mixing) for each new attempt;
    otherwise repeat the same settings.  Absurd forces are not retried by default: they usually
    mean a broken structure, not a numerical hiccup.
    """

    max_attempts: int = 3
    change_settings: bool = True
    retry_on: tuple[str, ...] = field(default=_DEFAULT_RETRY_ON)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        unknown = sorted(set(self.retry_on) - set(FAILURE_REASONS))
        if unknown:
            raise ValueError(f"unknown failure reasons {unknown}; known: {list(FAILURE_REASONS)}")


def label_with_retries(
    labeler: Labeler,
    atoms: Atoms,
    *,
    workdir: Path | str,
    policy: RetryPolicy | None = None,
) -> LabelResult:
    """Label ``atoms``, retrying per ``policy``; returns an ok or a failed ``LabelResult``."""
    policy = policy or RetryPolicy()
    labeler.check(atoms)  # setup errors raise here, before anything runs
    workdir = Path(workdir)
    current = labeler
    history: list[dict[str, object]] = []
    t0 = time.perf_counter()
    last_error: CalculationFailed | None = None
    attempt = 0
    for attempt in range(1, policy.max_attempts + 1):
        attempt_dir = workdir / f"attempt_{attempt}"
        try:
            result = current.label(atoms, workdir=attempt_dir)
        except CalculationFailed as exc:
            last_error = exc
            history.append(_attempt_record(attempt, exc, current, attempt_dir))
            if attempt == policy.max_attempts or exc.reason not in policy.retry_on:
                break
            if policy.change_settings:
                current = current.retry_variant(attempt + 1, exc) or current
            continue
        result.attempts = attempt
        result.wall_time_s = time.perf_counter() - t0
        result.extra["history"] = history
        result.extra["base_settings_hash"] = labeler.settings_hash()
        return result
    if last_error is None:  # unreachable: the loop runs at least once and ends only on failure
        raise RuntimeError("label_with_retries finished without a result or an error")
    return _failed_result(
        atoms,
        labeler=labeler,
        last_labeler=current,
        last_error=last_error,
        attempts=attempt,
        history=history,
        workdir=workdir,
        t0=t0,
    )


def _attempt_record(
    attempt: int, error: CalculationFailed, labeler: Labeler, attempt_dir: Path
) -> dict[str, object]:
    """What the history keeps of a failed attempt."""
    return {
        "attempt": attempt,
        "reason": error.reason,
        "message": error.message,
        "settings_hash": labeler.settings_hash(),
        "workdir": str(attempt_dir),
    }


def _failed_result(
    atoms: Atoms,
    *,
    labeler: Labeler,
    last_labeler: Labeler,
    last_error: CalculationFailed,
    attempts: int,
    history: list[dict[str, object]],
    workdir: Path,
    t0: float,
) -> LabelResult:
    """The failed label after the last attempt (``last_labeler``: its settings; ``labeler``:
    the first attempt's; ``t0``: ``time.perf_counter()`` at the start)."""
    atoms_copy = atoms.copy()
    atoms_copy.calc = None
    return LabelResult(
        atoms=atoms_copy,
        labeler=last_labeler.name,
        settings=last_labeler.settings_dict(),
        settings_hash=last_labeler.settings_hash(),
        status=STATUS_FAILED,
        reason=f"{last_error.describe()} (after {attempts} attempt{'s' if attempts > 1 else ''})",
        wall_time_s=time.perf_counter() - t0,
        attempts=attempts,
        workdir=workdir,
        extra={
            "history": history,
            "base_settings_hash": labeler.settings_hash(),
            "stdout_tail": last_error.stdout,
            "stderr_tail": last_error.stderr,
            "returncode": last_error.returncode,
        },
    )
