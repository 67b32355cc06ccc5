"""``bench.toml_lines``: the one line finder behind every ``file:line`` error of the grid,
its ``[slurm]`` table and the published-numbers file."""

from __future__ import annotations

import pytest

from bench.errors import UserError
from bench.launch.slurm_settings import slurm_settings
from bench.toml_lines import load, locate, mention

TEXT = """name = "g"            # 1
[axes]                  # 2
methods = ["gmp", "static-erk"]
[method."gmp-lr0.05"]   # 4
lr = 0.05
sparsity = { distribution = "erk" }
[[published]]           # 7
model = "a"
[[published]]           # 9

top1 = 1.0
[source.str]            # 12
citation = "x"
[slurm]                 # 14
"partition" = "p"
"""


def test_locate_keys_tables_array_entries_and_fallbacks():
    assert locate(TEXT, ("name",)) == 1
    assert locate(TEXT, ("method", "gmp-lr0.05", "lr")) == 5
    # Inside an inline table: its key; a missing key: its table's header.
    assert locate(TEXT, ("method", "gmp-lr0.05", "sparsity", "distribution")) == 6
    assert locate(TEXT, ("method", "gmp-lr0.05", "epochs")) == 4
    # [[published]] entries by index, their keys below them.
    assert locate(TEXT, ("published", 0, "model")) == 8
    assert locate(TEXT, ("published", 1, "top1")) == 11
    assert locate(TEXT, ("published", 1, "model")) == 9
    assert locate(TEXT, ("published", 2, "model")) is None
    # Nothing defines ("source",) itself: the first table inside it.
    assert locate(TEXT, ("source",)) == 12
    assert locate(TEXT, ("published",)) == 7
    assert locate(TEXT, ("slurm", "partition"), exact=True) == 15
    assert locate(TEXT, ("slurm", "time"), exact=True) is None
    assert locate(TEXT, ("slurm", "time")) == 14


def test_mention_finds_names_inside_lists():
    assert mention(TEXT, "static-erk") == 3
    assert mention(TEXT, "axes") == 2
    assert mention(TEXT, "nowhere") is None


def test_load_says_the_line_of_a_syntax_error():
    with pytest.raises(UserError, match=r"^g.toml:2: malformed grid: "):
        load("a = 1\nb = \n", "g.toml", "grid")


def test_slurm_errors_point_at_the_key_in_the_slurm_table(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(TEXT.replace('"partition" = "p"', '"partition" = "p"\nbogus = 1'))
    with pytest.raises(UserError, match=rf"^{grid}:16: unknown key 'bogus' in \[slurm\]"):
        slurm_settings({"partition": "p", "bogus": 1}, source=str(grid))


def test_read_says_what_is_wrong_with_the_file(tmp_path):
    from bench.report.published import load as load_published
    from bench.toml_lines import read

    path = tmp_path / "p.toml"
    path.write_bytes(b'a = 1\nb = "caf\xe9"\n')
    with pytest.raises(UserError, match=rf"^{path}:2: the published numbers file is not UTF-8 "
                                        r"text \(byte 0xe9\)"):
        load_published(path)
    path.write_text("a = 1\n")
    assert read(path, "grid file", "grid") == ({"a": 1}, "a = 1\n")
    with pytest.raises(UserError, match=rf"^cannot read grid file {tmp_path / 'none.toml'}: "):
        read(tmp_path / "none.toml", "grid file")
