"""Offline preparation of TFDS datasets from their original files (no network).

Two routes, chosen per dataset by checking the local files against the sha256 sums TFDS
registers for the dataset's download URLs:

* byte-exact files (MNIST, Fashion-MNIST, tiny-shakespeare from ../shared/data) are given to
  TFDS as its *manual* folder, and TFDS verifies their checksums itself;
* files that hold the same data in other bytes (CIFAR-10 rebuilt from JPEG, Debian's
  re-gzipped Fashion-MNIST) are placed in TFDS's download cache with the ``.INFO`` record
  TFDS writes after a download, so TFDS reads them as if it had downloaded them. The run
  says so, because the result is then not the pristine dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from absl import logging

PREPARABLE = ("mnist", "fashion_mnist", "tiny_shakespeare", "cifar10")
CIFAR10_BUILDER_SCRIPT = "build_cifar10_binary.py"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_files(dataset: str, source_dir: str, url_infos, workdir: str) -> dict[str, str]:
    """URL -> local file holding that URL's content."""
    if dataset == "cifar10":
        script = os.path.join(source_dir, CIFAR10_BUILDER_SCRIPT)
        if not os.path.isfile(script):
            raise FileNotFoundError(
                f"source_dir: {source_dir!r} has no {CIFAR10_BUILDER_SCRIPT}; point it at "
                "../shared/data/cifar10 (JPEG rebuild of CIFAR-10).")
        subprocess.run([sys.executable, script, workdir], check=True)
        built = os.path.join(workdir, "cifar-10-binary.tar.gz")
        return {url: built for url in url_infos if url.endswith("cifar-10-binary.tar.gz")}
    files = {}
    for url in url_infos:
        path = os.path.join(source_dir, os.path.basename(url))
        if not os.path.isfile(path):
            expected = sorted(os.path.basename(u) for u in url_infos)
            raise FileNotFoundError(
                f"source_dir: {path!r} is missing; {dataset} needs the original files "
                f"{expected} in {source_dir!r}.")
        files[url] = path
    return files


def prepare(dataset: str, source_dir: str, data_dir: str) -> str:
    """Builds TFDS dataset ``dataset`` in ``data_dir`` from the files in ``source_dir``.

    Afterwards ``tfds.load(dataset, data_dir=data_dir, download=False)`` works offline.
    Returns the prepared dataset's folder. Does nothing if it is already prepared.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import resource

    if dataset not in PREPARABLE:
        raise ValueError(f"dataset: {dataset!r} cannot be prepared offline; allowed: "
                         f"{PREPARABLE} (imagenet2012 uses TFDS's own manual_dir route).")
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"source_dir: {source_dir!r} is not a folder.")
    builder = tfds.builder(dataset, data_dir=data_dir)
    if builder.is_prepared():
        logging.info("%s is already prepared in %s", dataset, builder.data_dir)
        return builder.data_dir
    url_infos = builder.url_infos
    root = os.path.join(data_dir, "_rigl_prepare", dataset)
    extract_dir = os.path.join(root, "extract")
    with tempfile.TemporaryDirectory() as tmp:
        files = _source_files(dataset, source_dir, url_infos, tmp)
        exact = all(_sha256(path) == url_infos[url].checksum for url, path in files.items())
        if exact:
            manual_dir = os.path.join(root, "manual")
            os.makedirs(manual_dir, exist_ok=True)
            for url, path in files.items():
                shutil.copyfile(path, os.path.join(manual_dir, os.path.basename(url)))
            download_dir = None
            config = tfds.download.DownloadConfig(
                manual_dir=manual_dir, extract_dir=extract_dir, try_download_gcs=False)
        else:
            logging.warning(
                "%s: the files in %s are not byte-identical to the published ones (other "
                "compression, or a rebuild such as CIFAR-10 from JPEG); seeding TFDS's "
                "download cache with them, so TFDS cannot verify them.",
                dataset, source_dir)
            download_dir = os.path.join(root, "downloads")
            os.makedirs(download_dir, exist_ok=True)
            for url, path in files.items():
                info = url_infos[url]
                cached = os.path.join(download_dir, resource.get_dl_fname(url, info.checksum))
                shutil.copyfile(path, cached)
                resource.write_info_file(
                    url=url, path=resource.epath.Path(cached), dataset_name=dataset,
                    original_fname=os.path.basename(url), url_info=info)
            config = tfds.download.DownloadConfig(
                extract_dir=extract_dir, try_download_gcs=False)
        builder.download_and_prepare(download_dir=download_dir, download_config=config)
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):  # the shared parent, once no other dataset uses it
        os.rmdir(os.path.dirname(root))
    return builder.data_dir
