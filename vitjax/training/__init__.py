"""The training program behind ``python -m vitjax.main``: configs, the loop, steps and checkpoints.

* :mod:`vitjax.training.config`: the config schema and the recipe builders ``configs/*.py`` call.
* :mod:`vitjax.training.default_config`: the embedded default job (a small DeiT on scikit-learn's digits).
* :mod:`vitjax.training.train`: ``train_and_evaluate``, ``evaluate``, ``predict``: the modes of ``vitjax.main``.
* :mod:`vitjax.training.experiment`: one run's model, optimizer, mesh and input pipelines, built from a config.
* :mod:`vitjax.training.model_init`: initial weights (random, ``.pdparams``, pretrained by name, a checkpoint).
* :mod:`vitjax.training.steps`: the jitted train and eval steps (accumulation, EMA, bf16 compute).
* :mod:`vitjax.training.optim`: the optax optimizer, schedules and layer-wise learning-rate decay.
* :mod:`vitjax.training.mixing`: Mixup/CutMix on device.
* :mod:`vitjax.training.sharding`: the device mesh and the parameter/batch shardings (data and model axes).
* :mod:`vitjax.training.checkpoints`: orbax checkpoints, automatic resume, exported weights.
* :mod:`vitjax.training.evaluation`, :mod:`vitjax.training.reporting`, :mod:`vitjax.training.monitoring`:
  top-1/top-5, metric files and plots, progress lines with the input wait.
* :mod:`vitjax.training.preemption`: SIGTERM and preemption notices end a run at a checkpoint.

Nothing here is imported by ``import vitjax``; ``vitjax.main`` imports it when a job starts.
"""
