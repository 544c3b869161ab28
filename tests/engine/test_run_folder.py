"""One training per OUTPUT_DIR: earlier runs are resumed or replaced on purpose, a second
trainer is refused with the holder's PID, and a study's trainers end with the study."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from maskrcnn_pp.engine.run_folder import LOCK_FILE, RunFolderLock, check_earlier_run
from maskrcnn_pp.utils.errors import UserError
from tests.helpers import process_alive


def _finished_run(folder):
    folder.mkdir()
    for name in ("model_0000001.pth", "model_final.pth", "last_checkpoint", "metrics.json",
                 "events.out.tfevents.1.host", "config.yaml", "log.txt"):
        (folder / name).write_text("x")
    return folder


def test_an_earlier_training_is_resumed_or_replaced_on_purpose(tmp_path):
    run = _finished_run(tmp_path / "run")
    with pytest.raises(UserError, match=r"holds an earlier training \(last_checkpoint, "
                                        r"model_0000001.pth, model_final.pth\): --resume"):
        check_earlier_run(run, resume=False, overwrite=False)
    with pytest.raises(UserError, match="give one"):
        check_earlier_run(run, resume=True, overwrite=True)
    check_earlier_run(run, resume=True, overwrite=False)
    assert len(list(run.iterdir())) == 7
    check_earlier_run(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.txt"]
    check_earlier_run(run, resume=False, overwrite=False)         # nothing left to refuse
    check_earlier_run(tmp_path / "new", resume=False, overwrite=False)


@pytest.mark.parametrize("resume", [False, True])
def test_records_of_a_run_without_a_checkpoint_do_not_outlive_it(tmp_path, resume):
    run = _finished_run(tmp_path / "run")
    for name in ("model_0000001.pth", "model_final.pth", "last_checkpoint"):
        (run / name).unlink()
    check_earlier_run(run, resume=resume, overwrite=False)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.txt"]


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    with RunFolderLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"is being trained by process {os.getpid()} "):
            with RunFolderLock(tmp_path / "run"):
                pass
    with RunFolderLock(tmp_path / "run"):                          # released on exit
        pass


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from maskrcnn_pp.engine.run_folder import RunFolderLock
        with RunFolderLock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"process {holder.pid} "):
        RunFolderLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with RunFolderLock(tmp_path):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_children_die_with_a_parent_killed_by_sigkill():
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from maskrcnn_pp.utils.processes import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 preexec_fn=die_with_parent())
        print(child.pid, flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert process_alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while process_alive(child):
        assert time.time() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)
