"""Meta-training: objectives, estimators, trainers, checkpoints. Imports l2o.optimizers, l2o.io."""
