"""The experiment layer: what ``scripts/`` runs on top of the library.

Gin lives here and in ``scripts/``, never in the core library (``rigl/*.py``), and
``import rigl`` loads none of it. One module per concern:

================ =============================================================================
``config``       the gin names of a run and ``TrainConfig``, its validated ``training.*``
                 settings; the factories gin configures (``dataset``, ``model``, ``optimizer``,
                 ``learning_rate``, ``strategy``, ``updater``)
``training``     the one training loop, in phases: build the experiment, train (workdir,
                 checkpoint, steps), report
``reporting``    what a run writes: step and eval logs, FLOPs log, mask snapshots,
                 ``results.json``; the dry run's description
``data``         TFDS input pipelines, one ``DataSpec`` per dataset name
``models``       the experiment models, by name
``optim``        optimizers and learning-rate schedules, by name
``strategies``   ``tf.distribute`` strategies, by name
``prepare``      building TFDS datasets offline from local files
``sweep``        grids of training runs: grid, runner, aggregation, plots
``benchmark``    the timing harness behind ``scripts/benchmark.py``
``flops_report`` what ``scripts/flops_table.py`` prints: one configuration's FLOPs, and every
                 published FLOPs figure of the paper and the reference README next to ours
================ =============================================================================

Where things plug in: a dataset, model, optimizer or strategy is an entry of that module's
table of names; a ``training.*`` setting is a parameter of ``training.train`` and a field of
``config.TrainConfig``; a method is a row of ``rigl.methods`` (nothing here lists methods).
"""
