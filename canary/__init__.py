"""canary: decides, with evidence, whether a canary version may take more traffic."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("canary")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
