"""The allocator's thresholds: set by every entry point, handed to TorchServe's workers, the user's choice kept."""

import ast
import subprocess
import sys
from pathlib import Path

from training.infra import memory

ROOT = Path(__file__).resolve().parents[1]
# Where a 64 MiB allocation lands after keep_freed_memory(): in the heap when the mmap threshold was raised,
# else in a mapping of its own (glibc's default for anything over 32 MiB).
PROBE = """
import ctypes
from training.infra.memory import keep_freed_memory
keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
pointer = libc.malloc(64 << 20)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print("heap" if any(int(low, 16) <= pointer < int(high, 16) for low, high in heap) else "mmap")
"""


def probe(env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_large_allocations_stay_in_the_heap_unless_the_user_chose_otherwise():
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}
    assert probe(clean) == "heap"
    assert probe(clean | {memory.OPT_OUT: "system"}) == "mmap"
    assert probe(clean | {"MALLOC_MMAP_THRESHOLD_": "131072"}) == "mmap"  # the user's own setting wins


def test_the_command_line_sets_them_before_it_imports_anything_that_allocates():
    statements = ast.parse((ROOT / "training" / "__main__.py").read_text()).body
    ours = [s for s in statements if isinstance(s, ast.ImportFrom)]  # the standard library's allocate nothing large
    calls = [s for s in statements if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)]
    assert ours[0].module == "training.infra.memory" and calls[0].value.func.id == "keep_freed_memory"
    cli = next(s for s in ours if s.module == "training.cli")
    assert calls[0].lineno < cli.lineno  # before `training.cli` (torch, MLflow) is imported


def test_processes_started_fresh_get_the_same_thresholds_unless_the_user_chose(monkeypatch):
    for name in (*memory.ENVIRONMENT, memory.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    assert memory.child_environment() == memory.ENVIRONMENT
    monkeypatch.setenv(memory.OPT_OUT, "system")
    assert memory.child_environment() == {} and not memory.keep_freed_memory()
