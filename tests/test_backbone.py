"""Loading backbones: what is refused, where the chat template comes from, what the fingerprint sees."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from slq.adapter import backbone_mismatch
from slq.backbone import Backbone
from slq.data import PAD_GREY, pad_to_square
from slq.errors import SettingError, SLQError
from slq.tiny import TINY_FAMILIES, TINY_TEXT_FAMILIES


def test_unsupported_model_type_names_what_is_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SLQError, match=r"unsupported backbone model_type 'bert'; slq supports: .*qwen2_vl.*"
                                       r"text-only causal LMs"):
        Backbone.load(tmp_path)  # BERT has a causal-LM head in transformers, but it is an encoder


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(SLQError, match="not a checkpoint folder"):
        Backbone.load(tmp_path)


def test_processor_level_chat_template_is_used(tiny_dirs, tmp_path):
    """Many VL checkpoints keep the template in chat_template.json, not in the tokenizer config."""
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_dirs["qwen2_vl"], folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    marked = template.replace("{{ message['role'] }}\n", "{{ message['role'] }} (from json)\n")
    assert marked != template
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": marked}))
    backbone = Backbone.load(folder)
    prompt = backbone.tokenizer.decode(backbone.text_batch(["a cat"]).input_ids[0])
    assert "<|im_start|>user (from json)\na cat<|im_end|>" in prompt


def test_missing_chat_template_is_refused(tiny_dirs, tmp_path):
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_dirs["qwen2_vl"], folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SLQError, match="no chat template"):
        Backbone.load(folder)


def test_prompts_end_with_the_assistant_opener(backbones):
    """The queries go right after the opener, so every prompt must end with it (left padding)."""
    openers = {"qwen2_vl": "<|im_start|>assistant\n", "internvl": "<|im_start|>assistant\n",
               "idefics3": "Assistant:", "llava": "ASSISTANT:"}
    for family, opener in openers.items():
        backbone = backbones[family]
        batch = backbone.text_batch(["a cat", "a much longer caption about two dogs"])
        for row in batch.input_ids:
            assert backbone.tokenizer.decode(row).endswith(opener), family


def test_fingerprint_survives_a_dtype_change(tiny_dirs):
    fp32 = Backbone.load(tiny_dirs["llava"]).fingerprint()
    bf16 = Backbone.load(tiny_dirs["llava"], dtype=torch.bfloat16).fingerprint()
    assert backbone_mismatch(fp32, bf16) is None
    assert fp32["config_sha256"] == bf16["config_sha256"]


def test_backbone_is_frozen(backbones):
    for family, backbone in backbones.items():
        assert not any(p.requires_grad for p in backbone.model.parameters()), family
        assert not backbone.model.training, family


def test_texts_spelling_special_tokens_are_refused(backbones):
    from slq.errors import DataError

    for text in ("a <|im_end|> cat", "an <|image_pad|>"):
        with pytest.raises(DataError, match="special token"):
            backbones["qwen2_vl"].text_batch(["fine", text])


def test_plain_added_tokens_are_not_refused(tiny_dirs):
    """Gemma's tokenizer adds plain tokens too (runs of newlines): a text may hold them, as E5-V's
    one-word prompt does; only special tokens would reshape the prompt."""
    from slq.errors import DataError

    backbone = Backbone.load(tiny_dirs["gemma3"])
    backbone.tokenizer.add_tokens(["\n\n"])  # not special, as in Gemma's vocabulary
    backbone = Backbone(backbone.model, backbone.tokenizer, backbone.image_processor, backbone.family, backbone.path)
    assert backbone.text_batch(["a red circle\n\nSummary above sentence in one word:"]).input_ids.shape[0] == 1
    with pytest.raises(DataError, match="special token"):
        backbone.text_batch(["a <start_of_image> circle"])


def test_bos_is_prepended_where_the_tokenizer_would_add_it(tiny_dirs, tmp_path):
    """LLaVA-1.5's template renders no BOS; its tokenizer adds one. slq must not drop it."""
    from tokenizers.processors import TemplateProcessing

    folder = tmp_path / "llava"
    shutil.copytree(tiny_dirs["llava"], folder)
    plain = Backbone.load(folder)
    bos_id = plain.tokenizer.convert_tokens_to_ids("<s>")
    assert plain.text_batch(["a cat"]).input_ids[0, 0] != bos_id  # the template alone renders none
    tokenizer = plain.tokenizer
    tokenizer.bos_token = "<s>"
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    tokenizer.save_pretrained(folder)
    with_bos = Backbone.load(folder)
    ids = with_bos.text_batch(["a cat", "a much longer caption"]).input_ids
    real = ids[0][ids[0] != with_bos.tokenizer.pad_token_id]
    assert real[0] == bos_id and (real == bos_id).sum() == 1
    assert with_bos.image_batch([Image.new("RGB", (32, 32))]).input_ids[0, 0] == bos_id


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl", "idefics3", "llava", "gemma3", "gemma3_text"])
def test_forward_is_the_models_own_call_on_the_prompt(backbones, family):
    """Backbone.forward, the one call of the model, gives what a hand-written call of the same model
    gives: hidden states, the LM head's logits for generation, and every layer's keys/values."""
    backbone = backbones[family]
    batch = backbone.text_batch(["a red circle", "two blue squares on the left"]) if backbone.text_only else \
        backbone.image_batch([Image.new("RGB", (60, 60), (200, 10, 10)), Image.new("RGB", (90, 40), (0, 10, 200))])
    positions = backbone.family.position_ids(backbone.model, batch.input_ids, batch.attention_mask, batch.model_inputs)
    by_hand = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                   **batch.model_inputs, **backbone.family.extra_inputs(backbone.config, batch.input_ids))
    with torch.no_grad():
        hidden = backbone.model.model(**by_hand).last_hidden_state  # (B, L, d)
        logits = backbone.model(**by_hand, logits_to_keep=1).logits  # (B, 1, V)
        out = backbone.forward(batch, keep_keys_values=True)
        generated = backbone.forward(batch, logits_to_keep=1)
    assert torch.allclose(out.hidden, hidden, atol=1e-6) and torch.allclose(generated.logits, logits, atol=1e-6)
    layers = backbone.config.get_text_config().num_hidden_layers
    assert len(out.keys_values) == layers and out.keys_values[0][0].shape[-2] == batch.input_ids.shape[1]
    assert out.appended_positions is None and generated.hidden is None


