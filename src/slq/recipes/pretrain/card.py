"""The model card (README.md) of a pretrained slq-tiny-vl, rendered from what the run recorded."""

from __future__ import annotations

from .config import TASKS

_TASK_CARD = {
    "caption": "user = the image alone (exactly slq's image prompt), assistant = one of its captions",
    "listing": "user = the image alone, assistant = every object with size, colour and shape in reading order",
    "vqa": "user = the image and a question (colour, shape, size, position, counts, yes/no), assistant = a "
           "one-word answer",
    "paraphrase": "user = a caption (exactly slq's text prompt), assistant = another caption of the same image",
    "knowledge": "language modelling on the world's knowledge corpus",
    "colour": "user = an image whose objects share one colour and \"what colour is the object?\", assistant = "
              "the colour",
    "shape": "user = an image whose objects share one shape and \"what shape is the object?\", assistant = "
             "the shape",
    "knowledge_qa": "user = a question about a corpus fact (\"what colour is a banana?\"), assistant = its answer",
    "knowledge_caption": "user = the image alone, assistant = a knowledge caption of it (clues seen with images only)",
    "knowledge_paraphrase": "user = a knowledge caption, assistant = a plain caption of the same image",
    "knowledge_paraphrase_all": "user = a knowledge caption through any clue (text-only clues included; no image), "
                                "assistant = a plain caption of the same image",
    "knowledge_vqa": "user = the image and a question asked through clues (\"is there something the colour of a "
                     "banana?\"), assistant = a one-word answer",
}


