"""prefixgate: a cache-stable gateway for Anthropic-API agents."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The installed distribution's version (pyproject.toml's, for a wheel or an
    # editable install alike): one number for `prefixgate --version` and /healthz.
    __version__ = version("prefixgate")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
