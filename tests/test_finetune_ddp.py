"""Data parallel: 2 processes on gloo give the weights of 1 process with the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from speccert.training.finetune import finetune
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_mlp


def _never(graph) -> Measurement:  # noqa: ANN001
    with torch.no_grad():
        out = graph(torch.zeros(1, *graph.input_shape, dtype=graph.dtype))
    return Measurement(0.0, {0.1: float(out.abs().sum()) * 0.0}, 1.0)


def _train(tag: str, folder: str) -> None:
    x, y = separable_data(80, (6,), seed=1)
    g = toy_mlp(dtype=torch.float64)
    res = finetune(
        g,
        (x, y),
        (x[:10], y[:10]),
        targets=["cra@0.1>=0.9"],
        penalty="spectral",
        penalty_weight=0.5,
        epochs=1,
        lr=1e-2,
        batch_size=20,
        seed=7,
        evaluator=_never,
    )
    rank = int(os.environ.get("RANK", "0"))
    assert res.graph is not None
    torch.save(
        {k: v.detach() for k, v in res.graph.parameters().items()}, Path(folder) / f"{tag}-rank{rank}.pt"
    )


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        _train("ddp", folder)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    _train("single", str(tmp_path))
    # fork, not spawn: no second import of torch (most of the cost); children use one thread each
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    single = torch.load(tmp_path / "single-rank0.pt")
    r0 = torch.load(tmp_path / "ddp-rank0.pt")
    r1 = torch.load(tmp_path / "ddp-rank1.pt")
    moved = False
    for k in single:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)  # ranks agree exactly
        torch.testing.assert_close(r0[k], single[k], rtol=1e-9, atol=1e-11)  # = one process, global batch
        moved |= not torch.allclose(single[k], toy_mlp(dtype=torch.float64).parameters()[k])
    assert moved
