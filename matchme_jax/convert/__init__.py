"""Official PyTorch checkpoints -> Flax variables.

* ``cats_from_torch``: an official CATs state dict (``feature_extraction.backbone.*``, ``proj.*``,
  ``decoder.*``, ``x_normal``, ``y_normal`` and the BatchNorm buffers) -> ``(model, variables)``;
  ``cats_to_torch`` maps variables back to those keys and layouts.
* ``catspp_from_torch``: an official CATs++ (``CATsImproved``) state dict (``backbone.*``,
  ``hpn_learner.*``) -> ``(model, variables)``; ``catspp_to_torch`` maps variables back.
* ``backbone_from_torchvision``: torchvision ResNet ImageNet weights (``conv1.weight``,
  ``layer1.0.bn1.running_mean``, ...) -> the ``backbone`` subtree of the CATs variables;
  ``backbone_to_torchvision`` writes a whole ResNet in that naming (matchme_jax/pretrain.py).
* ``dinov2_from_torch``: an official DINOv2 state dict, in the torch-hub layout (``cls_token``,
  ``blocks.0.attn.qkv.weight``, ...) or the Hugging Face ``Dinov2Model`` /
  ``Dinov2WithRegistersModel`` layout (``embeddings.cls_token``, ``encoder.layer.0.*``, ...) ->
  ``(DinoVisionTransformer, variables)``; ``dinov2_to_torch`` and ``dinov2_to_huggingface`` map
  variables back to either layout.
* ``load_state_dict_file``: ``.npz``, ``.safetensors``, and ``.pth``/``.pt`` when torch is
  installed -> ``{torch key: numpy array}``.

Modules: ``cats`` (CATs, CATs++, torchvision ResNets), ``dinov2``, ``files`` (reading a file),
``common`` (the tensor layouts and the key check they share).
"""

from matchme_jax.convert.cats import (
    backbone_from_torchvision,
    backbone_to_torchvision,
    cats_from_torch,
    cats_to_torch,
    catspp_from_torch,
    catspp_to_torch,
    infer_cats_fields,
    infer_catspp_fields,
)
from matchme_jax.convert.dinov2 import (
    backbone_from_dinov2,
    dinov2_from_torch,
    dinov2_to_huggingface,
    dinov2_to_torch,
)
from matchme_jax.convert.files import load_state_dict_file

__all__ = [
    "backbone_from_dinov2",
    "backbone_from_torchvision",
    "backbone_to_torchvision",
    "cats_from_torch",
    "cats_to_torch",
    "catspp_from_torch",
    "catspp_to_torch",
    "dinov2_from_torch",
    "dinov2_to_huggingface",
    "dinov2_to_torch",
    "infer_cats_fields",
    "infer_catspp_fields",
    "load_state_dict_file",
]
