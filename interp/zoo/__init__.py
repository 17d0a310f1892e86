"""The zoo: small controlled hybrids (attention + GDN / GLA / Mamba2) with one code path on CPU
(pure-torch reference scans) and CUDA (fla kernels)."""
from interp.zoo.checkpoint import load_trainer_state
from interp.zoo.config import ZooConfig
from interp.zoo.hf import WordTokenizer, attach_tokenizer
from interp.zoo.io import load_config, load_model, save_model
from interp.zoo.layouts import preset_names, resolve_layout, valid_kinds
from interp.zoo.model import Block, HybridLM, ParallelMixer


def match_params(cfg: ZooConfig, target: int) -> ZooConfig:
    """Return a copy of ``cfg`` whose SwiGLU hidden size is chosen so the model's parameter count
    is as close as possible to ``target`` (how the default set is matched in size)."""
    import dataclasses
    base = dataclasses.replace(cfg, mlp_hidden=1)
    n1 = HybridLM(base).num_params()
    per_unit = cfg.n_layers * 3 * cfg.d_model  # params per unit of hidden size
    hidden = max(1, round((target - n1) / per_unit) + 1)
    return dataclasses.replace(cfg, mlp_hidden=hidden)


__all__ = ["ZooConfig", "HybridLM", "Block", "ParallelMixer", "save_model", "load_model", "load_config",
           "resolve_layout", "preset_names", "valid_kinds", "match_params", "load_trainer_state",
           "attach_tokenizer", "WordTokenizer"]
