"""GGUF backbones: a tiny Gemma 3 written as an F32 GGUF file converts to a folder equal to its source.

The file is written here with the `gguf` package the way llama.cpp's converter writes Gemma 3:
tensors under llama.cpp's names, every RMSNorm weight stored as weight + 1 (transformers subtracts
the 1 back), and a sentencepiece-style vocabulary (`tokenizer.ggml.model = "llama"`: "▁" for a
space, `<0xNN>` byte-fallback tokens, specials marked CONTROL, no merges: transformers derives
them from the token order).

The source model keeps two Gemma 3 defaults a GGUF file cannot override, because transformers
reads neither from it: `query_pre_attn_scalar` (256) and the layer pattern (a full-attention layer
every sixth; six layers here, so both kinds of layer run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from slq.backbone import Backbone
from slq.errors import SLQError
from slq.gguf import convert_gguf, file_sha256
from slq.tiny import RECIPES

gguf = pytest.importorskip("gguf")

TEXTS = ["a red circle above the blue square", "two cats sitting on a shelf, next to 3 small green bowls"]
CORPUS = ("a an the one two three small big red green blue circle square triangle above below next to on "
          "near and with cat cats dog bird shelf table sitting standing tree trees bowl bowls cup").split()
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6  # llama.cpp's token types


def gemma_vocabulary() -> tuple[list[str], list[int]]:
    """Tokens and their types, in the order a Gemma GGUF lists them: specials, bytes, then pieces
    best-first (merges are rebuilt from this order)."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Replace(" ", "\u2581")
    bpe.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    bpe.train_from_iterator([" ".join(CORPUS)] + [" " + word for word in CORPUS],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIALS), show_progress=False))
    pieces = [token for token, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1]) if token not in SPECIALS]
    tokens = [*SPECIALS, *(f"<0x{byte:02X}>" for byte in range(256)), *pieces]
    types = [UNKNOWN if t == "<unk>" else CONTROL for t in SPECIALS] + [BYTE] * 256 + [NORMAL] * len(pieces)
    return tokens, types


def tiny_gemma3(vocab_size: int):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, sliding_window=4, max_position_embeddings=1024,
        pad_token_id=SPECIALS.index("<pad>"), eos_token_id=SPECIALS.index("<eos>"),
        bos_token_id=SPECIALS.index("<bos>"),
    )
    assert config.layer_types.count("full_attention") == 1, "the test wants both kinds of attention layer"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # Gemma initialises norms to zero (scale 1); random ones catch a lost "+1"
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(-0.5, 0.5)
    return model


