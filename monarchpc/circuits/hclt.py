"""Hidden Chow-Liu tree (HCLT): a tree of latents over a Chow-Liu tree of the variables.

Given a Chow-Liu tree over the observed variables x_1..x_D (see
:mod:`monarchpc.circuits.chow_liu`) rooted at r, every variable v gets a latent z_v with h
states, and

    p(x) = sum_z p(z_r) prod_v p(x_v | z_v) prod_{v != r} p(z_v | z_parent(v)).

As a circuit, evaluated bottom-up (the leaves of the tree first), with linear-space
vectors of size h:

    u_v = leaf_v[:, x_v] * prod_{c child of v} (M_c @ y_c),   y_v = u_v / sum(u_v),
    p(x) = (root . y_r) * prod_v sum(u_v)

where leaf_v (h, V_v) is the categorical leaf of variable v (row i: p(x_v | z_v = i)) and
M_c (h, h) the sum block of the edge parent(c) -> c (row i: p(z_c | z_parent = i)). The
sum blocks are dense or Monarch, D - 1 blocks of the sum-block core
(:mod:`monarchpc.circuits.blocks`); the products of messages are the product nodes.
Scaled linear space as in :mod:`monarchpc.circuits.hmm`:
the log of every normalizer is accumulated, so nothing underflows. The product node u_v
is formed in log space (log leaf + the children's log messages, added into the parents
with one ``index_add``) and brought back to linear space after subtracting its maximum.

Layout: variables are renumbered in breadth-first order (by depth, then by leaf group,
then by index), so every depth of the tree is a contiguous range and one level is
evaluated with a few batched calls: the leaves' gathers, one ``index_add`` of the child
messages, and the messages of the level's edges in one stacked product (the edge into
internal node i is block i - 1). Parameters are cut into levels with one ``split`` per
tensor and forward pass (a slice per level would zero-fill a full-size gradient each).

Leaves: one categorical distribution per variable over its own vocabulary (per-variable
``vocab_sizes``: Y has 256 values, Co/Cg 511 under YCoCg-R, so no probability is wasted on
impossible values), or, with ``channels``, one shared by all variables of a channel.
Parameters are grouped by (channel, vocabulary): group g holds a tensor (P_g, h, V_g).
Every parameter is normalized along its last dimension (EM convention of the package).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monarchpc.circuits.blocks import BlockSpec, SumBlocks, random_stochastic
from monarchpc.circuits.chow_liu import chow_liu_tree
from monarchpc.errors import ConfigError

MISSING = -1
"""A value that is marginalized out (its leaf value is 1 for every state)."""


class HCLT(nn.Module):
    """HCLT over a rooted tree ``parent`` (D,) (-1 at the root); see the module docstring.

    ``blocks``: D - 1 stacked sum blocks (the edge into internal node i is block i - 1).
    ``vocab_sizes``: vocabulary of each variable (D,). ``channels``: the channel of each
    variable (D,) to share one leaf per channel, or None for a leaf per variable.
    """

    structure = "hclt"

    def __init__(self, parent: np.ndarray | Tensor | list[int], blocks: SumBlocks,
                 vocab_sizes: list[int], channels: list[int] | None = None,
                 generator: torch.Generator | None = None, perturbation: float = 2.0) -> None:
        super().__init__()
        parent = np.asarray(torch.as_tensor(parent).cpu(), dtype=np.int64)
        d, h = len(parent), blocks.hidden_size
        if (parent < 0).sum() != 1 or blocks.num_blocks != d - 1 or len(vocab_sizes) != d:
            raise ValueError(f"need one root, {d - 1} blocks and {d} vocabularies; got "
                             f"{(parent < 0).sum()} roots, {blocks.num_blocks} blocks, "
                             f"{len(vocab_sizes)} vocabularies")
        self.num_vars, self.hidden_size, self.blocks = d, h, blocks
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.vocab_size = max(self.vocab_sizes)
        depth = _depths(parent)

        # leaf groups: one parameter tensor per distinct (channel, vocabulary)
        tied = channels is not None
        keys = [(channels[v] if tied else 0, self.vocab_sizes[v]) for v in range(d)]
        group_keys = sorted(set(keys))
        group = np.array([group_keys.index(k) for k in keys])
        order = np.lexsort((np.arange(d), group, depth))  # internal position -> variable
        position = np.argsort(order)  # variable -> internal position
        self.register_buffer("parent", torch.as_tensor(parent))
        self.register_buffer("order", torch.as_tensor(order), persistent=False)
        self.register_buffer("inverse", torch.as_tensor(position), persistent=False)
        vocab_int = torch.as_tensor(self.vocab_sizes)[torch.as_tensor(order)]
        self.register_buffer("vocab_int", vocab_int, persistent=False)
        self.tied = tied
        self.leaves = nn.ParameterList(
            nn.Parameter(random_stochastic(
                (1 if tied else int((group == g).sum()), h, vocab), generator, perturbation))
            for g, (_, vocab) in enumerate(group_keys))
        self.root = nn.Parameter(random_stochastic((h,), generator, perturbation))

        # levels: contiguous internal ranges; per level the leaf groups' sub-ranges
        self.levels: list[tuple[int, int]] = []
        self.level_groups: list[list[tuple[int, int, int, int]]] = []  # (g, start, stop, row)
        self.group_sizes: list[list[int]] = [[] for _ in group_keys]  # [g][level]: rows
        rows_used = [0] * len(group_keys)
        for lvl in range(int(depth.max()) + 1):
            idx = np.flatnonzero(depth[order] == lvl)
            s, e = int(idx[0]), int(idx[-1]) + 1
            self.levels.append((s, e))
            parts = []
            for g in range(len(group_keys)):
                members = np.flatnonzero(group[order[s:e]] == g)
                self.group_sizes[g].append(len(members))
                if len(members):
                    row = 0 if tied else rows_used[g]
                    parts.append((g, s + int(members[0]), s + int(members[-1]) + 1, row))
                    rows_used[g] += len(members)
            self.level_groups.append(parts)
        self.edge_sizes = [e - s for s, e in self.levels[1:]]  # blocks of each level >= 1

        # parent of every internal node, as a position within the parent's level
        parent_local = np.zeros(d, dtype=np.int64)
        for lvl in range(1, len(self.levels)):
            s, e = self.levels[lvl]
            parent_local[s:e] = position[parent[order[s:e]]] - self.levels[lvl - 1][0]
        self.register_buffer("parent_local", torch.as_tensor(parent_local), persistent=False)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "parent")
        if saved is not None and not torch.equal(saved.cpu(), self.parent.cpu()):
            raise ValueError("the checkpoint holds an HCLT over another Chow-Liu tree: build "
                             "the model from the same data, seed and model.chow_liu_* settings")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def leaf_tables(self) -> list[list[Tensor]]:
        """Per leaf group: [table (V, h)] if tied, else the (n, h, V) rows of every level."""
        if self.tied:
            return [[w[0].t()] for w in self.leaves]
        return [list(w.split(sizes)) for w, sizes in zip(self.leaves, self.group_sizes,
                                                         strict=True)]

    def leaf_values(self, x: Tensor, lvl: int, tables: list[list[Tensor]],
                    missing: Tensor | None) -> Tensor:
        """Leaf values of level ``lvl``'s variables: (n_lvl, N, h), linear space.

        ``x`` (N, D) holds values in internal order; ``missing`` (N, D) bool or None.
        """
        parts = []
        for g, s, e, _ in self.level_groups[lvl]:
            xs = x[:, s:e].t()  # (n_g, N)
            if self.tied:  # one (V, h) table for the whole group
                vals = F.embedding(xs, tables[g][0])
            else:  # row k of this level's (n_g, h, V) chunk for the k-th variable
                table = tables[g][lvl].transpose(1, 2)  # (n_g, V, h), a view
                vals = table.gather(1, xs[:, :, None].expand(-1, -1, self.hidden_size))
            if missing is not None:
                vals = vals.masked_fill(missing[:, s:e].t()[:, :, None], 1.0)
            parts.append(vals)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Natural-log likelihood of each row of ``x`` (N, D) LongTensor -> (N,).

        Entries equal to MISSING (-1) are marginalized out; a value outside its variable's
        vocabulary (which has probability zero) raises ValueError.
        """
        if x.dim() != 2 or x.shape[1] != self.num_vars:
            raise ValueError(f"expected rows (N, {self.num_vars}), got shape {tuple(x.shape)}")
        x = x[:, self.order].long()
        missing = x < 0
        has_missing, too_large = torch.stack([missing.any(), (x >= self.vocab_int).any()]).tolist()
        if too_large:
            raise ValueError("a value lies outside its variable's vocabulary (vocab_sizes)")
        ys, log_scale = self.upward(x.clamp_min(0), missing if has_missing else None)
        p = (ys[0][0] * self.root).sum(-1).clamp_min(torch.finfo(self.root.dtype).tiny)
        return p.log() + log_scale

    def upward(self, x: Tensor, missing: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """The bottom-up pass over values ``x`` (N, D) in internal order (``missing`` (N, D)
        bool marks values summed out): per level the node vectors y (n_lvl, N, h), each
        scaled to sum to one (linear space), and the log of all scales (N,), so that
        log p(x) = log(root . y_root) + log_scale."""
        tables, edges = self.leaf_tables(), self.blocks.split(self.edge_sizes)
        tiny = torch.finfo(self.root.dtype).tiny
        log_scale = torch.zeros(x.shape[0], dtype=self.root.dtype, device=x.device)
        ys: list[Tensor] = [x.new_empty(0)] * len(self.levels)
        msg = None
        for lvl in reversed(range(len(self.levels))):
            log_u = self.leaf_values(x, lvl, tables, missing).clamp_min(tiny).log()
            if msg is not None:  # product nodes: add the children's log messages
                s, e = self.levels[lvl + 1]
                log_u = log_u.index_add(0, self.parent_local[s:e], msg.clamp_min(tiny).log())
            top = log_u.amax(-1, keepdim=True).detach()
            u = (log_u - top).exp()
            norm = u.sum(-1, keepdim=True)
            log_scale = log_scale + (top + norm.log()).sum(0).squeeze(-1)
            ys[lvl] = u / norm  # (n_lvl, N, h), each vector sums to one
            if lvl > 0:  # sum blocks of the edges into this level
                msg = self.blocks.apply_weights(ys[lvl], edges[lvl - 1])
        return ys, log_scale

    def madds_per_token(self) -> int:
        """Multiply-adds per variable of the forward pass (the paper's FLOPs per dimension).

        All sum blocks ((D - 1) edge blocks and the root's h-way sum) divided by D, rounded.
        """
        total = (self.num_vars - 1) * self.blocks.madds() + self.hidden_size
        return round(total / self.num_vars)

    @torch.no_grad()
    def sample(self, n: int, length: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples (n, D) LongTensor (``length``, if given, must equal D)."""
        if length is not None and length != self.num_vars:
            raise ValueError(f"an HCLT samples all {self.num_vars} variables, not {length}")
        z = torch.multinomial(self.root.detach().expand(n, -1), 1, generator=generator).t()
        out = torch.empty(n, self.num_vars, dtype=torch.long, device=self.root.device)
        for lvl, (s, e) in enumerate(self.levels):
            if lvl > 0:  # z: (n_lvl, n) states of this level, drawn from the parents' states
                z = self.blocks.sample_next(z[self.parent_local[s:e]], s - 1, generator=generator)
            out[:, s:e] = self.draw_leaves(lvl, z, generator).t()
        return out[:, self.inverse]

    @torch.no_grad()
    def draw_leaves(self, lvl: int, z: Tensor, generator: torch.Generator | None = None
                    ) -> Tensor:
        """Values (n_lvl, n) of level ``lvl``'s variables drawn from their leaves given the
        latent states z (n_lvl, n)."""
        s, _ = self.levels[lvl]
        out = torch.empty_like(z)
        for g, gs, ge, row in self.level_groups[lvl]:
            w = self.leaves[g].detach()
            k = torch.arange(ge - gs, device=z.device)[:, None] * (not self.tied) + row
            probs = w[k, z[gs - s:ge - s]]  # (n_g, n, V)
            draw = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            out[gs - s:ge - s] = draw.reshape(ge - gs, -1)
        return out

    def extra_repr(self) -> str:
        return (f"num_vars={self.num_vars}, hidden_size={self.hidden_size}, "
                f"levels={len(self.levels)}, tied_leaves={self.tied}")


def _depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node of the rooted tree ``parent`` (-1 at the root)."""
    depth = np.full(len(parent), -1, dtype=np.int64)
    depth[parent < 0] = 0
    while (depth < 0).any():
        todo = depth < 0
        known = depth[np.maximum(parent, 0)] >= 0
        ready = todo & known
        if not ready.any():
            raise ValueError("parent array has a cycle or does not reach the root")
        depth[ready] = depth[parent[ready]] + 1
    return depth


def build_hclt(cfg: Any, spec: BlockSpec, train_rows: Tensor, vocab_sizes: list[int],
               generator: torch.Generator | None = None) -> HCLT:
    """An HCLT from a ``model/`` config: Chow-Liu tree from ``train_rows`` (N, D), random
    weights, D - 1 sum blocks of ``spec``.

    Config keys: ``leaf_tying`` (none|channel), ``channels`` (variable v is in channel
    v % channels), ``chow_liu_rows``, ``chow_liu_bins``, ``chow_liu_binning``,
    ``perturbation``. The mutual information is computed on the GPU when one is visible.
    """
    n = train_rows.shape[0]
    m = min(n, int(cfg.get("chow_liu_rows") or n))
    sample = train_rows[torch.randperm(n, generator=generator)[:m].to(train_rows.device)]
    if torch.cuda.is_available():  # the mutual information is a few large products
        sample = sample.cuda()
    parent = chow_liu_tree(sample, vocab_sizes, cfg.get("chow_liu_bins", 32),
                           cfg.get("chow_liu_binning") or "quantile")
    return hclt_from_tree(cfg, spec, parent, vocab_sizes, generator)


def hclt_from_tree(cfg: Any, spec: BlockSpec, parent: np.ndarray | Tensor,
                   vocab_sizes: list[int], generator: torch.Generator | None = None) -> HCLT:
    """An HCLT of a ``model/`` config over a given tree ``parent`` (D,), random weights
    (a saved run's tree: see monarchpc/structures.py)."""
    d = len(parent)
    perturbation = float(cfg.get("perturbation", 2.0))
    blocks = SumBlocks(spec, d - 1, generator, perturbation)
    return HCLT(parent, blocks, vocab_sizes, leaf_channels(cfg, d), generator, perturbation)


def leaf_channels(cfg: Any, num_vars: int) -> list[int] | None:
    """The channel of each variable when leaves are tied per channel (``leaf_tying``
    channel: variable v is in channel v % ``channels``), else None (a leaf per variable)."""
    tying = cfg.get("leaf_tying") or "none"
    if tying not in ("none", "channel"):
        raise ConfigError(f"unknown model.leaf_tying {tying!r}; use none|channel")
    if tying == "none":
        return None
    return [v % int(cfg.get("channels") or 3) for v in range(num_vars)]
