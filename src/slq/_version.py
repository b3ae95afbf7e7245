"""slq's version, in a module of its own so that no module imports it back from the package."""

__version__ = "0.1.0"
