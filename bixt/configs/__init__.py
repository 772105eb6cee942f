"""The Hydra configs of the tasks, one folder per task (a package so that Hydra also finds them as ``pkg://``)."""
