"""Build the vision tower named by a config or ModelArguments."""
import os

from .clip_encoder import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs):
    # vision_tower_cfg: the LLaVA config (mm_vision_tower) or ModelArguments (vision_tower), hence getattr.
    vision_tower = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if vision_tower is None:
        raise ValueError("No vision tower given: set --vision_tower (a local CLIP folder or a hub name).")
    if getattr(vision_tower_cfg, "s2", False):
        raise NotImplementedError("The S2 multi-scale tower (s2wrapper) is not supported by this codebase.")
    is_local = os.path.exists(vision_tower)
    # Any local folder is accepted (upstream only knew openai/laion/ShareGPT4V names).
    if is_local or vision_tower.startswith(("openai", "laion")) or "ShareGPT4V" in vision_tower:
        return CLIPVisionTower(vision_tower, args=vision_tower_cfg, **kwargs)
    raise ValueError(f"Unknown vision tower: {vision_tower} (not a local folder, nor an openai/laion/ShareGPT4V CLIP name)")
