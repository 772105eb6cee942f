"""Hydra configs of ``python -m bixt.tasks.shapenet_partseg`` (a package so that Hydra also finds them as ``pkg://``)."""
