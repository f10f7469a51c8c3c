"""`make run` owns its children: however it ends, Synapse and the bots end with it, and
what an earlier killed run left is stopped by the next one. Runs `python -m devtools.run`
(what `make run` runs) with its state and ports moved next to the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.homeserver import REPO_ROOT, free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("POLICE_TEST_POSTGRES")), reason="make run uses SQLite only; tested in the SQLite run"
)
READY = "Press Ctrl-C to stop."


def processes_using(directory: Path) -> list[int]:
    """Processes with ``directory`` on their command line (Synapse and the bots name their
    config files there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in command:
            found.append(int(entry.name))
    return found


class MakeRun:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.output = directory.parent / "make-run.out"
        ports = ",".join(str(free_port()) for _ in range(3))
        self.env = {**os.environ, "POLICE_RUN_DIR": str(directory), "POLICE_RUN_PORTS": ports}
        self.process: subprocess.Popen[bytes] | None = None
        #: how many runs got ready so far (each prints the ready line once)
        self.runs = 0

    def start(self) -> None:
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devtools.run"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.text().count(READY) > self.runs, 180, "make run did not get ready")
        self.runs += 1

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def children(self) -> list[int]:
        return processes_using(self.directory)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    made = MakeRun(tmp_path_factory.mktemp("make-run") / "var")
    yield made
    for pid in made.children():
        os.kill(pid, signal.SIGKILL)


def test_sigterm_stops_synapse_and_the_bots(run: MakeRun) -> None:
    run.start()
    assert len(run.children()) == 3, run.text()  # Synapse and the two bots
    assert run.process is not None
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(120) == 0
    assert run.children() == []
    assert "Stopping the bots and Synapse (SIGTERM)" in run.text()
    assert not (run.directory / "make-run.pids").exists()


def test_sigkill_leaves_nothing_behind(run: MakeRun) -> None:
    run.start()
    assert run.process is not None
    run.process.kill()
    run.process.wait(30)
    wait_for(lambda: run.children() == [], 60, "Synapse or a bot outlived a killed make run")


def test_a_process_an_earlier_run_left_is_stopped_with_a_message(run: MakeRun) -> None:
    """A process left by a run before this version (or one that survived its parent): the
    pid file names it, and the next run stops it instead of failing on its port."""
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", str(run.directory / "homeserver")],
        start_new_session=True,
    )
    (run.directory / "make-run.pids").write_text(f'{{"Synapse": {leftover.pid}}}')
    run.start()
    try:
        assert f"Stopping Synapse (pid {leftover.pid}), left running by an earlier `make run`" in run.text()
        assert leftover.wait(30) is not None
    finally:
        assert run.process is not None
        run.process.send_signal(signal.SIGTERM)
        run.process.wait(120)
    wait_for(lambda: run.children() == [], 60, "Synapse or a bot outlived make run")
