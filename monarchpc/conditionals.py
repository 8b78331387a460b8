"""The conditionals a lossless coder needs: every value given the earlier ones, in a fixed
order, step by step over a batch of independent rows (the same object drives the encoder
and the decoder, so both compute the same floats; float64 in practice).

* :class:`HMMSteps`: x_t | x_<t of an HMM from forward messages, rows from their start;
* :class:`HCLTSteps`: an HCLT's variables in its tree's breadth-first order, each given all
  earlier ones, by messages along one root-to-node path (see its docstring).

Linear space, every vector scaled to sum to one (only ratios matter).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from monarchpc.circuits.blocks import SumBlocks
from monarchpc.circuits.hclt import HCLT
from monarchpc.circuits.hmm import HMM


class Steps(Protocol):
    """A batch of n independent rows coded step by step (the same object drives the
    encoder and the decoder, so both compute the same floats)."""

    n_steps: int

    def probs(self, t: int) -> tuple[Tensor, Tensor]:
        """(p(x_t = v | x_<t) (n, V) float64 linear space, active (n,) bool): rows whose
        step t codes a symbol."""
        ...

    def advance(self, t: int, symbols: Tensor) -> None:
        """Condition on the values (n,) of step t (0 where inactive)."""
        ...


def _normalize(v: Tensor) -> Tensor:
    return v / v.sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


class HMMSteps:
    """Forward messages of an HMM over n rows of ``lengths`` (n,) tokens, from their start."""

    def __init__(self, hmm: HMM, lengths: Tensor) -> None:
        self.hmm, self.lengths = hmm, lengths
        self.n_steps = int(lengths.max()) if len(lengths) else 0
        self.emission = hmm.emission.detach()  # (h, V)
        self.columns = self.emission.t().contiguous()  # (V, h): B[:, v] is row v
        self.a = _normalize(hmm.initial.detach()).expand(len(lengths), -1)  # (n, h)

    def probs(self, t: int) -> tuple[Tensor, Tensor]:
        return self.a @ self.emission, self.lengths > t

    def advance(self, t: int, symbols: Tensor) -> None:
        u = _normalize(self.a * self.columns[symbols])
        self.a = _normalize(transpose_block(self.hmm.transition, u))


def transpose_block(blocks: SumBlocks, u: Tensor, index: int = 0) -> Tensor:
    """M^T u (N, h) for block ``index`` M = L_0 ... L_{m-1} of ``blocks``, linear space:
    the layers' transposes in reverse order, L_{m-1}^T ... L_0^T u (layer 0 applied first).
    Equals :func:`monarchpc.queries.transpose_apply` (tested) at the cost of one
    forward application instead of two."""
    y = u[None]
    for l, w in enumerate(blocks.layers):
        y = blocks.apply_layer(l, y, w[index:index + 1].detach().transpose(-1, -2))
    return y[0]


class HCLTTree:
    """What :class:`HCLTSteps` needs of an HCLT, computed once: the tree in internal
    (breadth-first) positions, every variable's leaf, and the edge blocks.

    Internal position p is variable ``hclt.order[p]``; the edge into p > 0 is block p - 1.
    Small blocks (h <= DENSE_EDGES) are materialized as dense (h, h) matrices: one matrix
    product per application instead of one per Monarch layer.
    """

    DENSE_EDGES = 128

    def __init__(self, hclt: HCLT) -> None:
        self.hclt = hclt
        d = hclt.num_vars
        order, inverse = hclt.order.tolist(), hclt.inverse.tolist()
        parent = hclt.parent.tolist()
        self.parent = [-1 if parent[order[p]] < 0 else inverse[parent[order[p]]]
                       for p in range(d)]
        self.children: list[list[int]] = [[] for _ in range(d)]
        for p in range(1, d):
            self.children[self.parent[p]].append(p)
        self.leaves = [leaf_matrix(hclt, p) for p in range(d)]  # (h, V_p)
        self.root = _normalize(hclt.root.detach())
        self.dense = hclt.blocks.dense() if hclt.hidden_size <= self.DENSE_EDGES else None

    def path(self, p: int) -> list[int]:
        """Internal positions from the root down to p."""
        out = [p]
        while self.parent[out[-1]] >= 0:
            out.append(self.parent[out[-1]])
        return out[::-1]

    def message(self, p: int, y: Tensor) -> Tensor:
        """M_p y (N, h): the edge block into p applied to child values y; linear space."""
        if self.dense is not None:
            return y @ self.dense[p - 1].t()
        return self.hclt.blocks(y, p - 1)

    def message_t(self, p: int, u: Tensor) -> Tensor:
        """M_p^T u (N, h): parent-side values u carried down the edge into p."""
        if self.dense is not None:
            return u @ self.dense[p - 1]
        return transpose_block(self.hclt.blocks, u, p - 1)


class HCLTSteps:
    """Patch rows of an HCLT coded in the tree's breadth-first order (step t codes
    variable ``order[t]``), each value given all earlier ones; ``present`` (n, D) bool (in
    variable order) is False for values outside the image, which are never coded.

    Every prefix of the order holds the root and is closed under parents, so the values not
    yet coded are whole subtrees, which sum to 1 (stochastic blocks and leaves). Then, with
    u the parent of the next variable v and O the values coded so far,

        p(z_u, x_O) ∝ down_u * l_u * prod_{c coded child of u} m_c,    m_c = M_c y_c,
        p(x_v = k | x_O) = sum_z post_v(z) leaf_v[z, k],   post_v ∝ M_v^T p(z_u, x_O),

    where y_c ∝ l_c * prod (coded children's messages) is c's upward value, l_c = leaf_c[:,
    x_c] its leaf value, and down_u the message down the path from the root (down_root =
    root, down_c ∝ M_c^T (down_w * l_w * prod_{coded children c' != c of w} m_c')). Coding v
    changes the upward values of v's ancestors only: a step costs two passes along one
    root-to-node path (about the tree's depth in block applications), not the whole tree.
    Both passes are shortened: a message is recomputed only when it is needed and a value
    below it was coded since (``dirty``), and the down messages of the previous step's path
    stay valid for the nodes the two paths share (each has the newly coded value in its
    subtree, and down_w depends only on values outside w's subtree). About half the block
    applications of recomputing both paths at every step on the Tiny ImageNet trees.
    All vectors are scaled to sum to one (only ratios matter); linear space, float64.
    """

    def __init__(self, tree: HCLTTree, present: Tensor) -> None:
        self.tree = tree
        hclt = tree.hclt
        self.order = hclt.order
        self.present = present[:, hclt.order]  # step order
        n, self.n_steps = self.present.shape
        ones = torch.ones(n, hclt.hidden_size, dtype=hclt.root.dtype)
        self.leafval: list[Tensor] = [ones] * self.n_steps  # l_p of coded positions
        self.msg: list[Tensor] = [ones] * self.n_steps  # m_p = M_p y_p of coded p > 0
        self.dirty = [False] * self.n_steps  # m_p is out of date
        self.coded = 0  # positions < coded are coded
        self.path: list[int] = []  # the last step's path and its down messages
        self.down: list[Tensor] = []

    def _message(self, c: int) -> Tensor:
        """m_c, recomputed (with its out-of-date descendants) if a value below c changed."""
        if self.dirty[c]:
            self.msg[c] = self.tree.message(c, _normalize(self._product(c)))
            self.dirty[c] = False
        return self.msg[c]

    def _product(self, w: int, skip: int = -1) -> Tensor:
        """l_w * prod of the messages of w's coded children other than ``skip``."""
        out = self.leafval[w]
        for c in self.tree.children[w]:
            if c < self.coded and c != skip:
                out = out * self._message(c)
        return out

    def probs(self, t: int) -> tuple[Tensor, Tensor]:
        tree = self.tree
        path = tree.path(t)
        keep = 0  # the down messages shared with the last step's path (if it was step t - 1)
        if self.coded == t and self.path:
            while keep < min(len(path), len(self.path)) and path[keep] == self.path[keep]:
                keep += 1
        down = self.down[:keep] or [tree.root.expand(self.present.shape[0], -1)]
        for i in range(len(down), len(path)):  # down the path: w -> c
            w, c = path[i - 1], path[i]
            down.append(tree.message_t(c, _normalize(down[-1] * self._product(w, skip=c))))
        self.path, self.down = path, down
        return _normalize(down[-1]) @ tree.leaves[t], self.present[:, t]

    def advance(self, t: int, symbols: Tensor) -> None:
        tree = self.tree
        leaf = tree.leaves[t].t()[symbols]  # (n, h): leaf_t[:, x_t]
        self.leafval[t] = torch.where(self.present[:, t, None], leaf, 1.0)
        self.coded = t + 1
        w = t
        while w > 0:  # the upward values of t and its ancestors changed
            self.dirty[w] = True
            w = tree.parent[w]
        if not self.path or self.path[-1] != t:
            self.path, self.down = [], []


def leaf_matrix(hclt: HCLT, pos: int) -> Tensor:
    """The leaf (h, V_v) of the variable at internal position ``pos`` (row z: p(x_v | z_v))."""
    for lvl, (s, e) in enumerate(hclt.levels):
        if s <= pos < e:
            for g, gs, ge, row in hclt.level_groups[lvl]:
                if gs <= pos < ge:
                    w = hclt.leaves[g].detach()
                    return w[row] if hclt.tied else w[row + pos - gs]
    raise IndexError(pos)
