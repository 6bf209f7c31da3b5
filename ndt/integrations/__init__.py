"""ndt inside the researcher's own training: framework callbacks, experiment loggers, torchrun.

- `ndt.integrations.lightning.DimensionalityCallback`: PyTorch Lightning 2.x (``pip install "ndt[lightning]"``).
- `ndt.integrations.hf.DimensionalityCallback`: Hugging Face ``transformers.Trainer`` (``ndt[hf]``).
- `ndt.integrations.loggers`: forward every measurement to TensorBoard, W&B or MLflow (``ndt[tensorboard]``,
  ``ndt[wandb]``, ``ndt[mlflow]``); Parquet stays the source of truth.

Nothing here is imported by ``import ndt``: each module imports its framework when it is imported
itself, so the base package needs none of them. (Distributed measurement needs no extra: it lives in
`ndt.measure.distributed` and is used by `HighFrequencyTracker` directly.)
"""
