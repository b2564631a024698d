"""Input pipelines through tensorflow-datasets (TFDS), one ``DataSpec`` per dataset name.

Every pipeline is a deterministic function of (seed, position): the training stream is a
seeded shuffle of the records repeated forever, augmentation draws stateless random numbers
from (seed, example index), and a resumed run rebuilds the stream and skips the records it
already consumed (before decoding, so skipping is cheap). Distributed iterators cannot be
checkpointed in TF, so this is how the data position survives a restart.

Datasets are read from TFDS's data_dir (its default honours ``TFDS_DATA_DIR``), never
downloaded unless asked: machines here are offline, see ``scripts/prepare_data.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable

import tensorflow as tf

# Training-set sizes, so that schedules can be computed (and printed by dry runs) without the
# data: examples, or bytes for the character-level language models.
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000,
               "imagenet2012": 1_281_167, "tiny_shakespeare": 1_003_854,
               # wiki.train.raw is about 540 MB; only dry runs and smoke runs use this.
               "wikitext103": 540_000_000}

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
BYTE_VOCAB = 256


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the training loop needs to know about a dataset.

    Attributes:
        name: dataset name.
        task: "classification" (accuracy) or "language_model" (bits per character).
        input_shape: shape of one input, without the batch dimension.
        num_classes: number of classes (256 bytes for language models).
        num_train_examples: examples (or sequences) in one training epoch.
        train_fn: ``train_fn(input_context, per_replica_batch, skip_steps)`` -> an infinite
            ``tf.data.Dataset`` of batches, skipping the first ``skip_steps`` global steps.
        eval_fn: ``eval_fn(input_context, per_replica_batch)`` -> one pass over the test set.
        validation_fn: the same over the held-out validation examples, if any.
    """

    name: str
    task: str
    input_shape: tuple
    num_classes: int
    num_train_examples: int
    train_fn: Callable
    eval_fn: Callable
    validation_fn: Callable | None = None


def _pipelines(ctx):
    return (ctx.num_input_pipelines, ctx.input_pipeline_id) if ctx else (1, 0)


def _examples_per_pipeline_step(ctx, per_replica_batch: int) -> int:
    if ctx is None:
        return per_replica_batch
    return per_replica_batch * ctx.num_replicas_in_sync // ctx.num_input_pipelines


