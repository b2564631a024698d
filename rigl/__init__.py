"""rigl: dynamic sparse training for TensorFlow 2 / Keras 3.

A reproduction of "Rigging the Lottery: Making All Tickets Winners" (Evci, Gale, Menick,
Castro, Elsen, ICML 2020, https://arxiv.org/abs/1911.11134).

    model = rigl.sparsify(model, 0.9, "erk")
    model.compile(...)
    model.fit(ds, callbacks=[rigl.SparseTraining(rigl.RigL(), data=ds)])
"""

# `import rigl` loads the library only: neither gin, TFDS nor rigl.experiments. The loss and
# learning-rate schedule that models saved by scripts/train.py reference are registered by
# rigl.losses and rigl.schedules, so those models load with keras.saving.load_model.
from rigl import flops, kernels, losses, methods, schedules  # noqa: F401
from rigl.callbacks import SparseTraining
from rigl.conversion import to_masked, to_sparse
from rigl.distributions import DISTRIBUTIONS, layer_sparsities
from rigl.exporting import export, load_exported
from rigl.granet import GraNet
from rigl.layers import MaskedConv2D, MaskedDense, MaskedDepthwiseConv2D, MaskedGRU
from rigl.masking import (
    DenseKernelsWarning,
    get_masks,
    masked_layers,
    masked_weights,
    measured_sparsities,
    sparse_weights,
    sparsify,
    strip,
    summary,
    total_sparsity,
)
from rigl.methods import METHODS, UPDATERS, get_updater
from rigl.path_masks import SparseModel
from rigl.sparse_build import sparse_model
from rigl.sparse_layers import SparseDense
from rigl.srigl import SRigL
from rigl.updaters import (
    SET,
    SNFS,
    SNIP,
    GradualPruning,
    RigL,
    Static,
    Updater,
    UpdateResult,
    drop_and_grow,
)

__version__ = "0.1.0"

__all__ = [
    "DISTRIBUTIONS",
    "DenseKernelsWarning",
    "GraNet",
    "GradualPruning",
    "MaskedConv2D",
    "MaskedDense",
    "MaskedDepthwiseConv2D",
    "MaskedGRU",
    "METHODS",
    "RigL",
    "SET",
    "SNFS",
    "SNIP",
    "SRigL",
    "SparseDense",
    "SparseModel",
    "SparseTraining",
    "Static",
    "UPDATERS",
    "UpdateResult",
    "Updater",
    "drop_and_grow",
    "export",
    "flops",
    "get_masks",
    "get_updater",
    "layer_sparsities",
    "load_exported",
    "masked_layers",
    "masked_weights",
    "methods",
    "measured_sparsities",
    "sparse_model",
    "summary",
    "sparse_weights",
    "sparsify",
    "strip",
    "to_masked",
    "to_sparse",
    "total_sparsity",
]
