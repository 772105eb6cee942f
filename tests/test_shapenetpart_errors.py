"""ShapeNetPart data problems are DataErrors: one clean line from the task, the file named."""
from __future__ import annotations

import json

import pytest

from bixt.data.errors import DataError
from bixt.data.shapenetpart import ShapeNetPartDataError, ShapeNetPartMissingError, load_shapenetpart
from test_shapenet_data import _corrupt, write_shapenet_folder
from test_shapenet_task import TINY, _run_module


def _two_columns(lines):
    return [" ".join(line.split()[:2]) + "\n" for line in lines]


def test_malformed_shape_file_is_a_data_error_naming_the_file(tmp_path):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    path = _corrupt(folder, _two_columns)
    with pytest.raises(ShapeNetPartDataError) as info:
        load_shapenetpart(folder, "train", cache_dir=tmp_path / "cache")
    assert isinstance(info.value, (DataError, ValueError))  # callers catching either keep working
    assert str(path) in info.value.message and "columns" in info.value.message


def test_missing_files_are_data_errors_and_file_not_found(tmp_path):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    entry = json.loads((folder / "train_test_split" / "shuffled_train_file_list.json").read_text())[0]
    shape = folder / (entry.split("/", 1)[1] + ".txt")
    shape.unlink()
    with pytest.raises(ShapeNetPartMissingError) as info:
        load_shapenetpart(folder, "train", cache_dir=tmp_path / "cache")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ShapeNetPartDataError)
    assert str(shape) in info.value.message
    with pytest.raises(ShapeNetPartMissingError, match="does not exist"):
        load_shapenetpart(tmp_path / "nowhere", "train", cache_dir=tmp_path / "cache")


def test_bad_split_argument_stays_a_plain_value_error(tmp_path):
    with pytest.raises(ValueError, match="split must be one of") as info:
        load_shapenetpart(tmp_path, "bogus")
    assert not isinstance(info.value, DataError)  # a programming error, not bad data


@pytest.mark.e2e
def test_task_reports_a_malformed_file_as_one_line(tmp_path):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    path = _corrupt(folder, _two_columns)
    result = _run_module(TINY + ["data=shapenetpart", f"data.root={tmp_path / 'data'}",
                                 f"data.cache_dir={tmp_path / 'cache'}", "data.num_points=64",
                                 f"trainer.run_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                         cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and str(path) in lines[0] and "columns" in lines[0]


def test_data_errors_exit_turns_only_data_errors_into_one_line():
    from bixt.data.errors import DataError, data_errors_exit

    with pytest.raises(SystemExit) as exit_info:
        with data_errors_exit():
            raise ShapeNetPartDataError("shape file 'a.txt' is empty (an empty cloud)")
    assert str(exit_info.value) == "error: shape file 'a.txt' is empty (an empty cloud)"
    with pytest.raises(KeyError):  # a programming error keeps its traceback
        with data_errors_exit():
            raise KeyError("not a data problem")
    with data_errors_exit():
        pass
    assert issubclass(ShapeNetPartDataError, DataError)
