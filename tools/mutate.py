"""Mutation testing of the modules whose numbers users trust: ``make mutate`` runs this.

    python tools/mutate.py                                  # every module in MODULES
    python tools/mutate.py gradscope/_optim/tolerance.py    # one module (or a few)
    python tools/mutate.py --report-only                    # the scores of the last runs

mutmut 3 (configured under ``[tool.mutmut]`` in pyproject.toml) copies the package into
``mutants/``, puts every mutant of a module behind a switch, runs the module's tests once to
learn which test calls which function, then runs each mutant against only those tests (fastest
first, stopping at the first failure), each in a fork of one process that imported torch once.
Each module runs on its own, against the few test files listed for it in MODULES, so a run stays
bounded on a small machine. A mutant no test can tell from the original is marked on its line
with ``# pragma: no mutate`` and the reason; this script lists those lines.

Prints, per module, killed / total and the surviving mutants (``.venv/bin/mutmut show NAME``
prints one). Exits 1 when a module scores under ``--target`` (0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_TOLERANCE = [
    "tests/optim/test_tolerance.py",
    "tests/optim/test_references.py",
    "tests/optim/test_check.py",
]
_TESTING = [
    "tests/testing/test_testing.py",
    "tests/testing/test_messages.py",
    "tests/testing/test_grads.py",
]
# the watch's recorder and assembly: the records against clones of .grad, torch and twins.
# Every mutant that survives runs all of these: the older files run on the read-now path only
# (their read-later twins kill nothing more; the parts files run both) and without the
# torch.compile test (seconds each, and compile is recorded like eager)
_WATCH_CORE = [
    "-k",
    "not compile and (not later or parts or one_process)",
    "tests/watch/test_recorder_parts.py",
    "tests/watch/test_recorder_state.py",
    "tests/watch/test_assembly_parts.py",
    "tests/watch/test_sharded_one_process.py",
    "tests/watch/test_ddp_one_process.py",
    "tests/watch/test_recorder.py",
    "tests/watch/test_in_place.py",
    "tests/watch/test_keeping.py",
    "tests/watch/test_passes.py",
    "tests/watch/test_watch.py",
]
# the step comparison is reached through check_step and verify_optimizer
_STEP = [
    "tests/optim/test_compare_parts.py",
    "tests/optim/test_compare_state.py",
    "tests/optim/test_shadow.py",
    "tests/optim/test_check.py",
    "tests/optim/test_injected_bugs.py",
    "tests/optim/test_verify.py",
    "tests/optim/test_resolution.py",
]
# the reference rules, against torch.optim itself and numbers worked out by hand
_RULES = [
    "tests/optim/test_rules_literal.py",
    "tests/optim/test_rules_adaptive.py",
    "tests/optim/test_references.py",
]
# module -> the test files that exercise it (the slow long-run and state-machine files are left
# out: minutes each, and they kill nothing the focused files miss)
MODULES: dict[str, list[str]] = {
    "gradscope/_watch/stats.py": [
        "tests/watch/test_stats.py",
        "tests/watch/test_numbers.py",
        "tests/watch/test_records.py",
    ],
    "gradscope/_watch/recorder.py": _WATCH_CORE,
    "gradscope/_watch/assembly.py": _WATCH_CORE,
    "gradscope/_watch/ending.py": _WATCH_CORE,
    "gradscope/_watch/passes.py": [
        "tests/watch/test_recorder_parts.py",
        "tests/watch/test_passes.py",
        "tests/watch/test_in_place.py",
        "tests/watch/test_watch.py",
    ],
    "gradscope/_watch/reading.py": [
        "tests/watch/test_reading.py",
        "tests/watch/test_stats.py",
        "tests/watch/test_numbers.py",
        "tests/watch/test_records.py",
        "tests/watch/test_in_place.py",
    ],
    "gradscope/_optim/tolerance.py": _TOLERANCE,
    "gradscope/_optim/compare.py": _STEP,
    "gradscope/_optim/compare_state.py": _STEP,
    "gradscope/_optim/rules/sgd.py": _RULES,
    "gradscope/_optim/rules/adam.py": _RULES,
    "gradscope/_optim/rules/adaptive.py": _RULES,
    "gradscope/_graph/grad_flow.py": [
        "tests/graph/test_grad_flow.py",
        "tests/graph/test_graph.py",
    ],
    "gradscope/_graph/walk.py": [
        "tests/graph/test_walk_parts.py",
        "tests/graph/test_graph_walk.py",
        "tests/graph/test_graph.py",
    ],
    "gradscope/testing/_grads.py": _TESTING,
    "gradscope/testing/_close.py": [*_TESTING, "tests/testing/test_inputs.py"],
    "gradscope/testing/_update.py": [*_TESTING, "tests/testing/test_inputs.py"],
    "gradscope/testing/_step.py": [*_TESTING, "tests/testing/test_inputs.py"],
    "gradscope/testing/_watch.py": [*_TESTING, "tests/testing/test_pytest_plugin.py"],
    "_gradscope_pytest.py": ["tests/testing/test_pytest_plugin.py"],
}
# exit codes mutmut counts as killed: a test failed, pytest errored, a timeout, the type check
KILLED = {1, 3, 36, 24, -24, 152, 255, 37}
TIMEOUT = {24, -24, 152}  # of those, mutmut's timeouts
EQUIVALENT = re.compile(r"#\s*pragma:\s*no mutate\b(.*)")


def mutant_prefix(module: str) -> str:
    """How mutmut names the mutants of ``module``: ``gradscope._optim.tolerance.x_f__mutmut_3``."""
    return module.removesuffix(".py").replace("/", ".") + "."


def run_one(module: str, jobs: int, survivors: bool, timeouts: bool = False) -> int:
    """Mutate ``module`` and run its mutants against its tests (in this process); with
    ``survivors``, run again only the mutants the last run left alive or did not reach; with
    ``timeouts``, only those it stopped for running too long (killed, as mutmut counts them)."""
    import mutmut.configuration as cfg
    from mutmut.__main__ import cli

    # with nothing left alive, no names: mutmut then runs only mutants without a result, those
    # of functions changed since the last run (it makes them anew)
    alive = _unfinished(module) if survivors else []
    if timeouts:
        alive = _timed_out(module)
        if not alive:
            return 0
        survivors = True
    # mutmut would keep an unmutated copy made by another module's run (newer than the source),
    # and its map of which test covers which function (new tests change it); rerunning the
    # survivors keeps the results (.meta) of the functions unchanged since
    stale = [module, "mutmut-stats.json"] + ([] if survivors else [module + ".meta"])
    for name in stale:
        (ROOT / "mutants" / name).unlink(missing_ok=True)
    config = cfg._load_config()
    config.only_mutate = [module]
    config.pytest_add_cli_args_test_selection = list(MODULES[module])
    cfg._config = config
    try:
        names = alive if survivors else [mutant_prefix(module) + "*"]
        cli(["run", "--max-children", str(jobs), *names], standalone_mode=False)
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def equivalents(module: str) -> list[str]:
    """``path:line: reason`` for each line marked ``# pragma: no mutate (reason)``; a reason too
    long for the line goes in the next line's comment, ``# (reason)``, or the previous line's."""
    lines = (ROOT / module).read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if m := EQUIVALENT.search(line):
            reason = m.group(1).strip(" :-()")
            for near in (i, i - 2):  # the next line, then the previous one (0-based)
                if not reason and 0 <= near < len(lines) and "# (" in lines[near]:
                    reason = lines[near].split("# (", 1)[1].rstrip(")")
            out.append(f"{module}:{i}: {reason or '(no reason given)'}")
    return out


def score(module: str) -> tuple[int, int, list[str], int]:
    """(killed, total, survivors, not run yet) from mutmut's cache."""
    meta = ROOT / "mutants" / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    killed = [k for k, c in codes.items() if c in KILLED]
    alive = sorted((k for k, c in codes.items() if c is not None and c not in KILLED), key=_order)
    pending = sum(c is None for c in codes.values())
    return len(killed), len(codes), alive, pending


