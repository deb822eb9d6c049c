"""batchwarden: runs LLM batch jobs to completion, reliably, across replicas."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchwarden")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
