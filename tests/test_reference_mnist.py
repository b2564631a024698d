"""Options that follow the reference's TF1 RigL (google-research/rigl sparse_optimizers.py):
``training.mask_update_skips_step`` and ``RigL(drop_noise_std=...)``."""

import glob
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

import rigl
from rigl.experiments import training, workdir
from rigl.experiments.errors import UsageError

BASE_CONFIG = os.path.join(ROOT, "gin_configs", "mnist_lenet300.gin")


def _run(path, data_dir, bindings):
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [BASE_CONFIG], [f"dataset.data_dir={data_dir!r}", "training.verbose=0", *bindings])
    try:
        if path is None:
            return training.train(None, dry_run=True)
        return training.train(str(path))
    finally:
        gin.clear_config()


# ------------------------------------------------------------ mask_update_skips_step
@pytest.mark.parametrize("step, expected", [(0, 0), (1, 1), (20, 1), (21, 2), (40, 2),
                                            (41, 3), (80, 3)])
def test_updates_before_counts_the_updates_at_earlier_steps(step, expected):
    # Updates at 0, 20 and 40.
    assert training.updates_before(rigl.RigL(update_freq=20, end_step=40), 80, step) == expected


def test_updates_before_resolves_the_default_end_step():
    # end_step defaults to 75% of 100 steps: updates at 0, 25, 50, 75.
    assert training.updates_before(rigl.RigL(update_freq=25), 100, 100) == 4
    assert training.updates_before(rigl.Static(), 100, 100) == 0


SKIPS = ["training.epochs=None", "training.train_steps=80", "updater.update_freq=20",
         "updater.end_step=40", "learning_rate.schedule='constant'",
         "training.checkpoint_every_steps=40", "training.deterministic=True",
         "training.mask_update_skips_step=True"]


def _weights(path):
    return keras.saving.load_model(os.path.join(path, "model.keras")).get_weights()


# Slow (four short runs: ~1.5 min of CPU).
@pytest.mark.slow
def test_skipping_run_resumes_on_the_batches_it_would_have_read(data_dir, tmp_path):
    """A run resumed from step 40 (after the updates at 0 and 20 spent a batch each) must read
    on from batch 42, as the uninterrupted run did: the same weights at the end."""
    straight = _run(tmp_path / "straight", data_dir, SKIPS)
    assert straight["steps"] == 80
    resumed = tmp_path / "resumed"
    _run(resumed, data_dir, SKIPS)
    # Forget everything after the checkpoint of step 40, as a kill just after it would.
    for name in glob.glob(str(resumed / "checkpoints" / "ckpt-80*")):
        os.remove(name)
    os.remove(resumed / "checkpoints" / "checkpoint")
    os.remove(resumed / "results.json")
    _run(resumed, data_dir, SKIPS)
    for a, b in zip(_weights(tmp_path / "straight"), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Without the option the updates share their step's batch: other weights.
    _run(tmp_path / "shared", data_dir, [*SKIPS[:-1], "training.mask_update_skips_step=False"])
    assert any(not np.allclose(a, b) for a, b in
               zip(_weights(tmp_path / "straight"), _weights(tmp_path / "shared")))


@pytest.mark.parametrize("method", ["set", "dense"])
def test_skips_step_needs_a_gradient_update(method):
    with pytest.raises(UsageError, match="training.mask_update_skips_step: method"):
        _run(None, "/nowhere", [f"training.method={method!r}",
                                "training.mask_update_skips_step=True"])


def test_skips_step_refuses_gradient_accumulation():
    with pytest.raises(UsageError, match="training.mask_update_skips_step: .*"
                                         "grad_accumulation_n = 2"):
        _run(None, "/nowhere", ["updater.grad_accumulation_n=2",
                                "training.mask_update_skips_step=True"])


def test_runs_from_before_the_options_resume(tmp_path):
    run = str(tmp_path)
    workdir.write_identity(run, {"training.seed": 0, "rigl/updater.update_freq": 100})
    same = {"training.seed": 0, "rigl/updater.update_freq": 100,
            "training.mask_update_skips_step": False, "rigl/updater.drop_noise_std": 0.0}
    assert workdir.check_identity(run, same) == "same"
    with pytest.raises(UsageError, match="rigl/updater.drop_noise_std: 0 -> 1e-05"):
        workdir.check_identity(run, {**same, "rigl/updater.drop_noise_std": 1e-5})


# ------------------------------------------------------------------- drop_noise_std
def _view(weights, step=100, name="fc1"):
    weights = tf.constant(weights, tf.float32)
    return rigl.updaters.LayerView(index=0, name=name, weights=weights,
                                   mask=tf.not_equal(weights, 0), step=tf.constant(step, tf.int64))


def test_drop_scores_without_noise_are_magnitudes():
    w = np.array([[0.5, -0.25], [0.0, -1.0]], np.float32)
    np.testing.assert_array_equal(rigl.RigL().drop_scores(_view(w)), np.abs(w))


def test_drop_noise_is_normal_and_seeded_by_seed_layer_and_step():
    w = np.zeros((200, 100), np.float32)
    updater = rigl.RigL(drop_noise_std=1e-5, seed=3)
    noise = updater.drop_scores(_view(w)).numpy()
    assert 0.9e-5 < noise.std() < 1.1e-5 and abs(noise.mean()) < 1e-7
    np.testing.assert_array_equal(noise, updater.drop_scores(_view(w)))  # the same draw
    for other in (updater.drop_scores(_view(w, step=200)),
                  updater.drop_scores(_view(w, name="fc2")),
                  rigl.RigL(drop_noise_std=1e-5, seed=4).drop_scores(_view(w))):
        assert not np.array_equal(noise, other)


def test_drop_noise_reorders_only_near_ties():
    """Noise of 1e-5 breaks ties (here by position without it) and leaves other orders."""
    w = np.array([0.5, 0.3, 0.3, 0.3, 0.3, 0.1], np.float32).reshape(1, 6)
    scores = rigl.RigL(drop_noise_std=1e-5).drop_scores(_view(w)).numpy().ravel()
    assert scores[0] > scores[1:5].max() and scores[1:5].min() > scores[5]
    assert len(set(scores[1:5].tolist())) == 4


def test_drop_noise_std_is_checked_and_rigl_only():
    with pytest.raises(ValueError, match="drop_noise_std: must be a number"):
        rigl.RigL(drop_noise_std=-1.0)
    with pytest.raises(ValueError, match="drop_noise_std: SET does not take it"):
        rigl.get_updater("set", drop_noise_std=1e-5)
    assert rigl.get_updater("rigl", drop_noise_std=1e-5).drop_noise_std == 1e-5


def test_drop_noise_binding_reaches_rigl_and_is_checked_in_a_dry_run():
    from rigl.experiments import config as run_config

    gin.clear_config()
    try:
        gin.parse_config(["updater.drop_noise_std = 1e-5"])
        with gin.config_scope("rigl"):
            updater = run_config.make_updater("rigl", 0.9, "uniform", None, 1.0, 0)
    finally:
        gin.clear_config()
    assert updater.drop_noise_std == 1e-5
    with pytest.raises(UsageError, match="updater.drop_noise_std: must be a number"):
        _run(None, "/nowhere", ["updater.drop_noise_std=-1e-5"])
    with pytest.raises(UsageError, match="training.mask_update_skips_step: expected True"):
        _run(None, "/nowhere", ["training.mask_update_skips_step=1"])
