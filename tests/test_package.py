import json

import pytest

import ocrheads_lib
from ocrheads_lib.paths import atomic_path, atomic_write_json, build_lock, model_slug, results_dir


def test_version_and_lazy_names():
    assert ocrheads_lib.__version__
    with pytest.raises(AttributeError, match="no attribute"):
        ocrheads_lib.not_a_name  # noqa: B018


def test_model_slug_and_results_dir(tmp_path):
    assert model_slug("Qwen/Qwen2-VL-7B-Instruct") == "Qwen__Qwen2-VL-7B-Instruct"
    assert model_slug("tiny") == "tiny"
    path = results_dir("Qwen/Qwen2-VL-2B-Instruct", tmp_path)
    assert path == tmp_path / "Qwen__Qwen2-VL-2B-Instruct" and path.is_dir()


def test_atomic_write_json_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic_write_json(target, {"a": [1, 2]})
    atomic_write_json(target, {"a": [3]})
    assert json.loads(target.read_text()) == {"a": [3]}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "ckpt.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"first")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_build_lock_makes_a_second_builder_wait_for_the_first(tmp_path):
    """Two chapters of the book may start building one cache folder at once: with the lock held by one
    process, another waits (here: times out with a message naming the lock file), and gets the lock once
    it is released."""
    import multiprocessing

    folder = tmp_path / "models" / "smol-vl-0123"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(folder, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(TimeoutError, match=r"\.smol-vl-0123\.lock"):
            with build_lock(folder, timeout=0.5):
                pass
    finally:
        release.set()
        holder.join(30)
    with build_lock(folder, timeout=5):
        assert (tmp_path / "models").is_dir()


def _hold_lock(folder, ready, release):
    with build_lock(folder):
        ready.set()
        release.wait(30)


def test_no_import_cycles_and_a_torch_free_command_line():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cycles = subprocess.run([sys.executable, str(root / "scripts" / "import_cycles.py")], capture_output=True,
                            text=True)
    assert cycles.returncode == 0, cycles.stdout
    probe = ("import sys, ocrheads_lib.cli as cli\n"
             "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules)")
    started = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)})
    assert started.stdout.strip().endswith("False"), started.stdout + started.stderr
