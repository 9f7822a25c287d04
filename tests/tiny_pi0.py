"""Build LeRobot 0.4.4 ``PI0Policy`` / ``PI05Policy`` at any size, offline, with random weights.

LeRobot's pi0 cannot be made small through its config: the variant names are checked against
``gemma_300m`` / ``gemma_2b`` and ``PaliGemmaWithExpertModel.__init__`` hard-codes the vocabulary (257152) and
the SigLIP-So400m vision tower. The ``Sized*`` subclasses below replace only the constructors; every
``forward`` / ``embed_*`` / ``denoise_step`` / ``sample_actions`` / ``predict_action_chunk`` is LeRobot's own.

* :data:`TINY` is for unit tests (about 0.2M parameters, 28 px images, 4 image tokens per camera).
* :data:`FULL` is the real pi0 / pi0.5 architecture (PaliGemma 2B + Gemma 300M expert + So400m, 3.6B
  parameters, 14.5 GB in float32; DESIGN.md: ~95 s and ~16 GB of RAM to build on CPU), so tests only build it
  on the ``meta`` device, to check that it matches LeRobot's own constructor.

Constraints on a size (research/lerobot.md §2.2): exactly 8 attention heads (the joint training path reshapes
to ``8 * head_dim``); the same ``num_kv_heads``, ``head_dim`` and depth in the VLM and the expert (their Q/K/V are
concatenated layer by layer, and the expert attends to the VLM cache); the vision projection lands on the VLM
width; an even expert width (sinusoidal time embedding); images whose side is a multiple of the patch size.

Needs the openpi-patched transformers (``scripts/make_pi_env.sh``); importing this module does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.policies.pi0.modeling_pi0 import (
    GemmaConfig, PaliGemmaWithExpertModel, PI0Policy, PI0Pytorch, get_gemma_config,
)
from lerobot.policies.pi05.configuration_pi05 import PI05Config
from lerobot.policies.pi05.modeling_pi05 import PI05Policy, PI05Pytorch
from lerobot.policies.pretrained import PreTrainedPolicy
from tiny_common import save_with_processors, word_level_tokenizer
from torch import nn


@dataclass(frozen=True)
class PiSizes:
    """Every size PaliGemma-with-expert needs; LeRobot fixes all but ``vlm`` / ``expert`` (and those to 2 variants)."""

    vlm: GemmaConfig
    expert: GemmaConfig
    vision_width: int
    vision_depth: int
    vision_heads: int
    vision_mlp_dim: int
    patch_size: int
    vocab_size: int

    def __post_init__(self):
        if not self.vlm.num_heads == self.expert.num_heads == 8:
            raise ValueError("LeRobot's joint attention reshapes to 8 heads: both Gemmas need num_heads=8")
        for field in ("num_kv_heads", "head_dim", "depth"):
            if getattr(self.vlm, field) != getattr(self.expert, field):
                raise ValueError(f"the VLM and the expert must share {field}")
        if self.expert.width % 2:
            raise ValueError("the expert width must be even (sinusoidal time embedding)")


# LeRobot's defaults: paligemma_variant="gemma_2b", action_expert_variant="gemma_300m", So400m vision tower.
FULL = PiSizes(
    vlm=get_gemma_config("gemma_2b"), expert=get_gemma_config("gemma_300m"),
    vision_width=1152, vision_depth=27, vision_heads=16, vision_mlp_dim=4304, patch_size=14, vocab_size=257152,
)
TINY = PiSizes(
    vlm=GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    expert=GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16),
    vision_width=32, vision_depth=1, vision_heads=2, vision_mlp_dim=64, patch_size=14, vocab_size=300,
)
TINY_IMAGE_SIZE = 28  # 2 x 2 patches of 14 px: 4 image tokens per camera


def hf_configs(sizes: PiSizes, use_adarms: list[bool], image_size: int):
    """The HF ``PaliGemmaConfig`` and expert ``GemmaConfig`` that ``PaliGemmaWithExpertModel.__init__`` builds,
    the same steps in the same order, with the sizes it hard-codes taken from ``sizes``."""
    from transformers.models.auto import CONFIG_MAPPING

    vlm, expert = sizes.vlm, sizes.expert
    vlm_config_hf = CONFIG_MAPPING["paligemma"]()
    vlm_config_hf._vocab_size = sizes.vocab_size  # noqa: SLF001
    vlm_config_hf.image_token_index = sizes.vocab_size
    text = vlm_config_hf.text_config
    text.hidden_size = vlm.width
    text.intermediate_size = vlm.mlp_dim
    text.num_attention_heads = vlm.num_heads
    text.head_dim = vlm.head_dim
    text.num_hidden_layers = vlm.depth
    text.num_key_value_heads = vlm.num_kv_heads
    text.hidden_activation = "gelu_pytorch_tanh"
    text.torch_dtype = "float32"
    text.vocab_size = sizes.vocab_size
    text.use_adarms = use_adarms[0]
    text.adarms_cond_dim = vlm.width if use_adarms[0] else None
    vision = vlm_config_hf.vision_config
    vision.image_size = image_size
    # LeRobot keeps PaliGemma's default So400m tower (only the MLP width is set); a smaller size overrides it.
    vision.hidden_size = sizes.vision_width
    vision.num_hidden_layers = sizes.vision_depth
    vision.num_attention_heads = sizes.vision_heads
    vision.patch_size = sizes.patch_size
    vision.intermediate_size = sizes.vision_mlp_dim
    vision.projection_dim = vlm.width  # image tokens are concatenated with the VLM's text embeddings
    vision.projector_hidden_act = "gelu_fast"
    vision.torch_dtype = "float32"

    expert_config_hf = CONFIG_MAPPING["gemma"](
        head_dim=expert.head_dim,
        hidden_size=expert.width,
        intermediate_size=expert.mlp_dim,
        num_attention_heads=expert.num_heads,
        num_hidden_layers=expert.depth,
        num_key_value_heads=expert.num_kv_heads,
        vocab_size=sizes.vocab_size,
        hidden_activation="gelu_pytorch_tanh",
        torch_dtype="float32",
        use_adarms=use_adarms[1],
        adarms_cond_dim=expert.width if use_adarms[1] else None,
    )
    return vlm_config_hf, expert_config_hf


class SizedPaliGemmaWithExpertModel(PaliGemmaWithExpertModel):
    """``PaliGemmaWithExpertModel`` built from :class:`PiSizes`; everything but ``__init__`` is LeRobot's."""

    def __init__(self, sizes: PiSizes, use_adarms: list[bool], precision: str, image_size: int,
                 freeze_vision_encoder: bool = False, train_expert_only: bool = False):
        from transformers.models.gemma.modeling_gemma import GemmaForCausalLM
        from transformers.models.paligemma.modeling_paligemma import PaliGemmaForConditionalGeneration

        nn.Module.__init__(self)  # skips the parent constructor, which would build the full-size model
        self.freeze_vision_encoder = freeze_vision_encoder
        self.train_expert_only = train_expert_only
        vlm_config_hf, expert_config_hf = hf_configs(sizes, use_adarms, image_size)
        self.paligemma = PaliGemmaForConditionalGeneration(config=vlm_config_hf)
        self.gemma_expert = GemmaForCausalLM(config=expert_config_hf)
        self.gemma_expert.model.embed_tokens = None
        self.to_bfloat16_for_selected_params(precision)
        self._set_requires_grad()


