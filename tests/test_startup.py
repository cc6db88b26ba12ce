"""What every ``diag analyze`` process pays besides its captures: the compiled loops, the imports, the exit.

Each test runs a whole analysis of the shipped captures in a fresh Python
process (start-up and exit are what is under test, so it cannot share this one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT

CAPTURES = sorted((PROJECT / "captures").glob("*.pcapng"))

# The analysis, then what numba did: every compiled function of diag's modules with its cache hits and
# misses, and whether numba's compiler was made ready (its target context refreshed: registries installed).
COMPILED_REPORT = """
import json, sys
from diag.cli import main

status = main(["analyze", "pcap", "--json", "/dev/null", "--force", "--quiet", *sys.argv[2:]])
from numba.core.dispatcher import Dispatcher
from numba.core.registry import cpu_target

functions = {}
for module in list(sys.modules.values()):
    if getattr(module, "__name__", "").startswith("diag"):
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher) and value.__module__ == module.__name__:
                functions[f"{module.__name__}.{name}"] = value.stats
with open(sys.argv[1], "w") as out:
    json.dump({
        "status": status,
        "loaded": sorted(name for name, stats in functions.items() if sum(stats.cache_hits.values())),
        "compiled": sorted(name for name, stats in functions.items() if sum(stats.cache_misses.values())),
        "registries": len(cpu_target.target_context._registries),
    }, out)
"""

READ_STARTS = """
import sys
import diag.capture.sidebyside as sidebyside
from diag.cli import main


class Recorded(sidebyside.BackgroundRead):
    def __init__(self, *args, **kwargs):
        print("pandas loaded when the read started:", "pandas" in sys.modules, file=sys.stderr)
        super().__init__(*args, **kwargs)


sidebyside.BackgroundRead = Recorded
status = main(["analyze", "pcap", "--json", "/dev/null", "--force", "--quiet", *sys.argv[1:]])
from diag.cli import COMMANDS
others = sorted(name for name in COMMANDS if name != "analyze" and f"diag.commands.{name}" in sys.modules)
print("other commands imported:", others, file=sys.stderr)
sys.exit(status)
"""


# The command as the diag script runs it, in a process holding what an exit must finish: an atexit function,
# a temporary directory left open (as a flow table kept on disk is), a thread still writing, an idle thread
# pool (as the payload digest's), and an object whose finalizer would only run if the heap were torn down.
EXIT = """
import atexit, gc, os, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor
from diag.cli import main

ThreadPoolExecutor(1).submit(int).result()

atexit.register(lambda: print("atexit ran, collector", gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr))
kept = tempfile.TemporaryDirectory(dir=sys.argv[1])


class TornDown:
    def __del__(self, write=os.write):  # late in a teardown the module's globals may be gone
        write(2, b"torn down\\n")


torn_down = TornDown()
threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", file=sys.stderr))).start()
main(["analyze", "pcap", "--json", "-", *sys.argv[2:]], own_process=True)
print("main returned", file=sys.stderr)
"""


def _python(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", *map(str, args)], capture_output=True, text=True, timeout=300, cwd=PROJECT
    )


def test_a_later_process_loads_every_compiled_loop_from_the_cache_without_readying_the_compiler(
    tmp_path: Path,
) -> None:
    report = tmp_path / "numba.json"
    # The first run compiles what the cache lacks (a fresh checkout, an edited kernel); the second must not.
    for _ in range(2):
        result = _python(COMPILED_REPORT, report, *CAPTURES)
        assert result.returncode == 0, result.stderr
    facts = json.loads(report.read_text())
    assert facts["status"] == 0
    assert facts["compiled"] == []
    # The packet loops, the flow table and the correlation across points all ran, from the cache.
    assert {"diag.capture.pcapng._skim_blocks", "diag.flows.walk.walk_flows"} <= set(facts["loaded"])
    assert len(facts["loaded"]) >= 8
    # numba's typing and lowering rules were never registered: loading did not need them.
    assert facts["registries"] == 0


def test_the_captures_are_read_while_pandas_and_the_analysis_load(tmp_path: Path) -> None:
    result = _python(READ_STARTS, *CAPTURES)
    assert result.returncode == 0, result.stderr
    assert "pandas loaded when the read started: False" in result.stderr
    # Only the analysis's own parser was built: no other command's module was imported for it.
    assert "other commands imported: []" in result.stderr
    # --flow needs pandas to be parsed before the read (a typo costs no analysis): it still works.
    focused = _python(READ_STARTS, "--flow", "198.51.100.10", *CAPTURES)
    assert focused.returncode == 0, focused.stderr
    assert "pandas loaded when the read started: True" in focused.stderr


def test_an_analysis_ends_its_process_without_teardown_but_with_what_an_exit_finishes(tmp_path: Path) -> None:
    result = _python(EXIT, tmp_path, *CAPTURES)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"]  # the whole document, flushed
    lines = result.stderr.splitlines()
    # In an exit's order; no "main returned", no "torn down". The collector, off while the modules loaded,
    # runs again, what they made kept out of its collections.
    assert lines == ["thread done", "atexit ran, collector True True"]
    assert not list(tmp_path.iterdir())
    # A failure returns to the caller, which exits as usual.
    failed = _python(EXIT, tmp_path, tmp_path / "missing.pcap")
    assert failed.returncode == 0 and "main returned" in failed.stderr and "torn down" in failed.stderr


# As COMPILED_REPORT, with the numba internals the lean load relies on gone, as another numba release may do.
WITHOUT_LEAN_LOAD = """
import sys
import diag.compiled

