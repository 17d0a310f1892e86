"""Planning a sweep: the checked arguments, the (site, layer) units and their cells, the pair chunks,
the work items (direction, pair chunk, unit) with their estimated costs, and the spec of the
sweep's result folder (everything that changes its numbers)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import hooks
from interp import InterpError
from interp.checks import check_count
from interp.kernels import kernel_spec
from interp.patching.run import _model_device
from interp.patching.sites import (SITES, _check_choice, check_layers, check_positions, directions_of,
                                   layer_kind, plan_cells)
from interp.tasks.padded import check_pairs


@dataclass
class Plan:
    """What a sweep runs: ``units`` [(site, layer, cells)], ``chunks`` [(first pair, end)],
    ``directions`` ('denoise', 'noise' or both); ``span``: of padded pairs, each pair's first real
    index and real tokens ([N] each; None: unpadded); ``spec`` describes it for its result folder
    (computed when first asked for: it hashes the model's weights)."""
    hm: object
    pairs: object
    units: list
    chunks: list
    directions: tuple
    batch_size: int
    skip_prefix: bool
    model_name: str
    settings: dict
    span: tuple | None = None
    _spec: dict | None = field(default=None, repr=False)

    def chunk(self, c: int):
        """(the padding mask, the span) of pair chunk ``c``'s rows; (None, None) for unpadded pairs."""
        if self.span is None:
            return None, None
        a, b = self.chunks[c]
        return self.pairs.attention_mask[a:b], (self.span[0][a:b], self.span[1][a:b])

    @property
    def spec(self) -> dict:
        if self._spec is None:
            self._spec = sweep_spec(self.hm, self.pairs, self.model_name, **self.settings)
        return self._spec

    @property
    def items(self) -> list:
        """Every (direction, chunk, unit), in the order one process runs them."""
        return [(d, c, u) for c in range(len(self.chunks)) for d in self.directions for u in range(len(self.units))]

    def cost(self, item) -> int:
        """Patched rows x blocks run: the estimate by which a distributed sweep shares the items."""
        _, c, u = item
        _, layer, cells = self.units[u]
        a, b = self.chunks[c]
        blocks = self.hm.n_layers - layer if self.skip_prefix else self.hm.n_layers
        return len(cells) * blocks * (b - a)


def unit_key(direction: str, chunk: int, unit: int) -> str:
    """The key of one unit's per-pair metrics in the sweep's store."""
    return f"{direction}.chunk={chunk}.unit={unit}"


def base_key(chunk: int) -> str:
    """The key of one pair chunk's unpatched runs (per-pair metrics) in the sweep's store."""
    return f"base.chunk={chunk}"


def plan_sweep(model, pairs, sites=("resid_pre",), layers=None, positions=None, heads=False, direction="denoise",
               batch_size=256, skip_prefix=True, model_name="model", device=None, matmul="fp32") -> Plan:
    """Check the arguments and plan the sweep (see `interp.patching.sweep`)."""
    from hooks.matmul import MODES
    dirs = directions_of(direction)
    _check_choice("matmul", matmul, MODES)
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    if sites is None:
        raise InterpError(f"sites=None is not valid; valid: one or more of {', '.join(SITES)}")
    sites = [sites] if isinstance(sites, str) else list(sites)   # one site by its name
    if not sites:
        raise InterpError(f"no site selected; valid: {', '.join(SITES)}")
    for s in sites:
        _check_choice("site", s, SITES)
    check_count(batch_size, "batch_size")
    layers = check_layers(layers, hm.n_layers)
    check_pairs(pairs, hm.vocab_size)
    pairs = pairs.to(device or _model_device(hm))
    N, T = pairs.clean.shape
    positions = check_positions(positions, T)
    span = _span(pairs)
    units = _plan_units(hm, sites, layers, positions, heads, T)
    pair_chunk = max(1, min(N, int(batch_size)))
    chunks = [(a, min(N, a + pair_chunk)) for a in range(0, N, pair_chunk)]
    settings = dict(sites=sites, layers=layers, positions=positions, heads=bool(heads), direction=direction,
                    batch_size=int(batch_size), skip_prefix=bool(skip_prefix))
    if matmul != "fp32":   # in the spec only when set, so folders of earlier sweeps still resume
        settings["matmul"] = matmul
    settings.update(kernel_spec())   # e.g. fla's products in IEEE fp32 (interp.kernels); likewise only when set
    return Plan(hm, pairs, units, chunks, dirs, int(batch_size), bool(skip_prefix), model_name, settings, span)


def _span(pairs):
    """(first real index [N], real tokens [N]) of padded pairs, on their device (None: unpadded, and their
    mask dropped); their answer positions must be real tokens (`interp.tasks.padded.pair_span`)."""
    from interp.tasks.padded import pair_span
    mask, span = pair_span(pairs)
    if mask is None:
        pairs.attention_mask = None
    return span


def _plan_units(hm, sites, layers, positions, heads, T):
    """The units: (site, layer, cells) for every site x layer that has the site. A site none of ``layers`` has is
    refused (the first such layer named; ``layers`` None: every layer); where only some lack it, those are skipped,
    with a warning naming them when ``layers`` were given (e.g. every site of ``--layer 1,3`` on a hybrid)."""
    units, skipped = [], []
    chosen = list(range(hm.n_layers) if layers is None else layers)
    for s in sites:
        have = [i for i in chosen if not _lacks(hm.layers[i], s)]
        if not have and layers is not None:
            plan_cells(hm, s, chosen[0], positions, heads, T)   # raises, naming the site and the layer's kind
        skipped += [f"{s} at {i} ({layer_kind(hm.layers[i])})" for i in chosen if i not in have]
        units += [(s, i, plan_cells(hm, s, i, positions, heads, T)) for i in have]
    if not units:
        raise InterpError(f"no layer of this model has site(s) {', '.join(sites)}")
    if skipped and layers is not None:
        warnings.warn(f"patching: skipped the sites these layers lack: {', '.join(skipped)}", stacklevel=3)
    return units


def _lacks(L, site: str) -> bool:
    return (site.startswith("attn.") and L.attn is None) or (site.startswith("rec.") and L.rec is None)


def sweep_spec(hm, pairs, model_name, **settings) -> dict:
    """The spec of a sweep's result folder: the model (name and weights digest), the pairs (task,
    knobs, seed, n, length and a digest of their tokens and answers), the settings of the sweep
    (sites, layers, positions, heads, direction, batch size, skip_prefix, a matmul mode other than fp32) and
    the device type:
    everything that changes the stored numbers. (Which pairs are kept is decided when the result
    is assembled, so the filtering options are not part of it.)"""
    from interp.store import model_digest, spec_digest, tensor_digest
    tensors = [pairs.clean, pairs.corrupted, pairs.answer_pos, pairs.clean_answer, pairs.corrupted_answer]
    tensors += [] if pairs.attention_mask is None else [pairs.attention_mask.long()]
    meta = dict(pairs.meta or {})
    return {"model": {"name": model_name, "digest": model_digest(hm)},
            "pairs": {**meta, "n": int(pairs.clean.shape[0]), "T": int(pairs.clean.shape[1]),
                      "digest": spec_digest([tensor_digest(t.cpu()) for t in tensors])},
            **settings, "device": _model_device(hm).type}