def _sized_backbone(config, sizes: PiSizes, use_adarms: list[bool]) -> SizedPaliGemmaWithExpertModel:
    if config.image_resolution[0] != config.image_resolution[1]:
        raise ValueError(f"PaliGemma expects square images, got {config.image_resolution}")
    return SizedPaliGemmaWithExpertModel(
        sizes, use_adarms=use_adarms, precision=config.dtype, image_size=config.image_resolution[0],
        freeze_vision_encoder=config.freeze_vision_encoder, train_expert_only=config.train_expert_only,
    )


class SizedPI0Pytorch(PI0Pytorch):
    """``PI0Pytorch`` with the modules of ``PI0Pytorch.__init__`` built at ``sizes`` (no compile, no version check)."""

    def __init__(self, config: PI0Config, sizes: PiSizes, rtc_processor=None):
        nn.Module.__init__(self)
        self.config = config
        self.rtc_processor = rtc_processor
        self.paligemma_with_expert = _sized_backbone(config, sizes, use_adarms=[False, False])
        width = sizes.expert.width
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        self.state_proj = nn.Linear(config.max_state_dim, width)
        self.action_time_mlp_in = nn.Linear(2 * width, width)
        self.action_time_mlp_out = nn.Linear(width, width)
        self.gradient_checkpointing_enabled = False