def _unfinished(module: str) -> list[str]:
    """The mutants the last run of ``module`` left alive or did not reach."""
    meta = ROOT / "mutants" / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return sorted((k for k, c in codes.items() if c not in KILLED), key=_order)


def _timed_out(module: str) -> list[str]:
    """The mutants the last run of ``module`` stopped for running past the time limit."""
    meta = ROOT / "mutants" / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return sorted((k for k, c in codes.items() if c in TIMEOUT), key=_order)


def _order(name: str) -> tuple[str, int]:
    stem, _, n = name.rpartition("_")
    return stem, int(n) if n.isdigit() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help="source files (default: all of MODULES)")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--report-only", action="store_true", help="print the cached scores")
    parser.add_argument(
        "--survivors", action="store_true", help="rerun the last run's survivors and unreached"
    )
    parser.add_argument(
        "--timeouts", action="store_true", help="rerun the last run's timeouts (on a quiet machine)"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    modules = args.modules or list(MODULES)
    for module in modules:
        if module not in MODULES:
            raise SystemExit(f"mutate: {module} has no tests listed; add it to MODULES")
    if args.one:
        return run_one(modules[0], args.jobs, args.survivors, args.timeouts)
    if not args.report_only:
        # derandomized hypothesis that does not shrink a failing example (tests/conftest.py)
        env = dict(os.environ, OMP_NUM_THREADS="1", CI="true", GRADSCOPE_MUTATE="1")
        for module in modules:  # one process each: mutmut keeps its configuration globally
            print(f"==> {module}: {' '.join(MODULES[module])}", flush=True)
            command = [sys.executable, __file__, "--one", "--jobs", str(args.jobs), module]
            command += ["--survivors"] if args.survivors else []
            command += ["--timeouts"] if args.timeouts else []
            done = subprocess.run(command, env=env, check=False)
            if not done.returncode and args.survivors and score(module)[3]:
                # the source changed since the last run: mutmut made the mutants of the changed
                # functions anew, unrun, after this run had picked which names to run
                print(f"==> {module}: again, for functions changed since", flush=True)
                done = subprocess.run(command, env=env, check=False)
            if done.returncode:
                print(f"mutate: mutmut failed on {module} (exit {done.returncode})")
                return done.returncode
    low = False
    print("\nmodule                                   killed / total   score")
    for module in modules:
        killed, total, alive, pending = score(module)
        ratio = killed / total if total else 1.0
        low |= ratio < args.target
        note = f"  ({pending} not run)" if pending else ""
        timed_out = len(_timed_out(module))
        note += f"  ({timed_out} of the kills are timeouts)" if timed_out else ""
        print(f"{module:40} {killed:6} / {total:<6} {100 * ratio:6.1f}%{note}")
        for name in alive:
            print(f"    survived: {name}")
        for line in equivalents(module):
            print(f"    equivalent: {line}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
