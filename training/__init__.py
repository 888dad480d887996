"""ELSA training on the spatial shards: features, model, loader, losses, torchrun entry points.

Importing this package imports nothing heavy; torch and transformers load with the modules that
need them, so ``spatial-audiocaps --help`` stays fast.
"""
