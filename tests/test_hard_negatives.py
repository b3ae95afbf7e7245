"""Hard negatives: a pair's own negatives join its candidates in the loss, and training uses them."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from slq.data import Input, PairDataset, PairRecord, load_jsonl, load_pairs
from slq.errors import SettingError
from slq.loss import ContrastiveLoss
from slq.retriever import SLQRetriever
from slq.train import BatchPlan, TrainConfig, contrastive_backward, train

from helpers import slq


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_loss_counts_negatives_as_extra_candidates_of_every_text():
    texts, images, negatives = _unit(3, 8), _unit(3, 8, seed=1), _unit(4, 8, seed=2).requires_grad_()
    loss_fn = ContrastiveLoss(temperature=0.1)
    loss = loss_fn(texts, images, negatives)
    logits = texts @ torch.cat([images, negatives.detach()]).T / 0.1  # (3, 7)
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy((texts @ images.T / 0.1).T, labels)) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    assert negatives.grad.abs().max() > 0, "the negatives get no gradient: they are ignored"
    assert loss.item() > loss_fn(texts, images).item(), "more candidates must make the task harder"


def test_a_negative_close_to_its_query_costs_more_than_a_far_one():
    texts, images = _unit(2, 8), _unit(2, 8, seed=1)
    loss_fn = ContrastiveLoss(temperature=0.1)
    near, far = loss_fn(texts, images, texts[:1].clone()), loss_fn(texts, images, -texts[:1].clone())
    assert near.item() > far.item() + 0.5


def _pairs(shapes_jsonl, negatives: int = 2) -> PairDataset:
    """Caption -> image pairs whose negatives are other images of the set (the next ones)."""
    records = load_jsonl(shapes_jsonl).records
    pairs = [PairRecord(Input(r.captions[0], instruction="Find the image:"), Input(image=r.image),
                        tuple(Input(image=records[(i + k) % len(records)].image) for k in range(1, negatives + 1)),
                        f"pairs:{i}") for i, r in enumerate(records)]
    return PairDataset(pairs, "pairs")


def test_negatives_change_the_gradient_and_chunks_keep_it(tiny_dirs, shapes_jsonl):
    encoder = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=4)
    plan = BatchPlan(_pairs(shapes_jsonl), TrainConfig(batch_size=4, hard_negatives=2))
    targets, queries = plan(0)
    negatives = plan.negatives(0)
    assert len(negatives) == 8 and all(isinstance(n, Input) for n in negatives)

    def step(negs, chunk_size=0):
        encoder.queries.weight.grad = None
        loss = contrastive_backward(encoder, ContrastiveLoss(), queries, targets, chunk_size=chunk_size, negatives=negs)
        return loss.item(), encoder.queries.weight.grad.clone()

    (plain_loss, plain), (loss, grad), (chunked_loss, chunked) = step(None), step(negatives), step(negatives, 3)
    assert loss > plain_loss and (grad - plain).abs().max() > 1e-4, "the negatives did not reach the loss"
    assert chunked_loss == pytest.approx(loss, abs=1e-5) and (chunked - grad).abs().max() < 1e-5


def test_the_plan_draws_each_pairs_own_negatives_deterministically(shapes_jsonl):
    data = _pairs(shapes_jsonl, negatives=3)
    plan = BatchPlan(data, TrainConfig(batch_size=4, hard_negatives=2, seed=5))
    targets, _ = plan(1)
    negatives = plan.negatives(1)
    owners = {r.positive.image: r for r in data.records}
    for i, target in enumerate(targets):
        mine = negatives[2 * i: 2 * i + 2]
        assert len(set(mine)) == 2 and set(mine) <= set(owners[target.image].negatives)
    assert plan.negatives(1) == negatives
    halves = [BatchPlan(data, TrainConfig(batch_size=2, hard_negatives=2, seed=5), rank, 2) for rank in (0, 1)]
    assert halves[0].negatives(1) + halves[1].negatives(1) == negatives, "processes must split the same draw"


def test_asking_for_more_negatives_than_a_pair_has_names_it(shapes_jsonl):
    with pytest.raises(SettingError, match="pairs:0"):
        BatchPlan(_pairs(shapes_jsonl, negatives=1), TrainConfig(batch_size=4, hard_negatives=2))
    with pytest.raises(SettingError, match="needs pair data"):
        BatchPlan(load_jsonl(shapes_jsonl), TrainConfig(batch_size=4, hard_negatives=1))


def test_training_on_pairs_with_negatives_lowers_the_loss(tiny_dirs, shapes_jsonl):
    data = PairDataset(_pairs(shapes_jsonl).records[:4], "four")
    encoder = SLQRetriever.from_pretrained(tiny_dirs["qwen2_vl"], num_queries=4)
    history = train(encoder, data, TrainConfig(num_queries=4, batch_size=4, epochs=12, lr=3e-3, hard_negatives=2),
                    progress=False).history
    assert math.isfinite(history[-1]["loss"]) and history[-1]["loss"] < history[0]["loss"] - 0.03


@pytest.mark.slow
def test_slq_train_reads_pair_jsonl(tiny_dirs, shapes_jsonl, tmp_path):
    records = load_jsonl(shapes_jsonl).records
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": {"text": r.captions[0], "instruction": "Find the image:"},
                                        "positive": {"image": str(r.image)},
                                        "negatives": [{"image": str(records[i - 1].image)}]}) + "\n"
                            for i, r in enumerate(records)))
    assert len(load_pairs(path)) == len(records)
    proc = slq("train", "--backbone", tiny_dirs["qwen2_vl"], "--train", path, "--out", tmp_path / "adapter",
               "--num-queries", 2, "--batch-size", 4, "--hard-negatives", 1, "--epochs", 1)
    assert "adapter written" in proc.stdout
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["training"]["hard_negatives"] == 1


def test_a_target_met_twice_in_a_batch_is_not_its_own_negative():
    """Pairs 0 and 1 share their positive ("red"): neither counts the other's copy as a negative, in
    either direction, nor a hard negative that is that same input."""
    texts, images, negatives = _unit(3, 8), _unit(3, 8, seed=1), _unit(2, 8, seed=2)
    images[1], negatives[0] = images[0], images[0]  # the copies are the same input
    texts[1] = F.normalize(images[0] + 0.3 * texts[1], dim=0)  # close to it, as a trained query is
    loss_fn = ContrastiveLoss(temperature=0.1)
    labels, negative_labels = torch.tensor([5, 5, 7]), torch.tensor([5, 9])
    masked = loss_fn(texts, images, negatives, labels=labels, negative_labels=negative_labels)
    t2i = texts @ torch.cat([images, negatives]).T / 0.1  # (3, 5)
    keep = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    t2i = t2i.masked_fill(~keep, float("-inf"))
    i2t = (texts @ images.T / 0.1).T.masked_fill(~keep[:, :3].T, float("-inf"))
    expected = (F.cross_entropy(t2i, torch.arange(3)) + F.cross_entropy(i2t, torch.arange(3))) / 2
    assert masked.item() == pytest.approx(expected.item(), abs=1e-5)
    assert masked.item() < loss_fn(texts, images, negatives).item() - 0.3, "the copies still count as negatives"


def test_the_plan_labels_equal_inputs_alike(shapes_jsonl):
    records = _pairs(shapes_jsonl, negatives=1).records
    same = PairRecord(Input("another caption"), records[0].positive, (records[0].positive,), "pairs:x")
    data = PairDataset([*records[:3], same], "labels")
    plan = BatchPlan(data, TrainConfig(batch_size=4, hard_negatives=1))
    positives, negatives = plan.labels(0)
    by_query = {data.records[i].query: i for i in range(4)}
    _, queries = plan(0)
    order = [by_query[q] for q in queries]
    first, last = order.index(0), order.index(3)
    assert positives[first] == positives[last] and len(set(positives.tolist())) == 3
    assert negatives[last] == positives[last], "a negative equal to a positive shares its label"
    assert BatchPlan(load_jsonl(shapes_jsonl), TrainConfig(batch_size=4)).labels(0) is None
