"""The package's version and distribution name (a leaf module: anything may import it)."""

__version__ = "0.1.0"

#: The distribution name on the package index (the import name and the CLI stay ``edgekit``:
#: the index's ``edgekit`` is an unrelated project).
DIST_NAME = "edgekit-toolchain"
