"""Gemma 3 (SigLIP-So400m -> pooled soft-token projector -> Gemma 3 decoder): the family
`gemma3` of `rlhfv_jax.model.families`.

Modules: `config` (sizes, validation, `Gemma3Config` interop), `model` (the MLLM),
`decoder` (the text decoder), `siglip` (the vision tower and the projector).
"""

from rlhfv_jax.model import families
from rlhfv_jax.model import hf_io
from rlhfv_jax.model.gemma3 import config
from rlhfv_jax.model.gemma3 import decoder
from rlhfv_jax.model.gemma3 import model

FAMILY = families.Family(
    name="gemma3",
    hf_model_type="gemma3",
    hf_class="Gemma3ForConditionalGeneration",
    sizes=config.SIZES,
    make_config=config.gemma3_config,
    validate_config=config.validate_config,
    config_from_hf=config.config_from_hf,
    to_hf_config=config.to_hf_config,
    num_image_tokens=config.num_image_tokens,
    module=model.Gemma3,
    init_kv_cache=decoder.init_kv_cache,
    # google/gemma-3-*-it hub names (transformers 4.50); the projector's matrix is a
    # raw leaf, stored as `x @ W` uses it.
    hf_naming=hf_io.Naming(
        leaf_names=dict(hf_io.LEAF_NAMES,
                        mm_input_projection_weight="mm_input_projection_weight"),
        layouts={"hub": (), "transformers5": hf_io.TRANSFORMERS5_LAYOUT}),
    chat_template="gemma3",
    image_processing="siglip",
)
