"""LLaVA-1.5 (CLIP ViT-L/336 -> 2-layer MLP projector -> Vicuna / Llama-2): the family
`llava15` of `rlhfv_jax.model.families`.

Modules: `config` (sizes, validation, `LlavaConfig` interop), `llava` (the MLLM),
`llama` (the decoder), `vision` (the CLIP tower and the projector).
"""

from rlhfv_jax.model import families
from rlhfv_jax.model import hf_io
from rlhfv_jax.model.llava15 import config
from rlhfv_jax.model.llava15 import llama
from rlhfv_jax.model.llava15 import llava

FAMILY = families.Family(
    name="llava15",
    hf_model_type="llava",
    hf_class="LlavaForConditionalGeneration",
    sizes=config.SIZES,
    make_config=config.llava_config,
    validate_config=config.validate_config,
    config_from_hf=config.config_from_hf,
    to_hf_config=config.to_hf_config,
    num_image_tokens=config.num_image_tokens,
    module=llava.Llava,
    init_kv_cache=llama.init_kv_cache,
    # llava-hf hub names; CLIP's class token is a raw leaf.
    hf_naming=hf_io.Naming(
        leaf_names=dict(hf_io.LEAF_NAMES, class_embedding="class_embedding"),
        layouts={"llava-hf": (), "transformers5": hf_io.TRANSFORMERS5_LAYOUT}),
    chat_template="vicuna_v1",
    image_processing="clip",
)