diag.compiled.nrt = None  # nrt.rtsys no longer where the lean load looks for it
""" + COMPILED_REPORT.replace("import json, sys\n", "import json\n")


def test_the_compiled_loops_still_load_when_numba_internals_move(tmp_path: Path) -> None:
    report = tmp_path / "numba.json"
    expected = tmp_path / "expected.json"
    for _ in range(2):  # a first run compiles what the cache lacks
        assert _python(COMPILED_REPORT, expected, *CAPTURES).returncode == 0
    result = _python(WITHOUT_LEAN_LOAD, report, *CAPTURES)
    assert result.returncode == 0, result.stderr
    facts = json.loads(report.read_text())
    assert facts["status"] == 0 and facts["compiled"] == []
    assert facts["loaded"] == json.loads(expected.read_text())["loaded"]
    assert facts["registries"] > 0  # loaded numba's own way, its compiler made ready first


# The loops the stages after reading call first, as ``analyze`` names them: how many versions of each were
# loaded when the read's result was taken (the stages start only then).
LOADED_WHILE_READING = """
import json, sys
from importlib import import_module
import diag.capture.sidebyside as sidebyside
from diag.cli import main
from diag.commands.analyze import LOOPS_AFTER_READING

loaded = {}


class Recorded(sidebyside.BackgroundRead):
    def result(self):
        files = super().result()
        for module, names in LOOPS_AFTER_READING.items():
            for name in names:
                function = getattr(import_module(module), name, None)
                loaded[f"{module}.{name}"] = len(getattr(function, "overloads", {}))
        return files


sidebyside.BackgroundRead = Recorded
status = main(["analyze", "pcap", "--json", "/dev/null", "--force", "--quiet", *sys.argv[2:]])
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "loaded": loaded}, out)
"""


def test_the_stages_after_reading_have_their_compiled_loops_loaded_while_the_captures_are_read(
    tmp_path: Path,
) -> None:
    report = tmp_path / "loaded.json"
    for _ in range(2):  # a first run compiles what the cache lacks
        result = _python(LOADED_WHILE_READING, report, *CAPTURES)
        assert result.returncode == 0, result.stderr
    facts = json.loads(report.read_text())
    assert facts["status"] == 0
    # Every loop named is still there under that name (a rename would quietly lose the head start), and
    # was loaded from the cache before the flow table, the correlation and the diagnosis began.
    assert facts["loaded"] and all(count >= 1 for count in facts["loaded"].values()), facts["loaded"]


def test_loading_from_the_cache_never_compiles(tmp_path: Path) -> None:
    from diag.compiled import compiled, load_from_cache

    def never_called(values: np.ndarray) -> int:
        return len(values)

    function = compiled(never_called)
    load_from_cache([function, None, len])  # nothing cached for it: nothing loaded, nothing compiled
    assert function.overloads == {}  # type: ignore[attr-defined]
    assert not sum(function.stats.cache_misses.values())  # type: ignore[attr-defined]


def test_each_command_word_names_the_module_that_registers_it() -> None:
    from diag import cli

    whole = cli.build_parser()
    commands = next(action for action in whole._actions if action.dest == "command")
    assert sorted(commands.choices) == sorted(cli.COMMAND_WORDS)  # type: ignore[arg-type]
    for word, module in cli.COMMAND_WORDS.items():
        alone = next(action for action in cli.build_parser(module)._actions if action.dest == "command")
        assert list(alone.choices) == [word]  # type: ignore[arg-type]


def test_a_command_line_without_a_known_command_gets_the_whole_parser() -> None:
    from diag import cli

    assert cli._command_of(["analyze", "pcap", "x.pcap"]) == "analyze"
    assert cli._command_of(["run-scenario"]) == "scenario"
    for argv in ([], ["--help"], ["--version"], ["analyse", "pcap"], ["-h", "analyze"]):
        assert cli._command_of(argv) is None
    # A mistyped command is told every command there is, as before.
    result = subprocess.run(
        [sys.executable, "-m", "diag.cli", "analyse"], capture_output=True, text=True, cwd=PROJECT, timeout=60
    )
    assert result.returncode == 2
    assert "invalid choice: 'analyse'" in result.stderr and "'run-scenario'" in result.stderr


@pytest.mark.parametrize(
    ("argv", "prog", "words"),
    [
        (["analyze", "pcap", "--flows", "bogus", "x.pcap"], "diag analyze pcap", ["--flows", "'bogus'", "'all'"]),
        (["analyze", "pcap", "--bogus", "x.pcap"], "diag analyze pcap", ["unrecognized arguments: --bogus"]),
        (["analyze", "pcap"], "diag analyze pcap", ["required", "PATH"]),
        (["analyze", "fleet", "a", "b"], "diag analyze fleet", ["unrecognized arguments: b"]),
        (["flows", "x.pcap", "--max-memory"], "diag flows", ["--max-memory", "expected one argument"]),
        (["--bogus"], "diag", ["unrecognized arguments: --bogus"]),
        (["--bogus", "analyze", "pcap", "x.pcap"], "diag", ["unrecognized arguments: --bogus"]),
    ],
    ids=["bad-choice", "unknown-option", "no-capture", "extra-argument", "missing-value", "diag-option", "before"],
)
def test_a_usage_mistake_is_one_line_naming_the_command(argv: list[str], prog: str, words: list[str]) -> None:
    """Bad usage ends as every other bad input does: one line, exit status 2, here pointing at the
    command's own --help (argparse would print its usage above, and an unknown option against `diag`)."""
    result = subprocess.run(
        [sys.executable, "-m", "diag.cli", *argv], capture_output=True, text=True, cwd=PROJECT, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: ") and lines[0].endswith(f"see '{prog} --help'"), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