class SizedPI05Pytorch(PI05Pytorch):
    """``PI05Pytorch`` at ``sizes``: adaRMS expert conditioned on the time MLP, no state projection."""

    def __init__(self, config: PI05Config, sizes: PiSizes, rtc_processor=None):
        nn.Module.__init__(self)
        self.config = config
        self.rtc_processor = rtc_processor
        self.paligemma_with_expert = _sized_backbone(config, sizes, use_adarms=[False, True])
        width = sizes.expert.width
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        self.time_mlp_in = nn.Linear(width, width)
        self.time_mlp_out = nn.Linear(width, width)
        self.gradient_checkpointing_enabled = False


def _init_policy(policy: PreTrainedPolicy, config, model_cls, sizes: PiSizes) -> None:
    """``PI0Policy.__init__`` / ``PI05Policy.__init__`` with the sized model."""
    PreTrainedPolicy.__init__(policy, config)
    config.validate_features()
    policy.config = config
    policy.init_rtc_processor()
    policy.model = model_cls(config, sizes, rtc_processor=policy.rtc_processor)
    if config.gradient_checkpointing:
        policy.model.gradient_checkpointing_enable()
    policy.model.to(config.device)
    policy.reset()


class SizedPI0Policy(PI0Policy):
    def __init__(self, config: PI0Config, sizes: PiSizes = TINY, **kwargs):
        _init_policy(self, config, SizedPI0Pytorch, sizes)


class SizedPI05Policy(PI05Policy):
    def __init__(self, config: PI05Config, sizes: PiSizes = TINY, **kwargs):
        _init_policy(self, config, SizedPI05Pytorch, sizes)


Family = Literal["pi0", "pi05"]


def pi_config(family: Family, *, cameras: int = 2, state_dim: int = 4, action_dim: int = 3,
              image_size: int = TINY_IMAGE_SIZE, **overrides) -> PI0Config | PI05Config:
    """A ``PI0Config`` / ``PI05Config`` with ``cameras`` RGB inputs, a state and an action feature, on the CPU.

    ``overrides`` go to the config (``chunk_size``, ``n_action_steps``, ``num_inference_steps``,
    ``tokenizer_max_length``, ``max_action_dim``, ``dtype``, ...).
    """
    inputs = {f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size))
              for i in range(cameras)}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    config_cls = PI0Config if family == "pi0" else PI05Config
    return config_cls(
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        image_resolution=(image_size, image_size),
        **{"device": "cpu", **overrides},
    )


def make_pi_policy(family: Family, sizes: PiSizes = TINY, config: PI0Config | PI05Config | None = None,
                   **config_kwargs) -> PI0Policy | PI05Policy:
    """A randomly initialised ``PI0Policy`` (``family="pi0"``) or ``PI05Policy`` (``"pi05"``) at ``sizes``.

    For ``sizes=FULL`` pass ``image_size=224`` (LeRobot's default) and a config with the policy's real features;
    seed torch first for reproducible weights. Example for a full-size benchmark::

        torch.manual_seed(0)
        policy = make_pi_policy("pi0", FULL, image_size=224, tokenizer_max_length=48, chunk_size=50,
                                n_action_steps=50, dtype="bfloat16", device="cuda")
    """
    if config is None:
        if sizes is TINY:
            config_kwargs = {"tokenizer_max_length": 6, "chunk_size": 5, "n_action_steps": 3,
                             "num_inference_steps": 4, **config_kwargs}
        config = pi_config(family, **config_kwargs)
    elif config_kwargs:
        raise TypeError("pass either config or config keyword arguments, not both")
    policy_cls = SizedPI0Policy if family == "pi0" else SizedPI05Policy
    return policy_cls(config, sizes=sizes)


# ---------------------------------------------------------------------------------------------------------
# processors (LeRobot's pi0 / pi05 pipelines with a small local tokenizer instead of the gated PaliGemma one)

