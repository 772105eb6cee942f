"""Hydra configs of ``python -m bixt.tasks.lra_listops`` (a package so that Hydra also finds them as ``pkg://``)."""
