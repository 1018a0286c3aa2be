"""Helpers shared by tests (importable as tests.helpers)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_module(path: str):
    """Imports a config file given relative to the repository root."""
    full = os.path.join(ROOT, path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file given relative to the repository root."""
    return config_module(path).get_config(arg)
