"""slq behind sentence-transformers and MTEB: the same vectors as `encode_text` / `encode_image`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from slq import SLQError, SLQRetriever
from slq.baselines import PooledEncoder
from slq.data import load_image, load_jsonl
from slq.tiny import build_tiny_model

TEXTS = ["a red circle", "one blue square, drawn large in the middle of a white page", "green", "a yellow square"]
INSTRUCTION = "Find an image that matches the caption:"
TOL = 1e-5


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> SLQRetriever:
    return SLQRetriever.from_pretrained(build_tiny_model("qwen2_vl", tmp_path_factory.mktemp("tiny") / "m", seed=0))


@pytest.fixture(scope="module")
def records(shapes_jsonl):
    return load_jsonl(shapes_jsonl).records[:5]  # images of three widths


@pytest.fixture(scope="module")
def images(records):
    return [load_image(r) for r in records]


@pytest.fixture(scope="module")
def st_model(retriever):
    pytest.importorskip("sentence_transformers")
    from slq.integrations import to_sentence_transformer

    return to_sentence_transformer(retriever, prompts={"query": "find: "})


@pytest.fixture(scope="module")
def mteb():
    return pytest.importorskip("mteb")


def test_importing_slq_and_the_adapters_loads_neither_package():
    code = "import sys, slq, slq.integrations; print('sentence_transformers' in sys.modules, 'mteb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_missing_package_names_the_extra(retriever, monkeypatch):
    from slq.integrations import MTEBEncoder, to_sentence_transformer

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails, as when not installed
    monkeypatch.setitem(sys.modules, "mteb", None)
    with pytest.raises(SLQError, match=r"pip install 'slq\[integrations\]'"):
        to_sentence_transformer(retriever)
    with pytest.raises(SLQError, match=r"mteb package.*slq\[integrations\]"):
        MTEBEncoder(retriever)


# --- sentence-transformers ----------------------------------------------------------------------

def test_sentence_transformer_encodes_texts_as_the_retriever(st_model, retriever):
    got = st_model.encode(TEXTS, batch_size=3)  # two batches, padded differently than encode_text's
    assert got.shape == (len(TEXTS), retriever.dim)
    np.testing.assert_allclose(got, retriever.encode_text(TEXTS), atol=TOL)
    one = st_model.encode(TEXTS[1])
    assert one.shape == (retriever.dim,)
    np.testing.assert_allclose(one, retriever.encode_text(TEXTS[1]), atol=TOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=TOL)
    assert st_model.get_embedding_dimension() == retriever.dim and st_model.device == retriever.backbone.device


def test_sentence_transformer_encodes_images_and_image_paths_as_the_retriever(st_model, retriever, images, records):
    expected = retriever.encode_image(images)
    np.testing.assert_allclose(st_model.encode(images, batch_size=2), expected, atol=TOL)
    np.testing.assert_allclose(st_model.encode([str(r.image) for r in records]), expected, atol=TOL)
    np.testing.assert_allclose(st_model.encode(images[2]), expected[2], atol=TOL)
    scores = st_model.similarity(st_model.encode(TEXTS), st_model.encode(images))  # cosine, as slq ranks
    np.testing.assert_allclose(scores.numpy(), retriever.encode_text(TEXTS) @ expected.T, atol=TOL)


def test_named_prompts_are_prepended_to_texts(st_model, retriever):
    expected = retriever.encode_text(["find: " + t for t in TEXTS[:2]])
    np.testing.assert_allclose(st_model.encode_query(TEXTS[:2]), expected, atol=TOL)


def test_a_prompt_is_the_instruction_of_encode_query(st_model, retriever, images):
    plain = np.stack([retriever.encode_query(t) for t in TEXTS[:2]])
    instructed = np.stack([retriever.encode_query(t, instruction=INSTRUCTION) for t in TEXTS[:2]])
    assert not np.allclose(plain, instructed, atol=1e-4)
    np.testing.assert_allclose(st_model.encode(TEXTS[:2], prompt=INSTRUCTION), instructed, atol=TOL)
    np.testing.assert_allclose(st_model.encode_query(TEXTS[:2]),  # the "query" prompt, "find: "
                               np.stack([retriever.encode_query(t, instruction="find:") for t in TEXTS[:2]]), atol=TOL)
    np.testing.assert_allclose(st_model.encode_document(TEXTS[:2]), plain, atol=TOL)  # no "document" prompt
    asked = np.stack([retriever.encode_query(image=im, instruction=INSTRUCTION) for im in images[:2]])
    assert not np.allclose(asked, retriever.encode_image(images[:2]), atol=1e-4)
    np.testing.assert_allclose(st_model.encode(images[:2], prompt=INSTRUCTION), asked, atol=TOL)


def test_an_instruction_is_the_query_prompt(retriever):
    pytest.importorskip("sentence_transformers")
    from slq.integrations import to_sentence_transformer

    model = to_sentence_transformer(retriever, instruction=INSTRUCTION)
    np.testing.assert_allclose(model.encode_query(TEXTS[2]), retriever.encode_query(TEXTS[2], instruction=INSTRUCTION),
                               atol=TOL)
    np.testing.assert_allclose(model.encode_document(TEXTS[2]), retriever.encode_text(TEXTS[2]), atol=TOL)
    with pytest.raises(SLQError, match="instruction.*once"):
        to_sentence_transformer(retriever, prompts={"query": "q: "}, instruction=INSTRUCTION)


def test_texts_and_images_go_in_separate_calls(st_model, images):
    with pytest.raises(ValueError, match="modalities"):  # sentence-transformers refuses the batch itself
        st_model.encode([TEXTS[0], images[0]])
    with pytest.raises(SLQError, match="one kind per call"):  # and the module, called directly
        st_model[0].preprocess([TEXTS[0], images[0]])


def test_a_baseline_encodes_through_sentence_transformers_but_does_not_save(retriever, images, tmp_path):
    pytest.importorskip("sentence_transformers")
    from slq.integrations import to_sentence_transformer

    baseline = PooledEncoder(retriever.backbone, pooling="mean")
    model = to_sentence_transformer(baseline)
    np.testing.assert_allclose(model.encode(TEXTS), baseline.encode_text(TEXTS), atol=TOL)
    np.testing.assert_allclose(model.encode(images[:3]), baseline.encode_image(images[:3]), atol=TOL)
    with pytest.raises(SLQError, match="only an SLQRetriever"):
        model.save(str(tmp_path / "st"))


def test_a_saved_sentence_transformer_loads_with_its_adapter(retriever, images, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from slq.integrations import to_sentence_transformer

    trained = SLQRetriever.fresh(retriever.backbone, num_queries=4, seed=7)  # not what a fresh load would give
    to_sentence_transformer(trained).save(str(tmp_path / "st"))
    loaded = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(loaded.encode(TEXTS), trained.encode_text(TEXTS), atol=TOL)
    np.testing.assert_allclose(loaded.encode(images[:2]), trained.encode_image(images[:2]), atol=TOL)


# --- MTEB ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mteb_encoder_follows_the_protocol_on_text_image_and_fused_batches(mteb, retriever, images):
    from torch.utils.data import DataLoader

    from mteb.models.models_protocols import EncoderProtocol
    from slq.integrations import MTEBEncoder

    encoder = MTEBEncoder(retriever)
    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert meta.embed_dim == retriever.dim and set(meta.modalities) == {"text", "image"}

    def loader(rows):  # mteb's shape: a DataLoader of dicts of columns, images left as lists
        return DataLoader(rows, batch_size=2, collate_fn=lambda batch: {k: [row[k] for row in batch] for k in batch[0]})

    texts, pictures = retriever.encode_text(TEXTS), retriever.encode_image(images[:4])
    task = mteb.get_task("STS12").metadata  # metadata only: nothing is downloaded
    call = dict(task_metadata=task, hf_split="test", hf_subset="default")
    np.testing.assert_allclose(encoder.encode(loader([{"text": t} for t in TEXTS]), **call), texts, atol=TOL)
    np.testing.assert_allclose(encoder.encode(loader([{"image": im} for im in images[:4]]), **call), pictures, atol=TOL)
    fused = encoder.encode(loader([{"text": t, "image": im} for t, im in zip(TEXTS, images)]), **call)
    expected = (texts + pictures) / np.linalg.norm(texts + pictures, axis=1, keepdims=True)
    np.testing.assert_allclose(fused, expected, atol=TOL)
    with pytest.raises(SLQError, match="'text' and 'image' columns"):
        encoder.encode(loader([{"audio": 0}]), **call)


def test_mteb_instructs_queries_only(mteb, retriever, images):
    from torch.utils.data import DataLoader

    from mteb.types import PromptType
    from slq.integrations import MTEBEncoder

    def encode(encoder, column, rows, task, prompt_type):
        batches = DataLoader([{column: x} for x in rows], batch_size=2,
                             collate_fn=lambda batch: {k: [row[k] for row in batch] for k in batch[0]})
        return encoder.encode(batches, task_metadata=task, hf_split="test", hf_subset="default",
                              prompt_type=prompt_type)

    task = mteb.get_task("MSCOCOT2IRetrieval").metadata  # its own query instruction; metadata only
    own = task.prompt["query"]
    plain = retriever.encode_text(TEXTS)
    instructed = np.stack([retriever.encode_query(t, instruction=INSTRUCTION) for t in TEXTS])
    assert not np.allclose(plain, instructed, atol=1e-4)
    fixed = MTEBEncoder(retriever, instruction=INSTRUCTION)
    np.testing.assert_allclose(encode(fixed, "text", TEXTS, task, PromptType.query), instructed, atol=TOL)
    np.testing.assert_allclose(encode(fixed, "image", images[:3], task, PromptType.query),
                               np.stack([retriever.encode_query(image=im, instruction=INSTRUCTION) for im in images[:3]]),
                               atol=TOL)
    np.testing.assert_allclose(encode(fixed, "text", TEXTS, task, PromptType.document), plain, atol=TOL)
    np.testing.assert_allclose(encode(fixed, "text", TEXTS, task, None), plain, atol=TOL)  # symmetric tasks: none

    per_task = MTEBEncoder(retriever, instruction=INSTRUCTION, task_instructions=True)
    np.testing.assert_allclose(encode(per_task, "text", TEXTS[:2], task, PromptType.query),
                               np.stack([retriever.encode_query(t, instruction=own) for t in TEXTS[:2]]), atol=TOL)
    without_own = mteb.get_task("STS12").metadata  # no instruction of its own: the fixed one
    np.testing.assert_allclose(encode(per_task, "text", TEXTS[:2], without_own, PromptType.query), instructed[:2],
                               atol=TOL)
    np.testing.assert_allclose(encode(MTEBEncoder(retriever), "text", TEXTS, task, PromptType.query), plain, atol=TOL)

    revisions = {e.mteb_model_meta.revision for e in (fixed, per_task, MTEBEncoder(retriever))}
    assert len(revisions) == 3, "instructed results are cached apart"
    assert fixed.mteb_model_meta.use_instructions and not MTEBEncoder(retriever).mteb_model_meta.use_instructions


def test_mteb_names_each_adapter_apart(mteb, retriever):
    from slq.integrations import MTEBEncoder

    def revision(encoder):
        return MTEBEncoder(encoder).mteb_model_meta.revision

    assert revision(retriever) == revision(SLQRetriever.fresh(retriever.backbone, seed=0))
    assert revision(retriever) != revision(SLQRetriever.fresh(retriever.backbone, seed=1))
    assert MTEBEncoder(retriever, name="me/slq", revision="v1").mteb_model_meta.revision == "v1"


def test_mteb_evaluate_runs_offline_and_ranks_with_slq_scores(mteb, retriever, records, images, tmp_path):
    """A text-to-image retrieval task built in memory: mteb's scores are slq's cosine similarities."""
    from datasets import Dataset

    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata
    from slq.integrations import MTEBEncoder

    captions = [r.captions[0] for r in records]

    class ShapesT2I(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="SLQShapesT2I", type="Any2AnyRetrieval", category="t2i", modalities=["image", "text"],
            main_score="ndcg_at_10", description="Coloured shapes drawn by the slq test suite.",
            reference="https://example.org/slq", dataset={"path": "NA", "revision": "NA"}, eval_splits=["test"],
            eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-01"), dialect=[], domains=[], task_subtypes=[],
            license="cc-by-4.0", annotations_creators="derived", sample_creation="created", bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            split = RetrievalSplitData(
                queries=Dataset.from_dict({"id": [f"q{i}" for i in range(len(captions))], "text": captions}),
                corpus=Dataset.from_dict({"id": [f"d{i}" for i in range(len(images))], "image": images}),
                relevant_docs={f"q{i}": {f"d{i}": 1} for i in range(len(captions))}, top_ranked=None)
            self.dataset, self.data_loaded = {"default": {"test": split}}, True

    result = mteb.evaluate(MTEBEncoder(retriever), ShapesT2I(), cache=None, prediction_folder=tmp_path,
                           show_progress_bar=False, encode_kwargs={"batch_size": 2})
    assert not result.exceptions
    assert 0 < result.task_results[0].scores["test"][0]["ndcg_at_10"] <= 1
    predicted = json.loads((tmp_path / "SLQShapesT2I_predictions.json").read_text())["default"]["test"]
    ours = retriever.encode_text(captions) @ retriever.encode_image(images).T
    got = np.array([[predicted[f"q{i}"][f"d{j}"] for j in range(len(images))] for i in range(len(captions))])
    np.testing.assert_allclose(got, ours, atol=TOL)
