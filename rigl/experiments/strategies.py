"""Distribution strategies by name: default, mirrored, multi_worker, tpu."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", devices=None, logical_cpus: int = 0,
                  tpu_address: str | None = None) -> tf.distribute.Strategy:
    """Builds a ``tf.distribute`` strategy.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, or ``devices``),
            "multi_worker" (``MultiWorkerMirroredStrategy``, cluster from ``TF_CONFIG``) or
            "tpu" (``TPUStrategy`` on ``tpu_address``; "" or None for a local TPU VM).
        devices: explicit device list for "mirrored", e.g. ["/cpu:0", "/cpu:1"].
        logical_cpus: if > 0, split the CPU into this many logical devices first (lets
            "mirrored" run over several CPU replicas; must happen before TF uses devices).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown {name!r}; allowed: {STRATEGIES}.")
    if logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)])
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (the chief, or worker 0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return "local"
    return f"{resolver.task_type}_{resolver.task_id}"
