"""Planning: which runs train, and in what order. The dependency graph (a run reuses another:
EigenDamage prunes the dense run of the same model, data, recipe and seed) is built once and
ordered with the standard library's ``graphlib``; every executor, ``--dry-run`` and the summary
line read the same ``Plan``.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from pathlib import Path

from bench import store
from bench.digests import Digests
from bench.errors import UserError
from bench.failures import retried_by_plain_rerun
from bench.grid import GridRun
from bench.run import run_folder
from bench.train import resolve_hparams
from methods import get_method


def dependencies(run: GridRun) -> list[GridRun]:
    """The runs `run` reuses (EigenDamage: the dense run of the same model, data, recipe, seed)."""
    config = resolve_hparams(run.config)
    method = get_method(config.method.name)(config, config.method.hparams)
    return [GridRun(resolve_hparams(dep), dep.method.name) for dep in method.dependencies()]


def is_done(run: GridRun, root: Path, retry_failed: bool = False, reused: bool = False,
            digests: Digests | None = None) -> bool:
    """Whether `run` has a valid result that needs no retraining: ok, or failed in training
    (unless `retry_failed`); an error of the environment (bench.failures) is retried by any
    rerun. A successful run's model.pt must match the size and SHA-256 its result recorded
    (through `digests`, the root's cache of them, when given). `reused` is kept for callers
    that name it: every finished model is verified in full now."""
    folder = run_folder(root, run.config)
    result = store.read_result(folder)
    if result is None:
        return False
    if result.get("status") != "ok":
        return not (retry_failed or retried_by_plain_rerun(result))
    return store.model_problem(folder, result, full=True,
                               sha256=digests.sha256 if digests else None) is None


@dataclass
class Plan:
    """What ``run`` will train: the selected runs that are not done plus every run they reuse
    that is not done (even when the grid or ``--only`` left it out)."""

    selected: list[GridRun]
    done: list[GridRun] = field(default_factory=list)  # selected and already done
    order: list[GridRun] = field(default_factory=list)  # to train, each after its dependencies
    added: list[GridRun] = field(default_factory=list)  # in `order` but not selected
    # run id -> the ids of runs in `order` it must wait for
    waits_for: dict[str, list[str]] = field(default_factory=dict)

    @property
    def missing(self) -> list[GridRun]:
        """Selected runs to train."""
        added = {r.run_id for r in self.added}
        return [r for r in self.order if r.run_id not in added]


def plan(runs: list[GridRun], root: Path, retry_failed: bool = False,
         digests: Digests | None = None) -> Plan:
    """Plan `runs` under `root`. Order: grid order, except that a run comes after the runs it
    depends on, and a dependency is ranked just before the first run that needs it (so it
    starts early). Finished models are verified through `digests` (default: the root's cache,
    read but not written). Raises UserError on a dependency cycle."""
    root = Path(root)
    digests = digests if digests is not None else Digests(root)
    out = Plan(list(runs))
    selected = {r.run_id for r in runs}
    nodes: dict[str, GridRun] = {}
    graph: dict[str, list[str]] = {}
    position: dict[str, float] = {}
    queue: list[tuple[GridRun, float]] = []
    for index, run in enumerate(runs):
        if not is_done(run, root, retry_failed, digests=digests):
            queue.append((run, float(index)))
        else:
            out.done.append(run)
    while queue:
        run, rank = queue.pop(0)
        if run.run_id in nodes:
            continue
        nodes[run.run_id] = run
        position[run.run_id] = rank
        graph[run.run_id] = []
        for dep in dependencies(run):
            if dep.run_id in nodes or not is_done(dep, root, retry_failed, reused=True,
                                                     digests=digests):
                graph[run.run_id].append(dep.run_id)
                queue.append((dep, rank - 1e-3))
    sorter = graphlib.TopologicalSorter(graph)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise UserError(f"runs depend on each other in a cycle: {cycle}") from None
    while sorter.is_active():
        # Among the runs whose dependencies are placed, the earliest in the grid goes first.
        for rid in sorted(sorter.get_ready(), key=position.__getitem__):
            out.order.append(nodes[rid])
            sorter.done(rid)
    # A selected run whose model another run needs but which does not verify trains again.
    out.done = [r for r in out.done if r.run_id not in nodes]
    out.added = [r for r in out.order if r.run_id not in selected]
    out.waits_for = {rid: list(deps) for rid, deps in graph.items()}
    return out

