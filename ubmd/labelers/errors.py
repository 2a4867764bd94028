"""Error taxonomy of the labelers (after ASE's calculator errors).

``LabelerSetupError`` is raised by ``Labeler.check`` before anything runs: missing executable,
missing basis/potential file, an element the method cannot do, a structure that does not match a
topology.  ``CalculationFailed`` and its subclasses describe a run that started and did not give a
usable label; each carries the tails of stdout/stderr, the return code and the work directory
(the logs are kept there).  ``reason`` is a short machine-readable code stored with failed records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Self


class RunRecord(Protocol):
    """What a finished run tells about itself (``process.ProcessOutcome`` is one)."""

    returncode: int | None

    def stdout_tail(self) -> str: ...

    def stderr_tail(self) -> str: ...


class LabelerError(Exception):
    """Base class of every labeler error."""


class LabelerSetupError(LabelerError, ValueError):
    """The labeler cannot run on this structure with these settings; nothing was started."""


class CalculationFailed(LabelerError):
    """A calculation ran (or was started) and did not produce a usable label."""

    reason = "calculation_failed"

    def __init__(
        self,
        message: str,
        *,
        stdout: str = "",
        stderr: str = "",
        returncode: int | None = None,
        workdir: Path | str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = returncode
        self.workdir = Path(workdir) if workdir is not None else None

    def with_run(self, run: RunRecord, workdir: Path | str) -> Self:
        """Attach ``run``'s stdout/stderr tails and return code, and the work directory.

        Returns the error itself, for ``raise SCFNotConverged(msg).with_run(outcome, workdir)``.
        """
        self.stdout = run.stdout_tail()
        self.stderr = run.stderr_tail()
        self.returncode = run.returncode
        self.workdir = Path(workdir)
        return self

    def describe(self) -> str:
        """One line: ``reason: message`` (what a failed record stores)."""
        return f"{self.reason}: {self.message}"


class SCFNotConverged(CalculationFailed):
    """The electronic self-consistency did not converge within the allowed iterations."""

    reason = "scf_not_converged"


class ProgramCrashed(CalculationFailed):
    """The program exited with a non-zero status or did not terminate normally."""

    reason = "program_crashed"


class TimeLimitExceeded(CalculationFailed):
    """The run exceeded its time limit and its whole process group was killed."""

    reason = "time_limit_exceeded"


class OutputUnreadable(CalculationFailed):
    """The output is missing, truncated or cannot be parsed."""

    reason = "output_unreadable"


class MissingForces(CalculationFailed):
    """The run finished but printed no forces (or not one per atom)."""

    reason = "missing_forces"


class AbsurdForces(CalculationFailed):
    """A force component is not finite or its magnitude is above the configured bound."""

    reason = "absurd_forces"


FAILURE_REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        SCFNotConverged,
        ProgramCrashed,
        TimeLimitExceeded,
        OutputUnreadable,
        MissingForces,
        AbsurdForces,
    )
)
