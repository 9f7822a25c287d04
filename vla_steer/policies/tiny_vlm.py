"""A toy-scale SmolVLM written to a local directory, so LeRobot's real ``SmolVLAPolicy`` builds offline.

``SmolVLAPolicy`` reads its VLM architecture and processor from ``config.vlm_model_name`` even with
``load_vlm_weights=False``. :func:`write_tiny_smolvlm` writes a directory that plays that role: a
``SmolVLMConfig`` with a few-layer Llama text model and a one-layer vision tower, a word-level tokenizer over a
given vocabulary that declares SmolVLM's image special tokens, and SmolVLM image / video processor configs.
With random initial weights this is what behaviour cloning here starts from (no checkpoint can be downloaded).

Needs ``num2words`` (the SmolVLM processor imports it at load time) and torchvision (its video processor).
"""

from __future__ import annotations

from pathlib import Path

# Image special tokens that SmolVLA's VLAFlowMatching and SmolVLMProcessor look up on the tokenizer, by attribute.
IMAGE_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "image_token": "<image>",
    "end_of_utterance_token": "<end_of_utterance>",
}


def word_level_tokenizer(words: list[str] | tuple[str, ...], extra_special_tokens: dict[str, str] | None = None):
    """A fast word-level tokenizer over ``words`` (whitespace split, so SmolVLA's trailing ``"\\n"`` is dropped),
    with ``<pad>``, ``<unk>``, a BOS token and ``extra_special_tokens`` exposed as tokenizer attributes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra_special_tokens = dict(extra_special_tokens or {})
    specials = ["<pad>", "<unk>", "<|im_start|>", *extra_special_tokens.values()]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        additional_special_tokens=list(extra_special_tokens.values()),
        extra_special_tokens=extra_special_tokens,  # e.g. tokenizer.fake_image_token_id
    )


def write_tiny_smolvlm(
    directory: str | Path,
    words: list[str] | tuple[str, ...],
    *,
    image_size: int = 32,
    patch_size: int = 8,
    scale_factor: int = 2,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_hidden_size: int = 16,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
    rope_theta: float = 10000.0,
    max_position_embeddings: int = 256,
    vision_num_layers: int = 1,
    vision_num_heads: int = 2,
    vision_intermediate_size: int | None = None,
) -> Path:
    """Write a tiny SmolVLM (config + tokenizer over ``words`` + processors) to ``directory``; returns its path.

    ``image_size`` must equal SmolVLA's ``resize_imgs_with_padding`` (the vision tower's position embedding has
    ``(image_size / patch_size)**2`` entries). Each camera becomes ``(image_size / patch_size / scale_factor)**2``
    prefix tokens.

    The remaining sizes default to the toy model (MLPs twice as wide as the model, a vocabulary of exactly the
    tokenizer's words, LlamaConfig's rope theta); set them all to build a real-size architecture with the same
    small tokenizer (a larger ``vocab_size`` only adds embedding rows no token id reaches).
    """
    from transformers import SmolVLMConfig
    from transformers.models.smolvlm import SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    if image_size % patch_size or (image_size // patch_size) % scale_factor:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size * scale_factor "
                         f"({patch_size} * {scale_factor}): the connector pixel-shuffles the patch grid")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(f"hidden_size={hidden_size}, num_heads={num_heads}, num_kv_heads={num_kv_heads}: "
                         "heads must divide the width and key/value heads must divide the heads")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = word_level_tokenizer(words, IMAGE_SPECIAL_TOKENS)
    text_config = {
        "model_type": "llama",
        "vocab_size": vocab_size or len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": rope_theta,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": vision_hidden_size,
        "intermediate_size": vision_intermediate_size or 2 * vision_hidden_size,
        "num_hidden_layers": vision_num_layers,
        "num_attention_heads": vision_num_heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(directory)

    # LeRobot preprocesses images itself; the processors only have to load, so keep them at the tiny size.
    size = {"longest_edge": image_size}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=size, max_image_size=size, do_image_splitting=False),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        image_seq_len=(image_size // patch_size // scale_factor) ** 2,
    )
    processor.save_pretrained(directory)
    return directory
