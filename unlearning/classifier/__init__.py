"""The classifier model family: unlearning a trained classifier (UAM's own setting), with a retrain reference.

``task`` (the digits CNN, forget splits, metrics), ``methods`` (Finetune, NegGrad+, RandomLabel,
L1-sparse, RMU; UAM through ``methods.uam``), ``bench`` (``python -m unlearning bench classifier``).
"""
