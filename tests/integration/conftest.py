"""Fixtures shared by the integration tests of the command line (``cli_env``)."""

from integration.cli_env import env

__all__ = ["env"]
