"""The test harness's own promises (tests/conftest.py)."""

import shutil

from conftest import disk_space_problem


def test_a_short_disk_is_one_line_naming_the_folder_and_the_way_out(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert disk_space_problem(tmp_path, needed=free // 2) is None
    problem = disk_space_problem(tmp_path / "not" / "made" / "yet", needed=free + 2**40)
    assert problem is not None and "\n" not in problem
    assert str(tmp_path) in problem and "GB free" in problem and "--basetemp" in problem
