"""Hydra configs of ``python -m bixt.tasks.clevr_vqa`` (a package so that Hydra also finds them as ``pkg://``)."""
