"""The command-line front end: ``ovms-bench`` (OVMS benchmark client flags) and its subcommands."""

__version__ = "0.1.0"