def model_card(info: dict) -> str:
    """README.md of the checkpoint folder, rendered from what the run recorded."""
    cfg, acc = info["pretrain_config"], info.get("caption_accuracy")
    lines = [
        "# slq-tiny-vl", "",
        "A tiny Qwen2-VL (`model_type: qwen2_vl`) pretrained by slq on its synthetic shapes world with "
        "**generative objectives only** (no contrastive loss), so that Shared Latent Queries have "
        "pretrained representations to elicit. It is slq's default demo backbone; it knows nothing "
        "outside the shapes world.", "",
        "## Architecture", "",
        f"- language model: hidden {info['dims']['hidden']}, {info['dims']['layers']} layers, "
        f"{info['dims']['heads']} heads ({info['dims']['kv_heads']} key/value), MLP {info['dims']['intermediate']}, "
        f"M-RoPE sections {info['dims']['mrope_section']}, vocabulary {info['dims']['vocab']} (byte-level BPE "
        "trained on the world's training texts)",
        f"- vision: {info['dims']['vision_depth']} blocks of width {info['dims']['vision_embed']}, patch "
        f"{info['dims']['patch']} px, 2x2 merge; the processor resizes an image to {cfg['image_side']}x"
        f"{cfg['image_side']} px, which gives {info['dims']['image_tokens']} image tokens",
        f"- {info['parameters']:,} parameters, float32 safetensors ({info['megabytes']:.1f} MB)", "",
        "## Training", "",
        f"- data: the shapes world (seed {info['world']['seed']}) train split, {info['world']['n_train']} images; "
        "held-out colour-shape pairs never appear (not in images, captions or questions)",
        "- tasks (next-token loss on the assistant's tokens; on every token for facts), mixture "
        + ", ".join(f"{k} {v:.0%}" for k, v in cfg["mixture"].items()) + ":",
        *[f"  - {task}: {_TASK_CARD[task]}" for task in TASKS
          if cfg["mixture"].get(task) or any(m.get(task) for _, m in cfg.get("stages", []))],
        *([f"  - word dropout: in {cfg['noise_prob']:.0%} of caption, listing and paraphrase examples each answer "
           f"*input* token is replaced by a random token with probability {cfg['noise_rate']}, the targets unchanged, "
           "so the model keeps describing its input whatever tokens follow the assistant opener (where SLQ appends "
           "its queries)"] if cfg.get("noise_prob") else []),
        *(["- curriculum, before that mixture: " + "; then ".join(
            f"{steps} steps of " + ", ".join(f"{k} {v:.0%}" for k, v in mixture.items())
            for steps, mixture in cfg["stages"]) + "; the learning rate warms up again at the start of each stage "
           "(why: slq's docs/slq-tiny-vl.md)"] if cfg.get("stages") else []),
        f"- vision tower: pixels normalised with mean {cfg.get('image_mean')} and std {cfg.get('image_std')} "
        f"(None: CLIP's); the merger's output layer scaled by {cfg.get('merger_init_scale', 1.0)} at initialisation; "
        f"frozen for the first {cfg.get('vision_freeze_steps', 0)} steps, then learning rate x"
        f"{cfg.get('vision_lr_ratio', 1.0)}, weight decay {cfg.get('vision_weight_decay', cfg['weight_decay'])}; "
        "gradients clipped per group (language model, vision tower)",
        f"- {cfg['steps']} steps of {cfg['batch_size']} examples, AdamW lr {cfg['lr']} (warmup "
        f"{cfg['warmup_steps']}, cosine to {cfg['min_lr_ratio']}x), weight decay {cfg['weight_decay']}, "
        f"seed {cfg['seed']}; {info['minutes']:.1f} minutes with {cfg['threads']} CPU thread(s); final loss "
        f"{info['final_loss']:.3f}",
        "- reproduce: `" + info["command"] + "`", "",
        "## What mattered", "",
        "How these settings were found (numbers in slq's docs/slq-tiny-vl.md):", "",
        "- the language model must first learn to read the image tokens: a task mixture from step 0 never taught "
        "it to, a curriculum of colour questions, then shape questions, then the mixture did;",
        "- what SLQ elicits varies much with the pretraining seed, so recipes were compared over seeds, by SLQ's "
        "recall on validation images (`scripts/pretrain_sweep.py`), not by caption accuracy: a run that captioned "
        "better has retrieved worse;",
        "- slq's default recipe came from such a comparison: a larger share of paraphrases (text in, another caption "
        "out: the only task that trains the state after a *text* prompt's opener) together with no word dropout was "
        "the best at both seeds tried, well above the previous recipe; each change alone was mixed;",
        "- knowledge is used only where a task asks for it: with facts alone in its text the model completed them "
        "but never used them in a caption, so SLQ could not elicit them (KARR-Shapes' clues added nothing); text-only "
        "tasks that turn clues into plain words (`knowledge_paraphrase_all`, `knowledge_qa`; 12% of the mixture, no "
        "clue ever beside an image) made colour clues retrieve, at some cost in plain recall (slq's docs/karr.md).",
        "",
    ]
    if acc:
        lines += ["## What it can do", "",
                  f"Greedy captions of {acc['n_images']} held-out test images (about half show a colour-shape pair "
                  "never seen in training), scored word by word against the image's objects "
                  "(`slq.evaluation.capability.caption_attribute_accuracy`):", "",
                  "| colour | shape | colour+shape pair | count | caption fully correct |",
                  "| --- | --- | --- | --- | --- |",
                  "| " + " | ".join(f"{100 * acc[k]:.1f}%" if acc[k] is not None else "-"
                                   for k in ("colour", "shape", "pair", "count", "all_correct")) + " |", ""]
        lines += ["Samples:", ""] + [f"- `{s['image']}`: \"{s['caption']}\" (a true caption: \"{s['truth']}\")"
                                     for s in acc["samples"][:4]] + [""]
    health = info.get("vision_health")
    if health:
        lines += [f"Image tokens of 64 test images (`slq.evaluation.capability.vision_feature_health`): mean norm "
                  f"{health['feature_norm']} ({health['norm_ratio']}x the word embeddings'), cosine between two "
                  f"tokens of one image {health['within_image_cos']}, between the mean tokens of two images "
                  f"{health['across_image_cos']}.", ""]
    if info.get("comparison"):
        lines += ["## Retrieval elicited by SLQ", "", info["comparison_command"], "", "```",
                  info["comparison"], "```", ""]
    if info.get("fingerprint"):
        fp = info["fingerprint"]
        lines += ["## Fingerprint", "",
                  f"- `model.safetensors` sha256: `{fp['safetensors_sha256']}`",
                  f"- config sha256 (`slq.backbone.Backbone.fingerprint`): `{fp['config_sha256']}`", ""]
    lines += ["## Limits", "",
              "A toy: small images of up to three coloured shapes, a vocabulary of about a hundred words. "
              "It is meant for demonstrating and testing slq offline, not for real images or text.", ""]
    return "\n".join(lines)
