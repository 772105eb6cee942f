"""Hydra configs of ``python -m bixt.tasks.imagenet`` (a package so that Hydra also finds them as ``pkg://``)."""
