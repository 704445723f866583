"""The package's version, in a module of its own: the CLI and the build read it without importing the
whole public API."""

__version__ = "0.1.0.dev0"
