"""Shared pytest setup: quiet TensorFlow's C++ logging before it is imported."""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with MNIST and tiny-shakespeare prepared offline from ../shared/data.

    ``RIGL_TEST_DATA_DIR`` reuses a folder across runs; ``RIGL_REQUIRE_SHARED_DATA`` (set by
    CI) turns a missing ../shared/data into a failure instead of a skip.
    """
    from rigl.experiments import prepare

    if not os.path.isdir(SHARED):
        if os.environ.get("RIGL_REQUIRE_SHARED_DATA"):
            pytest.fail(f"{SHARED} is missing (RIGL_REQUIRE_SHARED_DATA is set)")
        pytest.skip(f"{SHARED} is missing")
    path = os.environ.get("RIGL_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
    for name in ("mnist", "tiny_shakespeare"):
        prepare.prepare(name, os.path.join(SHARED, name), path)
    return path


@contextlib.contextmanager
def script_module(path: str, name: str):
    """Imports a script of scripts/ as a module, and removes the absl flags it defined when
    done: two scripts may define flags of the same name (--sparsity), and FLAGS is global."""
    import importlib.util

    from absl import flags

    before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)


def train_gin(configs, bindings=(), workdir=None, dry_run=False):
    """``training.train`` under gin ``configs`` and ``bindings`` (quiet), from the repository
    root (configs include each other by repository-relative paths); gin cleared after."""
    import gin

    from rigl.experiments import training

    gin.clear_config()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        gin.parse_config_files_and_bindings(list(configs), ["training.verbose=0", *bindings])
        return training.train(str(workdir) if workdir else None, dry_run=dry_run)
    finally:
        os.chdir(cwd)
        gin.clear_config()
