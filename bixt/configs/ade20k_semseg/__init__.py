"""Hydra configs of ``python -m bixt.tasks.ade20k_semseg`` (a package so that Hydra also finds them as ``pkg://``)."""
