"""Bundled data of samliver's weights store: ``manifest.json`` (known checkpoints, their
sources and digests) and the small checkpoints shipped with the package.

Installed as package data (see ``package-dir`` in pyproject.toml); the store's code is
``samliver/weights_store.py``, which finds this folder by path.
"""
