"""A zoo transformer as a Hugging Face `LlamaForCausalLM` with the same weights, and from there a
TransformerLens `TransformerBridge`.

    from interp.zoo.hf import to_hf_llama, to_transformer_bridge
    hf = to_hf_llama(zoo_model)            # all-attention zoo models only; logits equal
    bridge = to_transformer_bridge(zoo_model)   # needs transformer-lens (extra [interop])

The zoo block (pre-RMSNorm, RoPE rotate-half, SwiGLU, no biases) is exactly Llama's, so the
mapping is a renaming of weights. Used to check our patching against TransformerLens' own
`patching` functions on the same weights, and to hand a zoo transformer to HF/TL tooling.

The task vocabulary's word tokenizer (`word_tokenizer`) is what `attach_tokenizer` gives a zoo model
(`interp.zoo.load_model` attaches it to every model it loads), so that `hooks` (which never imports interp)
can run string prompts on it. It is attached as a `WordTokenizer`, which builds the tokenizer (and imports
transformers) only when a string is first encoded, so loading a zoo model stays as fast as before.
"""
from __future__ import annotations

import functools

import torch

from interp import InterpError


def to_hf_llama(model):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = model.config
    kinds = set(cfg.layers)
    if kinds != {"attn"}:
        raise InterpError(f"only all-attention zoo models map onto Llama; this one has {', '.join(sorted(kinds))}")
    hcfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                       num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, head_dim=cfg.head_dim,
                       intermediate_size=model.blocks[0].mlp.up_proj.out_features, rms_norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, max_position_embeddings=4096, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, hidden_act="silu")
    hcfg.rope_parameters = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    hf = LlamaForCausalLM(hcfg)
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm_f.weight,
          "lm_head.weight": model.lm_head.weight}
    for i, b in enumerate(model.blocks):
        p, a, m = f"model.layers.{i}.", b.mixer, b.mlp
        sd |= {p + "input_layernorm.weight": b.norm1.weight, p + "post_attention_layernorm.weight": b.norm2.weight,
               p + "self_attn.q_proj.weight": a.q_proj.weight, p + "self_attn.k_proj.weight": a.k_proj.weight,
               p + "self_attn.v_proj.weight": a.v_proj.weight, p + "self_attn.o_proj.weight": a.o_proj.weight,
               p + "mlp.gate_proj.weight": m.gate_proj.weight, p + "mlp.up_proj.weight": m.up_proj.weight,
               p + "mlp.down_proj.weight": m.down_proj.weight}
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise InterpError(f"weight mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf.to(device=model.device, dtype=next(model.parameters()).dtype).eval()


def word_tokenizer():
    """A local fast tokenizer for the task vocabulary (whitespace words -> zoo token ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from interp.tasks import VOCAB
    vocab = {w: i for i, w in enumerate(VOCAB.words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<pad>")
    # saved and re-read so it has a name_or_path (TransformerLens reloads tokenizers by path)
    import tempfile
    from transformers import AutoTokenizer
    d = tempfile.mkdtemp(prefix="interp-tok-")
    fast.save_pretrained(d)
    return AutoTokenizer.from_pretrained(d, local_files_only=True)


@functools.lru_cache(maxsize=1)
def _shared_word_tokenizer():
    return word_tokenizer()


class WordTokenizer:
    """The task vocabulary's word tokenizer, built on first use: every attribute and call goes to the one
    shared `word_tokenizer` instance (``tok.encode("<bos> k1 5")``, ``tok.decode(ids)``, ``tok(...)``).
    Copies (``copy.deepcopy`` of a model carrying it) and pickles stay this small handle."""

    def _tok(self):
        return _shared_word_tokenizer()

    def __getattr__(self, attr):
        if attr.startswith("__"):            # copy / pickle probe dunders: not the tokenizer's
            raise AttributeError(attr)
        return getattr(self._tok(), attr)

    def __call__(self, *args, **kwargs):
        return self._tok()(*args, **kwargs)

    def __len__(self):
        return len(self._tok())

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return "WordTokenizer(the task vocabulary's words, built on first use)"


def attach_tokenizer(model, tokenizer=None):
    """Set ``model.tokenizer`` (default: the task vocabulary's word tokenizer, a `WordTokenizer` handle on
    one shared instance), the tokenizer `hooks` turns string prompts into token ids with; returns the model."""
    model.tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
    return model


def to_transformer_bridge(model):
    """The zoo transformer inside a TransformerLens 4 `TransformerBridge` (no hub access)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:
        raise InterpError("TransformerLens is not installed: pip install -e '.[interop]'") from e
    hf = to_hf_llama(model)
    return TransformerBridge.boot_transformers("meta-llama/Llama-3.2-1B", hf_model=hf, tokenizer=word_tokenizer(),
                                               device=str(model.device), dtype=next(model.parameters()).dtype)
