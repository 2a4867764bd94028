"""ubmd: uncertainty-biased active learning of machine-learned interatomic potentials.

The library core (everything except :mod:`ubmd.pipeline`) never imports parsl.
Nothing heavy is imported here so that ``ubmd --help`` and ``import ubmd`` stay fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ubmd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
