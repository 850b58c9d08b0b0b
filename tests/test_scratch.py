"""The CPU kernels' kept memory: fastrnn.empty_cache(), FASTRNN_SCRATCH_LIMIT_MB, threads, recycled outputs.

Each thread keeps its largest internal buffer per slot (csrc/cpu/scratch.h) up to a limit per buffer;
empty_cache() frees every thread's; a thread's go when it exits. The blocks of large outputs that were freed
are kept for the next outputs (csrc/cpu/recycled_outputs.h), up to the same limit in all; a live output's
block is never handed out again. Results never depend on any of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import fastrnn

pytestmark = pytest.mark.skipif(not fastrnn.backend_info()["cpu_kernels"], reason="needs the compiled CPU kernels")


def _problem(T=40, B=8, H=64):
    torch.manual_seed(0)
    return fastrnn.LSTM(16, H, num_layers=2), torch.randn(T, B, 16)


def _train_step(T=40, B=8, H=64, problem=None):
    """One forward and backward of a 2-layer LSTM (input projection and gate-gradient buffers of [T, B, 4H]).
    problem: a (module, input) to share between threads (torch's global generator is not for concurrent use)."""
    m, x = problem or _problem(T, B, H)
    x = x.clone().requires_grad_()
    out, (h, c) = m(x)
    grads = torch.autograd.grad(out.sum() + h.sum() + c.sum(), [x, *m.parameters()])
    return [out.detach(), h.detach(), c.detach(), *grads]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_empty_cache_frees_what_is_kept_and_results_stay_the_same():
    fastrnn.empty_cache()
    assert fastrnn.scratch_memory()["kept_bytes"] == fastrnn.scratch_memory()["recycled_output_bytes"] == 0
    first = _train_step()
    kept = fastrnn.scratch_memory()["kept_bytes"]
    # at least the forward's input projection and the backward's gate gradients, [T, B, 4H] float each
    assert kept >= 2 * 40 * 8 * 4 * 64 * 4, kept
    # the workspaces ([T, B, 5H] float: 410 kB), freed by backward, kept for the next ones
    recycled = fastrnn.scratch_memory()["recycled_output_bytes"]
    assert recycled >= 2 * 40 * 8 * 5 * 64 * 4, recycled
    assert fastrnn.empty_cache() == kept + recycled
    assert fastrnn.scratch_memory()["kept_bytes"] == fastrnn.scratch_memory()["recycled_output_bytes"] == 0
    assert fastrnn.empty_cache() == 0
    assert _same(_train_step(), first)  # fresh buffers: the same numbers
    assert _same(_train_step(), first)  # reused buffers: the same numbers
    assert fastrnn.scratch_memory()["kept_bytes"] == kept
    assert fastrnn.scratch_memory()["recycled_output_bytes"] == recycled  # reused, not grown


def _gru_cell_step(H=256, copies=True):
    """One training step of a GRUCell: its weight gradients ([3H, H] float, 786 kB at H = 256) are recycled
    outputs, which autograd makes the parameters' .grad. Returns copies of them (the module and its gradients
    then go, their blocks back to the pool), or with copies=False the .grad tensors themselves."""
    torch.manual_seed(0)
    m, x = fastrnn.GRUCell(H, H), torch.randn(1, H)
    m(x).sum().backward()
    return [p.grad.clone() if copies else p.grad for p in m.parameters()]


def test_freed_outputs_serve_the_next_ones_and_live_ones_are_never_reused():
    fastrnn.empty_cache()
    first = _gru_cell_step()
    recycled = fastrnn.scratch_memory()["recycled_output_bytes"]
    assert recycled >= 2 * 3 * 256 * 256 * 4, recycled  # both weight gradients came back
    assert _same(_gru_cell_step(), first)
    assert fastrnn.scratch_memory()["recycled_output_bytes"] == recycled

    # Outputs kept alive: every later output gets other memory, and the live ones keep their values.
    torch.manual_seed(0)
    layer, x = fastrnn.GRU(256, 256), torch.randn(30, 4, 256)
    live = [torch.ops.fastrnn.gru_layer(x.unsqueeze(0).squeeze(0), layer.weight_ih_l0.detach().unsqueeze(0),
                                        layer.bias_ih_l0.detach().unsqueeze(0), torch.zeros(1, 4, 256),
                                        layer.weight_hh_l0.detach().unsqueeze(0), layer.bias_hh_l0.detach().unsqueeze(0),
                                        None, True) for _ in range(4)]
    copies = [[t.clone() for t in outs] for outs in live]
    pointers = [t.untyped_storage().data_ptr() for outs in live for t in outs if t.numel() > 0]
    assert len(set(pointers)) == len(pointers)
    for _ in range(3):
        _gru_cell_step()
        _train_step()
    for outs, saved in zip(live, copies):
        assert _same(outs, saved)


def test_a_recycled_output_is_an_ordinary_tensor():
    fastrnn.empty_cache()
    _gru_cell_step()
    grads = _gru_cell_step(copies=False)  # drawn from recycled blocks
    grad = grads[0]
    assert grad.untyped_storage().resizable()
    expected = grad.clone()
    grad.resize_(2 * grad.numel())  # a larger storage, through the same allocator
    assert torch.equal(grad[:expected.numel()], expected.flatten())
    fastrnn.empty_cache()  # frees kept blocks only: the live gradients stay
    assert torch.equal(grads[1], _gru_cell_step()[1])
    del grads, grad
    assert fastrnn.scratch_memory()["recycled_output_bytes"] > 0


def test_default_limit():
    info = fastrnn.scratch_memory()
    if "FASTRNN_SCRATCH_LIMIT_MB" in os.environ:
        pytest.skip("FASTRNN_SCRATCH_LIMIT_MB is set in this environment")
    assert info["limit_bytes"] == 256 << 20


def _kept_bytes_reach_zero(within_seconds=30.0):
    deadline = time.monotonic() + within_seconds
    while fastrnn.scratch_memory()["kept_bytes"] != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_thread_s_buffers_go_when_it_exits():
    fastrnn.empty_cache()
    results = []
    problem = _problem()
    worker = threading.Thread(target=lambda: results.append(_train_step(problem=problem)))
    worker.start()
    worker.join()
    # join() returns once the thread's Python part is done; its C++ thread-local buffers (and those of the
    # OpenMP team it started) are freed as the OS thread ends, a moment later: wait for that, within a bound.
    assert _kept_bytes_reach_zero(), fastrnn.scratch_memory()  # (the worker kept some while it ran: see below)
    assert _same(results[0], _train_step(problem=problem))
    assert fastrnn.scratch_memory()["kept_bytes"] > 0


def test_empty_cache_frees_the_buffers_of_other_threads():
    fastrnn.empty_cache()
    ran, release = threading.Event(), threading.Event()

    problem = _problem()

    def work():
        _train_step(problem=problem)
        ran.set()
        release.wait(60)  # alive, holding its buffers, until the main thread has looked

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert ran.wait(60)
        memory = fastrnn.scratch_memory()
        assert memory["kept_bytes"] > 0
        assert fastrnn.empty_cache() == memory["kept_bytes"] + memory["recycled_output_bytes"]
    finally:
        release.set()
        worker.join()


def test_empty_cache_while_other_threads_run():
    """empty_cache() from one thread while others run forward and backward: every result is still exact."""
    problem = _problem()
    expected = _train_step(problem=problem)
    errors = []

    def work():
        try:
            for _ in range(6):
                if not _same(_train_step(problem=problem), expected):
                    errors.append("a result changed")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        fastrnn.empty_cache()
    for w in workers:
        w.join()
    assert not errors, errors


_LIMIT_SCRIPT = r"""
import json, sys, torch, fastrnn
sys.path.insert(0, sys.argv[1])
from test_scratch import _train_step
small = _train_step(T=4, B=2, H=8)           # buffers of a few kB: under any limit but 0
kept_small = fastrnn.scratch_memory()["kept_bytes"]
big = _train_step(T=400, B=16, H=128)         # buffers of 400 * 16 * 512 * 4 bytes = 13 MB: over a 1 MB limit
print(json.dumps({"limit": fastrnn.scratch_memory()["limit_bytes"], "kept_small": kept_small,
                  "kept_after_big": fastrnn.scratch_memory()["kept_bytes"],
                  "recycled": fastrnn.scratch_memory()["recycled_output_bytes"],
                  "sums": [float(t.double().sum()) for t in small + big]}))
"""


def _run_with_limit(limit):
    env = dict(os.environ)
    env.pop("FASTRNN_SCRATCH_LIMIT_MB", None)
    if limit is not None:
        env["FASTRNN_SCRATCH_LIMIT_MB"] = limit
    done = subprocess.run([sys.executable, "-c", _LIMIT_SCRIPT, os.path.dirname(__file__)], env=env,
                          capture_output=True, text=True, timeout=300)
    return done


def test_limit_keeps_only_buffers_up_to_it_and_results_do_not_change():
    import json

    runs = {}
    for limit in (None, "1", "0"):
        done = _run_with_limit(limit)
        assert done.returncode == 0, done.stderr
        runs[limit] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs[None]["limit"] == 256 << 20 and runs["1"]["limit"] == 1 << 20 and runs["0"]["limit"] == 0
    assert runs[None]["kept_after_big"] > 13_000_000  # kept under the default limit
    assert 0 < runs["1"]["kept_small"] == runs["1"]["kept_after_big"] <= 4 << 20  # the big ones went
    assert runs["0"]["kept_small"] == runs["0"]["kept_after_big"] == 0
    # freed outputs' blocks: up to the limit in all (the big step's workspaces are 400 * 16 * 640 * 4 = 16 MB each)
    assert 16 << 20 < runs[None]["recycled"] <= 256 << 20
    assert runs["1"]["recycled"] <= 1 << 20  # the big step's blocks are over it
    assert runs["0"]["recycled"] == 0
    assert runs[None]["sums"] == runs["1"]["sums"] == runs["0"]["sums"]


@pytest.mark.parametrize("value", ("lots", "-1", "1.5"))
def test_bad_limit_is_a_clear_error(value):
    done = _run_with_limit(value)
    assert done.returncode != 0
    assert "FASTRNN_SCRATCH_LIMIT_MB must be a whole number of megabytes >= 0" in done.stderr, done.stderr[-2000:]
    assert f"got '{value}'" in done.stderr
