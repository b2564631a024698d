"""Input pipelines: preprocessing, deterministic streams, language-model windows."""

import numpy as np
import pytest
import tensorflow as tf

from rigl.experiments import data


def _records(n=50, shape=(28, 28, 1)):
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices({
        "image": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "label": rng.integers(0, 10, n)})


def _batches(dataset, count):
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(count)]


def test_mnist_preprocess_scales_to_unit_range():
    image, label = next(iter(_records().map(lambda r: data.mnist_preprocess(r, None))))
    assert image.dtype == tf.float32 and 0.0 <= image.numpy().min() <= image.numpy().max() <= 1
    assert label.dtype == tf.int32


def test_cifar_preprocess_augments_from_the_seed_only():
    record = next(iter(_records(1, (32, 32, 3))))
    seed = tf.constant([1, 2], tf.int64)
    a, _ = data.cifar_preprocess(record, seed)
    b, _ = data.cifar_preprocess(record, seed)
    others = [data.cifar_preprocess(record, tf.constant([1, i], tf.int64))[0]
              for i in range(3, 8)]
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for c in others)
    plain, _ = data.cifar_preprocess(record, None)  # evaluation: standardisation only
    assert abs(float(tf.reduce_mean(plain))) < 1e-4
    assert float(tf.math.reduce_std(plain)) == pytest.approx(1.0, abs=1e-3)


def test_imagenet_preprocess_shapes_and_determinism():
    pixels = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    record = {"image": tf.io.encode_jpeg(pixels), "label": tf.constant(7)}
    preprocess = data.imagenet_preprocessor(image_size=32)
    seed = tf.constant([0, 5], tf.int64)
    train, label = preprocess(record, seed)
    again, _ = preprocess(record, seed)
    evaluation, _ = preprocess(record, None)
    assert train.shape == evaluation.shape == (32, 32, 3) and int(label) == 7
    np.testing.assert_array_equal(train, again)


def test_train_stream_resumes_where_it_stopped():
    """Skipping k steps gives exactly the batches an uninterrupted stream gives after k."""
    def stream(skip, ctx=None):
        return data.train_stream(_records(), ctx, 4, skip, 3, data.mnist_preprocess, 50)

    full = _batches(stream(0), 30)  # 30 batches of 4 cross the 50-record epoch boundary
    resumed = _batches(stream(17), 13)
    for (x1, y1), (x2, y2) in zip(full[17:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # Two replicas fed by one pipeline consume two per-replica batches per step.
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
    np.testing.assert_array_equal(_batches(stream(3, ctx), 1)[0][1], full[6][1])


@pytest.mark.parametrize("skip", [0, 9])
def test_batched_preprocessing_gives_the_per_example_stream(skip):
    """A seed-free elementwise preprocessing (MNIST's) runs once per batch: the same tensors
    as the per-example route, training and evaluation streams alike."""
    def stream(per_example):
        return data.train_stream(_records(), None, 4, skip, 3, data.mnist_preprocess, 50,
                                 per_example=per_example)

    for (x1, y1), (x2, y2) in zip(_batches(stream(True), 20), _batches(stream(False), 20),
                                  strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert x1.dtype == x2.dtype and y1.dtype == y2.dtype
    evaluation = [_batches(data.eval_stream(_records(), None, 8, data.mnist_preprocess, p), 7)
                  for p in (True, False)]
    assert [x.shape for x, _ in evaluation[1]] == [x.shape for x, _ in evaluation[0]]
    for (x1, y1), (x2, y2) in zip(*evaluation, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_byte_windows_are_shifted_bytes():
    text = tf.data.Dataset.from_tensor_slices([b"hello ", b"world!"])
    windows = list(data.byte_windows(text, 4).as_numpy_iterator())
    assert [bytes(w.astype(np.uint8)) for w in windows] == [b"hello", b" worl"]
    x, y = data.shift_window(tf.constant(windows[0]), None)
    assert bytes(x.numpy().astype(np.uint8)) == b"hell" and bytes(
        y.numpy().astype(np.uint8)) == b"ello"


def test_wikitext103_reads_raw_files(tmp_path):
    train_text = " = Valkyria = \n Senjou no Valkyria 3 \n" * 20  # 760 bytes
    (tmp_path / "wiki.train.raw").write_text(train_text)
    (tmp_path / "wiki.test.raw").write_text(" = Robert Boulter = \n" * 10)  # 210 bytes
    spec = data.get_dataset("wikitext103", wikitext_dir=str(tmp_path), seq_len=8)
    assert spec.task == "language_model" and spec.num_classes == 256
    assert spec.num_train_examples == 760 // 9
    x, y = next(iter(spec.train_fn(None, 2, 0)))
    assert x.shape == y.shape == (2, 8)
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    windows = list(spec.eval_fn(None, 4).unbatch())  # 210 bytes -> 23 windows of 9
    assert len(windows) == 23
    assert bytes(np.concatenate([windows[0][0].numpy()[:1], windows[0][1].numpy()]).astype(
        np.uint8)) == b" = Robert"


def test_wikitext103_missing_files_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="wikitext_dir"):
        data.get_dataset("wikitext103", wikitext_dir=str(tmp_path))


def test_unknown_dataset_and_option_are_named():
    with pytest.raises(ValueError, match="svhn"):
        data.get_dataset("svhn")
    with pytest.raises(ValueError, match="dataset.image_size"):
        data.get_dataset("mnist", image_size=64)
