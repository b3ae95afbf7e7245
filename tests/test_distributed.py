"""Distributed training: W processes with B pairs each train exactly like one process with W·B."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from slq.data import load_jsonl
from slq.distributed import sync_gradients
from slq.loss import ContrastiveLoss
from slq.retriever import SLQRetriever
from slq.train import BatchPlan, TrainConfig, train

CONFIG = dict(num_queries=4, epochs=2, lr=1e-2)


def _first_step_gradients(retriever, data, rank: int, world_size: int):
    """Gradients of the global loss on the first global batch, after syncing across processes.

    Compared directly, because AdamW's normalised steps would hide a wrongly scaled gradient.
    """
    loss_fn = ContrastiveLoss(rank=rank, world_size=world_size)
    records, texts = BatchPlan(data, TrainConfig(batch_size=8 // world_size, **CONFIG), rank, world_size)(0)
    loss_fn(retriever.embed_texts(texts), retriever.embed_images(records)).backward()
    if world_size > 1:
        sync_gradients([retriever.queries.weight], loss_fn.log_temperature, world_size)
    query_grad, temperature_grad = retriever.queries.weight.grad.clone(), loss_fn.log_temperature.grad.clone()
    retriever.queries.weight.grad = None
    return query_grad, temperature_grad


def _worker(rank: int, world_size: int, init_file: str, backbone: str, data: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        retriever = SLQRetriever.from_pretrained(backbone, num_queries=4, seed=0)
        query_grad, temperature_grad = _first_step_gradients(retriever, load_jsonl(data), rank, world_size)
        result = train(retriever, load_jsonl(data), TrainConfig(batch_size=4, **CONFIG), progress=False)
        save_file({"queries": retriever.queries.weight.detach().contiguous(), "query_grad": query_grad,
                   "temperature_grad": temperature_grad,
                   "losses": torch.tensor([h["loss"] for h in result.history])}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(tiny_dirs, shapes_jsonl, tmp_path):
    out = str(tmp_path / "queries")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tiny_dirs["qwen2_vl"]), str(shapes_jsonl), out),
             nprocs=2, join=True)
    rank0, rank1 = load_file(f"{out}.0"), load_file(f"{out}.1")
    assert torch.equal(rank0["queries"], rank1["queries"]), "replicas diverged"

    single = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=4, seed=0)
    query_grad, temperature_grad = _first_step_gradients(single, load_jsonl(shapes_jsonl), 0, 1)
    assert torch.allclose(rank0["query_grad"], query_grad, atol=1e-6), "the synced gradient is not the global one"
    assert torch.allclose(rank0["temperature_grad"], temperature_grad, atol=1e-6)
    history = train(single, load_jsonl(shapes_jsonl), TrainConfig(batch_size=8, **CONFIG), progress=False).history
    assert torch.allclose(rank0["losses"], torch.tensor([h["loss"] for h in history]), atol=1e-5)
    assert torch.allclose(rank0["queries"], single.queries.weight.detach(), atol=1e-5)


@pytest.mark.slow
def test_torchrun_cli_writes_one_adapter_like_a_single_process(tiny_dirs, shapes_jsonl, tmp_path):
    """`torchrun --nproc-per-node 2 -m slq.cli train` on the CPU (gloo) equals one process with the global batch."""
    import subprocess
    import sys

    common = ["train", "--backbone", str(tiny_dirs["qwen2_vl"]), "--train", str(shapes_jsonl), "--num-queries", "4",
              "--epochs", "1", "--lr", "1e-2"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                "-m", "slq.cli"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*launcher, *common, "--batch-size", "4", "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "slq.cli", *common, "--batch-size", "8", "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert one.returncode == 0, one.stderr[-3000:]
    q_two = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))["queries"]
    q_one = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))["queries"]
    assert torch.allclose(q_two, q_one, atol=1e-5)
