"""rigl: dynamic sparse training for TensorFlow 2 / Keras 3.

A reproduction of "Rigging the Lottery: Making All Tickets Winners" (Evci, Gale, Menick,
Castro, Elsen, ICML 2020, https://arxiv.org/abs/1911.11134).

    model = rigl.sparsify(model, 0.9, "erk")
    model.compile(...)
    model.fit(ds, callbacks=[rigl.SparseTraining(rigl.RigL(), data=ds)])
"""

from rigl import flops
from rigl.callbacks import SparseTraining
from rigl.distributions import DISTRIBUTIONS, layer_sparsities

# Registers the experiments' learning-rate schedule, so that models saved by
# scripts/train.py load with keras.saving.load_model after `import rigl`.
from rigl.experiments import optim as _optim  # noqa: E402,F401
from rigl.layers import MaskedConv2D, MaskedDense, MaskedDepthwiseConv2D, MaskedGRU
from rigl.masking import (
    get_masks,
    masked_layers,
    masked_weights,
    measured_sparsities,
    sparsify,
    strip,
    total_sparsity,
)
from rigl.updaters import (
    SET,
    SNFS,
    SNIP,
    UPDATERS,
    GradualPruning,
    RigL,
    Static,
    Updater,
    UpdateResult,
    drop_and_grow,
    get_updater,
)

__version__ = "0.1.0"

__all__ = [
    "DISTRIBUTIONS",
    "GradualPruning",
    "MaskedConv2D",
    "MaskedDense",
    "MaskedDepthwiseConv2D",
    "MaskedGRU",
    "RigL",
    "SET",
    "SNFS",
    "SNIP",
    "SparseTraining",
    "Static",
    "UPDATERS",
    "UpdateResult",
    "Updater",
    "drop_and_grow",
    "flops",
    "get_masks",
    "get_updater",
    "layer_sparsities",
    "masked_layers",
    "masked_weights",
    "measured_sparsities",
    "sparsify",
    "strip",
    "total_sparsity",
]