def train_stream(records, ctx, per_replica_batch, skip_steps, seed, preprocess,
                 shuffle_buffer, cache=False, per_example=True):
    """Shard, shuffle (seeded, reshuffled every epoch), repeat, skip, augment, batch.

    ``per_example``: ``preprocess(record, seed)`` runs on every example with its own seed
    (augmentation). Without it, ``preprocess`` is elementwise and seed-free and runs once per
    batch (``seed`` None): the same tensors, without a function call per example, which on
    two cores competes with the training step for the CPU."""
    num, index = _pipelines(ctx)
    records = records.shard(num, index)
    if cache:
        records = records.cache()
    records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    records = records.repeat()
    skip = skip_steps * _examples_per_pipeline_step(ctx, per_replica_batch)
    if not per_example:
        return _preprocess_batches(records.skip(skip), per_replica_batch, preprocess,
                                   drop_remainder=True)
    records = records.enumerate().skip(skip)
    records = records.map(lambda i, r: preprocess(r, tf.stack([tf.cast(seed, tf.int64), i])),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.batch(per_replica_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _preprocess_batches(records, batch, preprocess, drop_remainder):
    """Batches, then applies a seed-free elementwise ``preprocess`` to whole batches."""
    records = records.batch(batch, drop_remainder=drop_remainder)
    return records.map(lambda r: preprocess(r, None), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)


def eval_stream(records, ctx, per_replica_batch, preprocess, per_example=True):
    """Shard and batch one pass over ``records`` (the last batch may be smaller), with
    ``preprocess(record, None)`` per example or, without ``per_example``, per batch."""
    num, index = _pipelines(ctx)
    records = records.shard(num, index)
    if not per_example:
        return _preprocess_batches(records, per_replica_batch, preprocess, drop_remainder=False)
    records = records.map(lambda r: preprocess(r, None), num_parallel_calls=tf.data.AUTOTUNE)
    return records.batch(per_replica_batch).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------- TFDS
@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a TFDS dataset comes from: ``data_dir``, TFDS download, or ``mock`` data
    (under ``tfds.testing.mock_data``, for smoke runs)."""

    data_dir: str | None = None
    download: bool = False
    mock: bool = False


def _tfds_builder(name: str, source: _Source):
    import tensorflow_datasets as tfds

    data_dir, download = source.data_dir, source.download
    builder = tfds.builder(name, data_dir=data_dir)
    if not source.mock and not builder.is_prepared():
        if download:
            builder.download_and_prepare()
        else:
            where = data_dir or tfds.core.constants.get_default_data_dir()
            raise FileNotFoundError(
                f"data_dir: TFDS dataset {name!r} is not prepared in {where!r}. Prepare it "
                f"offline with `python scripts/prepare_data.py --dataset={name} "
                f"--source_dir=<folder with the original files> --data_dir={where}` "
                "(../shared/data holds them here), point TFDS_DATA_DIR or the gin binding "
                "`dataset.data_dir` at the prepared folder, or bind `dataset.download=True` "
                "on a machine with internet access."
            )
    return builder


def _records(builder, split: str):
    return builder.as_dataset(split=split, shuffle_files=False)


def _num_train_examples(builder, source: _Source) -> int:
    if source.mock:  # mock data has no split metadata; schedules use the real size
        return TRAIN_SIZES[builder.name]
    return int(builder.info.splits["train"].num_examples)


def mnist_preprocess(record, _seed):
    """Pixels scaled to [0, 1]; no augmentation. Elementwise: applies to a record or a
    batch of records alike."""
    return tf.cast(record["image"], tf.float32) / 255.0, tf.cast(record["label"], tf.int32)


def cifar_preprocess(record, rng_seed):
    """Per-image standardisation; for training (``rng_seed`` given) first a random crop of
    the 4-pixel zero-padded image and a random horizontal flip, drawn from ``rng_seed``."""
    image = tf.cast(record["image"], tf.float32)
    if rng_seed is not None:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(rng_seed, 2))
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
        image = tf.image.stateless_random_crop(image, (32, 32, 3), crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.image.per_image_standardization(image)
    return image, tf.cast(record["label"], tf.int32)


def _image_classification(name, builder, source, seed, preprocess, input_shape, shuffle_buffer,
                          validation_examples, per_example=True) -> DataSpec:
    """A TFDS image dataset whose last ``validation_examples`` training examples are held out
    for validation (the original MNIST code trains on 55,000 and validates on 5,000).
    ``per_example``: whether ``preprocess`` needs to see examples one by one (see
    ``train_stream``)."""
    total = _num_train_examples(builder, source)
    if isinstance(validation_examples, bool) or not isinstance(validation_examples, int) or (
            not 0 <= validation_examples < total):
        raise ValueError(f"dataset.validation_examples: expected an integer in [0, {total}), "
                         f"got {validation_examples!r}.")
    keep = total - validation_examples
    train_split = f"train[:{keep}]" if validation_examples else "train"
    validation_fn = None
    if validation_examples:
        def validation_fn(ctx, batch):
            return eval_stream(_records(builder, f"train[{keep}:]"), ctx, batch, preprocess,
                               per_example)
    return DataSpec(
        name=name, task="classification", input_shape=input_shape, num_classes=10,
        num_train_examples=keep,
        train_fn=lambda ctx, batch, skip: train_stream(
            _records(builder, train_split), ctx, batch, skip, seed, preprocess, shuffle_buffer,
            cache=True, per_example=per_example),
        eval_fn=lambda ctx, batch: eval_stream(_records(builder, "test"), ctx, batch,
                                               preprocess, per_example),
        validation_fn=validation_fn,
    )


def _mnist_like(name, source, seed, validation_examples=0):
    return _image_classification(name, _tfds_builder(name, source), source, seed,
                                 mnist_preprocess, (28, 28, 1), 60_000, validation_examples,
                                 per_example=False)


def _cifar10(name, source, seed, validation_examples=0):
    return _image_classification(name, _tfds_builder("cifar10", source), source, seed,
                                 cifar_preprocess, (32, 32, 3), 50_000, validation_examples)


def imagenet_preprocessor(image_size: int = 224):
    """ImageNet preprocessing of a record holding the encoded JPEG.

    Training (``rng_seed`` given): Inception-style random-resized crop (area 8-100%, aspect
    3/4-4/3) and horizontal flip; evaluation: the central 87.5% of the shorter side. Both are
    resized to ``image_size`` and normalised by the ImageNet mean and standard deviation.
    """
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def train_image(encoded, rng_seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(rng_seed, 2))
        shape = tf.image.extract_jpeg_shape(encoded)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.zeros([1, 0, 4]), seed=crop_seed, min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        y, x, _ = tf.unstack(begin)
        h, w, _ = tf.unstack(size)
        image = tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3)
        image = tf.image.resize(image, (image_size, image_size))
        return tf.image.stateless_random_flip_left_right(image, flip_seed)

    def eval_image(encoded):
        shape = tf.image.extract_jpeg_shape(encoded)
        h, w = shape[0], shape[1]
        side = tf.cast(0.875 * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
        window = tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        return tf.image.resize(image, (image_size, image_size))

    def preprocess(record, rng_seed):
        encoded = record["image"]
        image = train_image(encoded, rng_seed) if rng_seed is not None else eval_image(encoded)
        return (image - mean) / std, tf.cast(record["label"], tf.int32)

    return preprocess


def _imagenet(name, source, seed, image_size=224):
    import tensorflow_datasets as tfds

    builder = _tfds_builder("imagenet2012", source)
    decoders = {"image": tfds.decode.SkipDecoding()}
    preprocess = imagenet_preprocessor(image_size)

    def records(split):
        return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)

    return DataSpec(
        name=name, task="classification", input_shape=(image_size, image_size, 3),
        num_classes=1000, num_train_examples=_num_train_examples(builder, source),
        train_fn=lambda ctx, batch, skip: train_stream(
            records("train"), ctx, batch, skip, seed, preprocess, 10_000),
        eval_fn=lambda ctx, batch: eval_stream(records("validation"), ctx, batch, preprocess),
    )


# ---------------------------------------------------------------- character-level LM
def byte_windows(chunks: tf.data.Dataset, seq_len: int) -> tf.data.Dataset:
    """Consecutive, non-overlapping windows of ``seq_len + 1`` bytes (vocabulary 256).

    Args:
        chunks: a dataset of strings whose concatenation is the text.
    """
    ids = chunks.map(lambda text: tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32))
    return ids.unbatch().batch(seq_len + 1, drop_remainder=True)


def shift_window(window, _seed):
    """A window of ``seq_len + 1`` bytes as (inputs, targets): each byte predicts the next."""
    return window[:-1], window[1:]


def _language_model(name, chunks: dict[str, Callable[[], tf.data.Dataset]],
                    train_bytes: int, seq_len: int, seed: int) -> DataSpec:
    def windows(split):
        return byte_windows(chunks[split](), seq_len)

    return DataSpec(
        name=name, task="language_model", input_shape=(seq_len,), num_classes=BYTE_VOCAB,
        num_train_examples=train_bytes // (seq_len + 1),
        train_fn=lambda ctx, batch, skip: train_stream(
            windows("train"), ctx, batch, skip, seed, shift_window, 10_000),
        eval_fn=lambda ctx, batch: eval_stream(windows("test"), ctx, batch, shift_window),
    )


def _mock_language_model(name, seq_len, seed) -> DataSpec:
    """Smoke and dry runs: printable ASCII stands in for the text (TFDS's mock text is too
    short to fill one window)."""
    text = tf.constant(bytes(range(32, 127)) * 200)
    return _language_model(name, {s: lambda: tf.data.Dataset.from_tensors(text)
                                  for s in ("train", "test")}, TRAIN_SIZES[name], seq_len, seed)


def _tiny_shakespeare(name, source, seed, seq_len=512):
    if source.mock:
        return _mock_language_model(name, seq_len, seed)
    builder = _tfds_builder("tiny_shakespeare", source)

    def chunks(split):
        return lambda: _records(builder, split).map(lambda record: record["text"])

    train_bytes = int(tf.strings.length(next(iter(chunks("train")()))).numpy())
    return _language_model(name, {s: chunks(s) for s in ("train", "test")}, train_bytes,
                           seq_len, seed)


def _wikitext103(name, source, seed, seq_len=512, wikitext_dir=None):
    files = {"train": "wiki.train.raw", "test": "wiki.test.raw"}
    if source.mock:
        return _mock_language_model(name, seq_len, seed)
    if not wikitext_dir or not all(os.path.isfile(os.path.join(wikitext_dir, f))
                                   for f in files.values()):
        raise FileNotFoundError(
            f"dataset.wikitext_dir: {wikitext_dir!r} does not hold the raw WikiText-103 files "
            f"{sorted(files.values())} (wikitext-103-raw from the dataset's authors); bind "
            "dataset.wikitext_dir to that folder."
        )

    def chunks(split):
        path = os.path.join(wikitext_dir, files[split])
        # Streamed line by line (the training file is 0.5 GB); lines lose their newline.
        return lambda: tf.data.TextLineDataset(path).map(lambda line: line + "\n")

    train_bytes = os.path.getsize(os.path.join(wikitext_dir, files["train"]))
    return _language_model(name, {s: chunks(s) for s in files}, train_bytes, seq_len, seed)


DATASETS = {
    "mnist": _mnist_like,
    "fashion_mnist": _mnist_like,
    "cifar10": _cifar10,
    "imagenet2012": _imagenet,
    "tiny_shakespeare": _tiny_shakespeare,
    "wikitext103": _wikitext103,
}


def get_dataset(name: str, data_dir: str | None = None, download: bool = False, seed: int = 0,
                mock: bool = False, **options) -> DataSpec:
    """The ``DataSpec`` of dataset ``name`` (see ``DATASETS``).

    Args:
        name: dataset name.
        data_dir: TFDS data_dir; None means TFDS's default (``TFDS_DATA_DIR`` if set).
        download: let TFDS download and prepare the dataset if missing (needs internet).
        seed: seed of the shuffle and of the augmentation.
        mock: read whatever ``tfds.testing.mock_data`` (active around the whole use of the
            returned spec) provides; epoch sizes stay the real ones.
        **options: dataset options: ``validation_examples`` (mnist, fashion_mnist,
            cifar10: hold out the last N training examples), ``image_size`` (imagenet2012),
            ``seq_len`` (language models), ``wikitext_dir`` (wikitext103).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {name!r}; allowed: {sorted(DATASETS)}.")
    loader = DATASETS[name]
    accepted = list(inspect.signature(loader).parameters)[3:]
    for option in options:
        if option not in accepted:
            raise ValueError(f"dataset.{option}: not an option of dataset {name!r}; its options "
                             f"are {accepted}.")
    return loader(name, _Source(data_dir, download, mock), seed, **options)