TASK_WORDS = ("pick", "place", "push", "the", "red", "blue", "cube", "block")


def tiny_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` whose ids fit :data:`TINY`'s vocabulary (300): the pi0.5 prompt
    words, the 256 state bins, a few task words; anything else maps to ``<unk>``."""
    words = ["<pad>", "<unk>", "Task", "State", "Action", ":", ",", ";", *TASK_WORDS, *map(str, range(256))]
    return word_level_tokenizer(words, pre_tokenizer="Whitespace", pad_token="<pad>")  # splits off ":" "," ";"


def make_pi_processors(config: PI0Config | PI05Config, dataset_stats: dict, tokenizer=None,
                       tokenizer_name: str | None = None):
    """The pre/post-processor pipelines of ``make_pi0_pre_post_processors`` / ``make_pi05_pre_post_processors``,
    same steps in the same order, but with a tokenizer object: the factories load
    ``google/paligemma-3b-pt-224`` from the Hub, which is gated and unreachable here.

    ``tokenizer_name`` (a directory a tokenizer was saved to) instead of an object: the saved preprocessor then
    names it and reloads offline (a step given a tokenizer object saves no name, so it cannot be rebuilt)."""
    from lerobot.policies.pi0.processor_pi0 import Pi0NewLineProcessor
    from lerobot.policies.pi05.processor_pi05 import Pi05PrepareStateTokenizerProcessorStep
    from lerobot.processor import (
        AddBatchDimensionProcessorStep, DeviceProcessorStep, NormalizerProcessorStep, PolicyProcessorPipeline,
        RenameObservationsProcessorStep, TokenizerProcessorStep, UnnormalizerProcessorStep,
    )
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    source = ({"tokenizer_name": tokenizer_name} if tokenizer_name is not None
              else {"tokenizer": tokenizer or tiny_tokenizer()})
    tokenize = TokenizerProcessorStep(**source, max_length=config.tokenizer_max_length, padding_side="right",
                                      padding="max_length")
    normalize = NormalizerProcessorStep(features={**config.input_features, **config.output_features},
                                        norm_map=config.normalization_mapping, stats=dataset_stats)
    device = DeviceProcessorStep(device=config.device)
    if isinstance(config, PI05Config):  # normalise first: the state is binned from [-1, 1] into the prompt
        bin_state = Pi05PrepareStateTokenizerProcessorStep(max_state_dim=config.max_state_dim)
        middle = [normalize, bin_state, tokenize, device]
    else:
        middle = [Pi0NewLineProcessor(), tokenize, device, normalize]
    preprocessor = PolicyProcessorPipeline(
        steps=[RenameObservationsProcessorStep(rename_map={}), AddBatchDimensionProcessorStep(), *middle],
        name="policy_preprocessor",
    )
    postprocessor = PolicyProcessorPipeline(
        steps=[UnnormalizerProcessorStep(features=config.output_features, norm_map=config.normalization_mapping,
                                         stats=dataset_stats), DeviceProcessorStep(device="cpu")],
        name="policy_postprocessor", to_transition=policy_action_to_transition, to_output=transition_to_policy_action,
    )
    return preprocessor, postprocessor


def save_tiny_pi_base(policy: PI0Policy | PI05Policy, directory: Path, *, tokenizer_dir: Path,
                      dataset_stats: dict) -> Path:
    """``policy`` saved as ``lerobot-train`` saves a checkpoint: LeRobot's ``save_pretrained`` (config.json,
    model.safetensors) and both processor pipelines (:func:`make_pi_processors`), the tokenizer step naming
    ``tokenizer_dir``, where :func:`tiny_tokenizer` is saved, so everything reloads offline.

    LeRobot's own loader cannot rebuild a tiny policy from that config.json (``PI0Config`` knows only the
    ``gemma_300m`` / ``gemma_2b`` variants and would build the 3.5B model): reload it with the ``Sized*`` class's
    ``from_pretrained`` (LeRobot's, inherited).
    """
    tiny_tokenizer().save_pretrained(tokenizer_dir)
    processors = make_pi_processors(policy.config, dataset_stats, tokenizer_name=str(tokenizer_dir))
    return save_with_processors(policy, *processors, Path(directory))
