"""The ``keep_host_memory`` speed switch: glibc's malloc keeps freed memory instead of unmapping large blocks, so a
big tensor allocated again reuses pages the process owns instead of faulting fresh ones in."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys

import pytest
import torch

from rgbx.engine import host_memory
from rgbx.engine.fastpath import SpeedOptions, backend_flags
from rgbx.engine.host_memory import glibc_malloc_available, keeps_host_memory, set_keep_host_memory

pytestmark = pytest.mark.skipif(not glibc_malloc_available(), reason="tunes glibc's malloc only")

# A fresh process (no torch: quick to start) that loads host_memory.py alone, mallocs, fills and frees a 64 MiB block
# 20 times to warm the allocator up, then prints the minor page faults per block over 5 more.
FAULTS_PER_BLOCK = """
import ctypes, importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[1])
hm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hm)
if sys.argv[2] == "keep":
    assert hm.set_keep_host_memory(True) and hm.keeps_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 64 << 20
def block():
    p = libc.malloc(size)
    libc.memset(p, 1, size)
    libc.free(p)
for _ in range(20):
    block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_block(mode: str) -> float:
    r = subprocess.run([sys.executable, "-c", FAULTS_PER_BLOCK, host_memory.__file__, mode], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_where_glibc_would_fault_fresh_pages_in():
    # 64 MiB is 16384 pages of 4 KiB (32 of 2 MiB where transparent huge pages are always on)
    assert _faults_per_block("default") >= 16  # glibc unmaps a freed block this large: fresh pages every time
    assert _faults_per_block("keep") < 16  # kept: the block is served from memory the process already touched


def test_big_tensors_reuse_kept_memory_in_this_process():
    set_keep_host_memory(True)
    assert keeps_host_memory()
    for _ in range(20):
        torch.empty(16 << 20).fill_(1)  # 64 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20).fill_(1)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5 < 16


def test_backend_flags_set_the_switch_on_entry_and_leave_it_so():
    with backend_flags(SpeedOptions.exact()):
        assert not keeps_host_memory()
    assert not keeps_host_memory()
    with backend_flags(SpeedOptions.exact().with_(keep_host_memory=True)):
        assert keeps_host_memory()
    assert keeps_host_memory()  # sticky: giving the memory back would make the next call fault it in again
    with backend_flags(None):  # no options: nothing changes
        assert keeps_host_memory()
    assert SpeedOptions.fast("cpu").keep_host_memory and not SpeedOptions.fast("cuda").keep_host_memory
    assert "keep-host-memory" in SpeedOptions.fast("cpu").describe()
    set_keep_host_memory(False)
    assert not keeps_host_memory()



# A malloc of its own in front of glibc's, as LD_PRELOAD=libjemalloc.so / libtcmalloc.so puts one
INTERPOSED_MALLOC = r"""
#include <stddef.h>
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
void *malloc(size_t n) { return __libc_malloc(n); }
void free(void *p) { __libc_free(p); }
void *calloc(size_t a, size_t b) { return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
"""

SWITCH_REPORT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[1])
hm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hm)
print(hm.glibc_malloc_available(), hm.set_keep_host_memory(True), hm.keeps_host_memory())
"""


def test_a_preloaded_allocator_is_not_reported_as_tuned(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build a malloc to preload")
    (tmp_path / "malloc.c").write_text(INTERPOSED_MALLOC)
    built = subprocess.run([compiler, "-shared", "-fPIC", "-o", tmp_path / "malloc.so", tmp_path / "malloc.c"],
                           capture_output=True, text=True, timeout=60)
    if built.returncode != 0:
        pytest.skip(f"could not build a malloc to preload: {built.stderr[-300:]}")
    preloaded = {"LD_PRELOAD": str(tmp_path / "malloc.so")}
    loads = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **preloaded})
    if loads.returncode != 0:  # a C library without the __libc_* entry points the stand-in calls
        pytest.skip(f"the stand-in malloc does not load here: {loads.stderr[-300:]}")

    def report(env: dict[str, str]) -> list[str]:
        r = subprocess.run([sys.executable, "-c", SWITCH_REPORT, host_memory.__file__], capture_output=True,
                           text=True, timeout=60, env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert report({}) == ["True", "True", "True"]
    # glibc's mallopt would succeed, but tune an allocator the process no longer calls
    assert report(preloaded) == ["False", "False", "False"]
