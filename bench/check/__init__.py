"""`sparsebench check`: compare seed-aggregated results with a pinned baseline.

A *cell* is one (model, dataset, method label, target sparsity), aggregated over its seeds by
``bench.report.aggregate`` (the same numbers the report shows). The package has one job per
module:

* ``bench.check.baseline``: the results under a root as cells, ``pin`` (results -> baseline
  object), and the baseline file's format (``dumps``, ``write_baseline``, ``load_baseline``);
* ``bench.check.rules``: ``compare`` and every rule a cell is judged by;
* ``bench.check.render``: the rule line, the table of findings (``bench.report.tables``'
  Markdown writer, the report's own), the summary line and the CSV.

The rules are stated in ``bench.check.rules`` and, for users, in README "Regression checks" and
baselines/pinned/README.md.
"""

from bench.check.baseline import (
    FALLBACK_SPARSITY_STD,
    KIND,
    SCHEMA,
    cells,
    common_fingerprint,
    dumps,
    load_baseline,
    load_runs,
    pin,
    recipe_id,
    write_baseline,
)
from bench.check.render import HEADER, format_table, rule_line, summary_line, table_rows, to_csv
from bench.check.rules import (
    DEFAULT_FLOOR,
    DEFAULT_SIGMAS,
    FAILING,
    SPARSITY_EPS,
    VERDICTS,
    CellCheck,
    Comparison,
    compare,
    tolerance,
)

__all__ = [
    "DEFAULT_FLOOR", "DEFAULT_SIGMAS", "FAILING", "FALLBACK_SPARSITY_STD", "HEADER", "KIND",
    "SCHEMA", "SPARSITY_EPS", "VERDICTS", "CellCheck", "Comparison", "cells",
    "common_fingerprint", "compare", "dumps", "format_table", "load_baseline", "load_runs",
    "pin", "recipe_id", "rule_line",
    "summary_line", "table_rows", "to_csv", "tolerance", "write_baseline",
]