def write_gguf(model, tokens: list[str], types: list[int], out: Path) -> Path:
    """`model` (a Gemma 3 text model) and its vocabulary as an F32 GGUF file at `out`."""
    config = model.config
    writer = gguf.GGUFWriter(str(out), "gemma3")
    writer.add_name("tiny gemma 3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_sliding_window(config.sliding_window)
    writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types(types)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_unk_token_id(tokens.index("<unk>"))
    writer.add_add_bos_token(True)
    writer.add_chat_template(RECIPES["gemma3_text"].chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings: a GGUF without `output` says so
            continue
        base, suffix = name.rsplit(".", 1)
        data = tensor.numpy().astype(np.float32)
        if base.endswith("norm"):  # q_norm, k_norm, every *_layernorm and the final norm
            data = data + 1
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The original model and the GGUF file written from it."""
    tokens, types = gemma_vocabulary()
    model = tiny_gemma3(len(tokens))
    return model, write_gguf(model, tokens, types, tmp_path_factory.mktemp("gguf") / "tiny-gemma3-f32.gguf")


@pytest.fixture(scope="module")
def gguf_path(source) -> Path:
    return source[1]


@pytest.fixture(scope="module")
def converted(gguf_path) -> Path:
    return convert_gguf(gguf_path, gguf_path.parent / "cache" / "gguf")


def test_converted_folder_is_a_text_backbone_equal_to_its_source(source, gguf_path, converted):
    model, _ = source
    sha = file_sha256(gguf_path)
    assert converted == gguf_path.parent / "cache" / "gguf" / f"tiny-gemma3-f32-{sha[:16]}"
    assert json.loads((converted / "slq-gguf.json").read_text()) == {"source": gguf_path.name, "sha256": sha}
    backbone = Backbone.load(converted)
    assert backbone.family.name == "text" and backbone.config.model_type == "gemma3_text"
    assert getattr(backbone.config, "quantization_config", None) is None, "the folder must not claim GGUF weights"
    assert backbone.config.layer_types == model.config.layer_types
    loaded = backbone.model.state_dict()
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(loaded[name], weight, atol=1e-6, rtol=0, msg=name)  # norms: (w + 1) - 1

    batch = backbone.text_batch(TEXTS)
    prompt = backbone.tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    assert prompt == f"<bos><start_of_turn>user\n{TEXTS[0]}<end_of_turn>\n<start_of_turn>model\n"
    with torch.no_grad():
        got = backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             output_hidden_states=True).hidden_states[-1]  # (B, T, H)
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     output_hidden_states=True).hidden_states[-1]  # (B, T, H)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_converted_tokenizer_is_the_one_the_gguf_file_describes(gguf_path, converted):
    from transformers import AutoTokenizer

    want = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    got = AutoTokenizer.from_pretrained(converted)
    sentence = "The big dog, sitting near 3 trees: <start_of_turn>  two  spaces and é"
    assert got(sentence)["input_ids"] == want(sentence)["input_ids"]
    ids = got(sentence, add_special_tokens=False)["input_ids"]
    assert ids == want(sentence, add_special_tokens=False)["input_ids"]
    assert got.decode(ids) == sentence
    assert "\u2581sitting" in got.convert_ids_to_tokens(ids), "words must be pieces of the vocabulary, not bytes"
    assert got.convert_tokens_to_ids("<start_of_turn>") in ids, "specials must stay whole"
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(got, attr) == getattr(want, attr), attr
    assert got.chat_template == want.chat_template == RECIPES["gemma3_text"].chat_template


def test_second_call_returns_the_cached_folder_without_converting(gguf_path, converted, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("convert_gguf reconverted a file it had already converted")

    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    assert convert_gguf(gguf_path, converted.parent) == converted
    sha = file_sha256(gguf_path)
    assert convert_gguf(gguf_path, converted.parent, expected_sha256=sha.upper()) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_backbone_load_of_a_gguf_file_uses_the_slq_cache(gguf_path, converted, monkeypatch):
    """`Backbone.load("x.gguf")` finds the folder under `$SLQ_CACHE/gguf/` instead of converting again."""
    import transformers

    plain = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def no_gguf(cls, *args, **kwargs):
        assert "gguf_file" not in kwargs, "Backbone.load reconverted a cached GGUF file"
        return plain(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(no_gguf))
    monkeypatch.setenv("SLQ_CACHE", str(converted.parent.parent))
    backbone = Backbone.load(gguf_path)
    assert backbone.path == converted
    assert backbone.text_only


def test_failed_conversion_leaves_no_folder(gguf_path, tmp_path, monkeypatch):
    """A crash while saving must not leave a folder the next call would take for a finished one."""
    import transformers

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            convert_gguf(gguf_path, tmp_path)
    assert list(tmp_path.iterdir()) == []
    folder = convert_gguf(gguf_path, tmp_path)
    assert (folder / "slq-gguf.json").is_file() and (folder / "config.json").is_file()


def test_sha256_mismatch_is_refused_before_converting(gguf_path, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(SLQError, match=rf"{gguf_path.name}: sha256 [0-9a-f]{{64}} does not match the expected 0+;"):
        convert_gguf(gguf_path, cache, expected_sha256="0" * 64)
    assert not cache.exists()


def test_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(SLQError, match="absent.gguf: no such GGUF file"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "cache")


def test_file_that_is_not_gguf_is_refused(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a GGUF file" * 8)
    with pytest.raises(SLQError, match="junk.gguf: transformers cannot read this GGUF file"):
        convert_gguf(junk, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
