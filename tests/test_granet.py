"""GraNet (rigl.GraNet): gradual pruning with zero-cost neuroregeneration (rigl/granet.py),
and checkpoint-resume of the new updaters (SRigL, GraNet)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import rigl
from rigl.distributions import num_zeros


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, name="h"),
                             keras.layers.Dense(3, name="o")])


def compiled(model):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)).astype("float32")
    return x, x[:, :3].argmax(1).astype("int64")


def test_worked_example_global_prune_then_regenerate():
    """a (4 -> 1) and b (1 -> 2), N = 6, s = 0.5 at end_step: keep 3 by |w| over both layers
    (0.9, 0.5 of a; 0.3 of b). Regeneration r = 0.5: a drops ceil(0.5·2) = 1 (0.5) and grows
    1 by |g| (row 3, 0.6); b drops ceil(0.5·1) = 1 (0.3) and grows column 1 (0.7). Row 3 of a
    and column 1 of b were active before: they come back with their weights."""
    inputs = keras.Input((4,))
    a = rigl.MaskedDense(1, use_bias=False, name="a")(inputs)
    model = keras.Model(inputs, rigl.MaskedDense(2, use_bias=False, name="b")(a))
    layer_a, layer_b = model.get_layer("a"), model.get_layer("b")
    layer_a.masked_kernel.assign(np.array([[0.9], [0.1], [0.5], [0.2]], np.float32))
    layer_b.masked_kernel.assign(np.array([[0.3, -0.05]], np.float32))
    updater = rigl.GraNet(sparsity=0.5, update_freq=1, end_step=1, drop_fraction=0.5,
                          drop_fraction_decay="constant").bind(model, keras.optimizers.SGD())
    assert updater.scheduled_count(1) == 3
    grads = [tf.constant([[0.0], [0.4], [-0.1], [0.6]]), tf.constant([[0.2, -0.7]])]
    result = updater.update(1, gradients=grads)
    np.testing.assert_array_equal(layer_a.mask.numpy().ravel(), [1, 0, 0, 1])
    np.testing.assert_array_equal(layer_b.mask.numpy().ravel(), [0, 1])
    np.testing.assert_array_equal(layer_a.masked_kernel.numpy().ravel(),
                                  np.array([0.9, 0, 0, 0.2], np.float32))
    np.testing.assert_array_equal(layer_b.masked_kernel.numpy().ravel(),
                                  np.array([0, -0.05], np.float32))
    assert result.changed == {"a": 0, "b": 0}


@pytest.mark.parametrize("scope, distribution, initial", [
    ("global", "uniform", 0.0), ("layer", "erk", 0.0), ("global", "erk", 0.5)])
def test_counts_follow_the_schedule_and_regrowth_keeps_them(scope, distribution, initial):
    model = compiled(rigl.sparsify(mlp(), initial, distribution))
    updater = rigl.GraNet(sparsity=0.9, distribution=distribution, initial_sparsity=initial,
                          pruning_scope=scope, update_freq=5, begin_step=2, end_step=33)
    updater.bind(model)
    x, y = batch()
    done = []
    for step in range(40):
        before = rigl.get_masks(model)
        result = updater.maybe_update(step, batch=(x, y))
        masks = rigl.get_masks(model)
        if result is None:
            continue
        done.append(step)
        counts = {name: int(mask.sum()) for name, mask in masks.items()}
        if scope == "global":
            assert sum(counts.values()) == min(updater.scheduled_count(step),
                                               sum(int(m.sum()) for m in before.values()))
        else:
            for name in counts:
                assert counts[name] == updater.scheduled_count(step, name), (name, step)
        model.train_on_batch(x, y)
    assert done == [2, 7, 12, 17, 22, 27, 32, 33]
    masks = rigl.get_masks(model)
    size = sum(m.size for m in masks.values())
    if scope == "global":
        assert sum(int(m.sum()) for m in masks.values()) == size - num_zeros(0.9, size)
    else:
        for name, mask in masks.items():
            target = updater.target_sparsities[name]
            assert (mask == 0).sum() == num_zeros(target, mask.size)


def test_regrowth_alone_never_changes_counts():
    """At initial = final sparsity the pruning is a no-op: only regeneration moves weights."""
    model = compiled(rigl.sparsify(mlp(), 0.8))
    counts = {name: int(m.sum()) for name, m in rigl.get_masks(model).items()}
    updater = rigl.GraNet(sparsity=0.8, initial_sparsity=0.8, pruning_scope="layer",
                          update_freq=1, end_step=10, drop_fraction=0.5).bind(model)
    moved = 0
    for step in range(5):
        result = updater.update(step, batch=batch(seed=step))
        moved += sum(result.changed.values())
        assert {name: int(m.sum()) for name, m in rigl.get_masks(model).items()} == counts
    assert moved > 0


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="initial_sparsity: must be <= sparsity"):
        rigl.GraNet(sparsity=0.5, initial_sparsity=0.8)
    with pytest.raises(ValueError, match="pruning_scope: unknown 'net'"):
        rigl.GraNet(sparsity=0.5, pruning_scope="net")
    with pytest.raises(ValueError, match="distribution"):
        rigl.GraNet(sparsity=0.5, distribution="nope")
    with pytest.raises(ValueError, match="sparsity"):
        rigl.GraNet(sparsity=1.5)
    with pytest.raises(ValueError, match="gamma_sal: GraNet does not take it"):
        rigl.get_updater("granet", sparsity=0.9, gamma_sal=0.3)
    with pytest.raises(ValueError, match="grow_init: GraNet does not take it"):
        rigl.get_updater("granet", sparsity=0.9, grow_init="zeros")


@pytest.mark.parametrize("make", [
    lambda: rigl.GraNet(sparsity=0.9, update_freq=4, end_step=30),
    lambda: rigl.SRigL(sparsity=0.8, update_freq=4, end_step=30, gamma_sal=0.5),
], ids=["granet", "srigl"])
def test_checkpoint_resume_equals_uninterrupted(make, tmp_path):
    """Masks, weights and slots restored from a tf.train.Checkpoint, a new updater bound to
    them: the rest of the run matches a run never interrupted (updater state is the masks)."""
    sparsity = 0.0 if make().name == "granet" else 0.8
    x, y = batch(n=320)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32)]

    def run(model, updater, steps):
        for step in steps:
            updater.maybe_update(step, batch=batches[step % 10])
            model.train_on_batch(*batches[step % 10])

    straight = compiled(rigl.sparsify(mlp(), sparsity))
    straight_updater = make().bind(straight)
    run(straight, straight_updater, range(24))

    first = compiled(rigl.sparsify(mlp(), sparsity))
    first_updater = make().bind(first)
    run(first, first_updater, range(10))
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).save(tmp_path / "ckpt")
    resumed = compiled(rigl.sparsify(mlp(seed=5), sparsity))
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path)
    run(resumed, make().bind(resumed), range(10, 24))
    for name, mask in rigl.get_masks(straight).items():
        np.testing.assert_array_equal(mask, rigl.get_masks(resumed)[name], err_msg=name)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
