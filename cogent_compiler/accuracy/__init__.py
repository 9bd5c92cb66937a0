"""Accuracy: labelled data sets, top-1 evaluation and fine-tuning.

``data`` loads ``digits``, ``imagefolder:DIR`` and ``npz:FILE`` sources (or
materialises a DataLoader) into a model-ready :class:`Dataset`; ``train``
measures a model's accuracy on it and fine-tunes a torch module to recover
accuracy after compression; ``budget`` holds pruning to the user's accuracy
budget (measure, prune, fine-tune, repair or reject).  torch, scikit-learn
and PIL load only when a function needs them.
"""

from __future__ import annotations

from cogent_compiler.accuracy.budget import AccuracyReport, prune_within_budget, uniform_ratios
from cogent_compiler.accuracy.data import Dataset, from_loader, load_data
from cogent_compiler.accuracy.train import evaluate, finetune

__all__ = ["AccuracyReport", "Dataset", "load_data", "from_loader", "evaluate", "finetune", "prune_within_budget", "uniform_ratios"]
