"""Hydra configs of ``python -m bixt.tasks.modelnet40_cls`` (a package so that Hydra also finds them as ``pkg://``)."""