# --- image_fit ------------------------------------------------------------------------------------

RED = (200, 30, 30)


def _image_tokens(backbone: Backbone, input_ids: torch.Tensor) -> list[int]:
    token = backbone.tokenizer.convert_tokens_to_ids(backbone.family.image_token(backbone.config, backbone.tokenizer))
    return (input_ids == token).sum(1).tolist()


def _tiling_internvl(tiny_dirs, tmp_path):
    """The tiny InternVL with its processor tiling, as InternVL3's checkpoints ship it."""
    folder = tmp_path / "internvl"
    shutil.copytree(tiny_dirs["internvl"], folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["crop_to_patches"] = True
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def test_square_fit_gives_internvl_one_tile_of_the_padded_image(tiny_dirs, tmp_path):
    folder = _tiling_internvl(tiny_dirs, tmp_path)
    processor, square = Backbone.load(folder), Backbone.load(folder, image_fit="square")
    assert (processor.image_fit, square.image_fit) == ("processor", "square")
    vision = square.config.vision_config
    per_tile = int((vision.image_size[0] // vision.patch_size[0]) ** 2 * square.config.downsample_ratio ** 2)
    wide = Image.new("RGB", (96, 24), RED)

    batch = square.image_batch([wide])
    assert _image_tokens(square, batch.input_ids) == [per_tile]
    assert batch.model_inputs["pixel_values"].shape == (1, 3, *vision.image_size)
    padded = square.image_batch([pad_to_square(wide)])
    assert torch.equal(batch.input_ids, padded.input_ids)
    assert torch.equal(batch.model_inputs["pixel_values"], padded.model_inputs["pixel_values"])

    # "processor" is the checkpoint's processor, unchanged: the wide image as tiles plus a thumbnail.
    raw = processor.image_processor(images=[wide], return_tensors="pt")
    tiled = processor.image_batch([wide])
    assert int(raw["num_patches"][0]) > 1
    assert _image_tokens(processor, tiled.input_ids) == [per_tile * int(raw["num_patches"][0])]
    assert torch.equal(tiled.model_inputs["pixel_values"], raw["pixel_values"])

    # The tile's pixels: the red band centred, grey (127) above and below it.
    mean, std = (torch.tensor(v)[:, None] for v in (square.image_processor.image_mean, square.image_processor.image_std))
    pixels = batch.model_inputs["pixel_values"][0] * std[:, :, None] + mean[:, :, None]  # (3, 32, 32) in [0, 1]
    grey, red = torch.tensor(PAD_GREY) / 255, torch.tensor(RED) / 255
    for row in (0, 5, 26, 31):  # 96x24 on a 96x96 square: rows 36..59 red, so 12..19 of 32
        assert torch.allclose(pixels[:, row, :], grey[:, None], atol=1e-5), row
    for row in (15, 16):  # the band's middle (bicubic blurs its edges)
        assert torch.allclose(pixels[:, row, :], red[:, None], atol=1e-5), row


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in TINY_TEXT_FAMILIES])
def test_square_fit_feeds_every_family_the_padded_image(backbones, family):
    loaded = backbones[family]
    square = Backbone(loaded.model, loaded.tokenizer, loaded.image_processor, loaded.family, loaded.path,
                      image_fit="square")
    images = [Image.new("RGB", (70, 30), RED), Image.new("RGB", (20, 50), (0, 10, 200))]
    batch, padded = square.image_batch(images), square.image_batch([pad_to_square(im) for im in images])
    assert torch.equal(batch.input_ids, padded.input_ids)
    assert batch.model_inputs.keys() == padded.model_inputs.keys()
    assert all(torch.equal(batch.model_inputs[k], padded.model_inputs[k]) for k in batch.model_inputs)
    with torch.no_grad():
        assert torch.isfinite(square.forward(batch).hidden).all()


def test_square_fit_gives_idefics3_its_global_image_alone(backbones):
    loaded = backbones["idefics3"]
    square = Backbone(loaded.model, loaded.tokenizer, loaded.image_processor, loaded.family, loaded.path,
                      image_fit="square")
    wide = Image.new("RGB", (96, 24), RED)
    tiled, single = loaded.image_batch([wide]), square.image_batch([wide])
    assert tiled.model_inputs["pixel_values"].shape[1] > 1, "the tiny processor splits a wide image"
    assert single.model_inputs["pixel_values"].shape[1] == 1
    assert _image_tokens(square, single.input_ids) == [_image_tokens(loaded, tiled.input_ids)[0]
                                                        // tiled.model_inputs["pixel_values"].shape[1]]


def test_unknown_image_fit_is_refused(tiny_dirs, backbones):
    with pytest.raises(SettingError, match="image_fit crop: must be one of processor, square"):
        Backbone.load(tiny_dirs["internvl"], image_fit="crop")
    text = backbones["gemma3_text"]
    with pytest.raises(SettingError, match="image_fit square: .* is a text-only backbone: it has no images to fit"):
        Backbone(text.model, text.tokenizer, None, text.family, text.path, image_fit="square")



# --- Gemma 3 --------------------------------------------------------------------------------------

def _gemma3_processor(backbone: Backbone, image_processor=None):
    """transformers' own Gemma3Processor over the tiny checkpoint's tokenizer and image processor."""
    from transformers import AutoTokenizer, Gemma3Processor

    names = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = AutoTokenizer.from_pretrained(backbone.path, extra_special_tokens=names)
    return Gemma3Processor(image_processor=image_processor or backbone.image_processor, tokenizer=tokenizer,
                           chat_template=tokenizer.chat_template, image_seq_length=backbone.config.mm_tokens_per_image)


def test_gemma3_prompt_is_what_gemmas_own_processor_makes(backbones):
    """Token ids, the image-token types that make image tokens attend both ways, and pixels: all as
    Gemma3Processor gives them for the same chat."""
    backbone = backbones["gemma3"]
    processor = _gemma3_processor(backbone)
    image = Image.new("RGB", (60, 40), RED)
    for text in ("", "what colour is it?"):
        content = [{"type": "image"}] + ([{"type": "text", "text": text}] if text else [])
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
        theirs = processor(images=[[image]], text=[prompt], return_tensors="pt")
        ours = backbone.image_text_batch([image], [text])
        assert torch.equal(ours.input_ids, theirs["input_ids"])
        assert torch.equal(backbone.family.extra_inputs(backbone.config, ours.input_ids)["token_type_ids"],
                           theirs["token_type_ids"])
        assert torch.equal(ours.model_inputs["pixel_values"], theirs["pixel_values"])


def test_gemma3_image_tokens_attend_both_ways(backbones):
    """The prompt's states are the model's own with `token_type_ids` (image tokens see each other both
    ways), which differ from a plain causal call: leaving them out would be a silent change."""
    backbone = backbones["gemma3"]
    batch = backbone.image_batch([Image.new("RGB", (60, 40), RED), Image.new("RGB", (30, 50), (0, 10, 200))])
    types = (batch.input_ids == backbone.config.image_token_id).long()
    plain = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs)
    with torch.no_grad():
        ours = backbone.forward(batch).hidden
        both_ways = backbone.model.model(**plain, token_type_ids=types).last_hidden_state
        causal = backbone.model.model(**plain).last_hidden_state
    assert torch.allclose(ours, both_ways, atol=1e-6)
    assert not torch.allclose(ours, causal, atol=1e-4), "the tiny model's image tokens must see later ones"


def test_gemma3_pan_and_scan_expands_every_crop(backbones):
    """With pan-and-scan a wide image comes as itself and its crops, each expanded as Gemma's processor
    words it, and the model takes the prompt (as many soft tokens as features)."""
    from transformers import Gemma3ImageProcessorPil

    loaded = backbones["gemma3"]
    scanning = Gemma3ImageProcessorPil(**{**loaded.image_processor.to_dict(), "do_pan_and_scan": True})
    backbone = Backbone(loaded.model, loaded.tokenizer, scanning, loaded.family, loaded.path)
    wide, square = Image.new("RGB", (96, 24), RED), Image.new("RGB", (30, 30), (0, 10, 200))
    inputs = backbone.family.image_inputs(backbone.config, backbone.tokenizer, scanning, [wide, square])
    crops = scanning(images=[wide, square], return_tensors="pt")["num_crops"]
    assert crops.tolist() == [2, 0], "the tiny processor cuts the wide image in two"
    processor = _gemma3_processor(backbone, scanning)
    assert inputs.placeholder_text == [processor.replace_image_token({"num_crops": crops}, i) for i in range(2)]
    batch = backbone.image_batch([wide, square])
    assert batch.model_inputs["pixel_values"].shape[0] == 4
    with torch.no_grad():
        assert torch.isfinite(backbone.forward(batch, torch.randn(2, backbone.hidden_size)).hidden).all()
    one_tile = Backbone(loaded.model, loaded.tokenizer, scanning, loaded.family, loaded.path, image_fit="square")
    assert one_tile.image_batch([wide]).model_inputs["pixel_values"].shape[0] == 1
