"""One writer per folder: a live writer's lock refuses a second one and names it; a killed writer's lock
is taken over and says so; a finished or failed writer leaves no lock behind."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys

import pytest
from helpers import chat_records, write_jsonl

from gradsift.cli import main
from gradsift.utils.locks import LOCK_NAME, FolderLockedError, folder_lock

HOLD = ("import sys\nfrom gradsift.utils.locks import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.readline()\n")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/out until its stdin closes (or it is killed)."""
    folder = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "held"
    yield folder, child
    if child.poll() is None:
        child.kill()
    child.wait()


def test_a_live_writer_refuses_a_second_one_and_names_itself(holder, capsys):
    folder, child = holder
    with pytest.raises(FolderLockedError, match=rf"pid {child.pid} on host {socket.gethostname()}, started 20"):
        with folder_lock(folder):
            pass
    child.stdin.close()  # the holder finishes: the folder is free and its lock file gone
    child.wait()
    assert not (folder / LOCK_NAME).exists()
    with folder_lock(folder):
        pass
    assert "took over" not in capsys.readouterr().err


def test_a_command_is_refused_with_a_one_line_error(holder, tmp_path, capsys):
    folder, child = holder
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(random.Random(0), 8, "p"))
    target = write_jsonl(tmp_path / "target.jsonl", chat_records(random.Random(1), 2, "t"))
    code = main(["select", "--method", "random", "--pool", str(pool), "--target", str(target), "--count", "2",
                 "--output", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and f"is being written by pid {child.pid}" in err and len(err.strip().splitlines()) == 1
    assert not (folder / "summary.json").exists()


def test_a_killed_writers_lock_is_taken_over_and_says_so(holder, capsys):
    folder, child = holder
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (folder / LOCK_NAME).exists()  # a killed process cannot clean up
    with folder_lock(folder):
        assert f"took over the lock of {folder} left by pid {child.pid}" in capsys.readouterr().err
    assert not (folder / LOCK_NAME).exists()


def test_a_failed_writer_leaves_no_lock(tmp_path, capsys):
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path):
        pass
    assert "took over" not in capsys.readouterr().err
