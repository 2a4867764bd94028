"""The site configs shipped with ubmd, installed as the data package ``ubmd.site_configs``.

This folder stays at the top of the repository, where users copy the examples from;
pyproject.toml maps it into the package so that a wheel carries it too. Read it with
:func:`ubmd.pipeline.sites.site_dir`.
"""
