"""charrnn.threads: torch's threads and numpy's BLAS threads, set together, and the sampling policy."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from charrnn import threads
from charrnn.cli import cli
from charrnn.threads import blas_threads, sampling_threads, set_threads, torch_threads

HAS_BLAS_POOL = any(lib.get("user_api") == "blas" for lib in threadpool_info())


@pytest.fixture
def restore_threads():
    """Put torch's and numpy's BLAS thread counts back as they were."""
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # on exit, restores what the test changed
        yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not HAS_BLAS_POOL, reason="numpy's BLAS is not one threadpoolctl can see")
def test_set_threads_sets_torch_and_numpys_blas(restore_threads):
    set_threads(1)
    assert torch.get_num_threads() == 1 and blas_threads() == 1
    set_threads(2)
    assert torch.get_num_threads() == 2 and blas_threads() == 2
    set_threads(None)  # leaves both
    assert torch.get_num_threads() == 2 and blas_threads() == 2


def test_one_cpu_stream_runs_torch_on_one_thread_only_when_blas_has_several(monkeypatch):
    monkeypatch.setattr(threads, "blas_threads", lambda: 2)
    assert sampling_threads(1, torch.device("cpu")) == 1
    assert sampling_threads(2, torch.device("cpu")) is None
    assert sampling_threads(1, torch.device("cuda")) is None
    monkeypatch.setattr(threads, "blas_threads", lambda: 1)
    assert sampling_threads(1, torch.device("cpu")) is None


def test_torch_threads_restores_the_count_even_after_an_error(restore_threads):
    torch.set_num_threads(2)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), torch_threads(1):
        raise KeyError("boom")
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("num_samples, want", [(1, 1), (2, 2)])
def test_cli_samples_one_stream_with_torch_on_one_thread(
    runner, trained_run, monkeypatch, restore_threads, num_samples, want
):
    import charrnn.api as api

    monkeypatch.setattr(threads, "blas_threads", lambda: 2)
    seen = []
    real = api.generate_steps

    def spy(*args, **kwargs):
        for chars in real(*args, **kwargs):
            seen.append(torch.get_num_threads())
            yield chars

    monkeypatch.setattr(api, "generate_steps", spy)
    out, _ = trained_run
    torch.set_num_threads(2)
    result = runner.invoke(
        cli, ["sample", str(out / "best.pt"), "-n", "5", "--num-samples", str(num_samples), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert seen == [want] * 5
    assert torch.get_num_threads() == 2
