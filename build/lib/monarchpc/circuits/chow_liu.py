"""Chow-Liu trees: the maximum spanning tree of pairwise mutual information.

Used by the hidden Chow-Liu tree (:mod:`monarchpc.circuits.hclt`) to decide which
variables' latents are connected. Three steps, each a function:

1. :func:`mutual_information`: plug-in estimate of I(X_u; X_v) in nats for all pairs, from
   the joint counts of a data sample (one-hot matrix products, chunked over variables so
   that many variables fit; runs on the device of the data);
2. :func:`maximum_spanning_tree`: Prim's algorithm on the (D, D) weights (CPU, numpy);
3. :func:`tree_center` and :func:`root_tree`: root the tree at its center (the middle of
   a longest path), which gives the fewest levels for the level-by-level evaluation.

Values with many categories (pixels: 256 or 511) are first put into ``num_bins`` bins per
variable (:func:`bin_values`, equal-frequency by default): the estimate then needs far
fewer samples and ``D^2 * num_bins^2`` counts instead of ``D^2 * V^2``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor


def bin_values(x: Tensor, vocab_sizes: Tensor, num_bins: int | None,
               method: str = "quantile") -> tuple[Tensor, int]:
    """Put the values of x (N, D) into at most ``num_bins`` bins per variable: (bins, n_bins).

    ``quantile``: equal-frequency bins of each variable's sample, value a of variable v
    goes to floor(num_bins * #{n: x[n, v] < a} / N) (equal values share a bin), so a
    concentrated channel (Co, Cg) keeps its detail where its mass is. ``uniform``: equal
    widths, floor(a * num_bins / vocab_sizes[v]). With ``num_bins`` None (or not smaller
    than every vocabulary) the values are returned unchanged.
    """
    vmax = int(vocab_sizes.max())
    if num_bins is None or num_bins >= vmax:
        return x.long(), vmax
    x = x.long()
    if method == "uniform":
        v = vocab_sizes.to(x.device).long()
        return torch.div(x * num_bins, v, rounding_mode="floor"), num_bins
    if method != "quantile":
        raise ValueError(f"unknown binning {method!r}; use quantile|uniform")
    cols = x.t().contiguous()  # (D, N)
    below = torch.searchsorted(cols.sort(1).values, cols, side="left")  # (D, N)
    return (below * num_bins // x.shape[0]).t(), num_bins


def mutual_information(x: Tensor, num_values: int, chunk_size: int = 64) -> Tensor:
    """Pairwise mutual information (nats) of the columns of x (N, D) with values in [0, V).

    Joint counts of columns u, v are one-hot matrix products (float32, exact below 2^24
    rows), computed for chunks of ``chunk_size`` x ``chunk_size`` variables; the diagonal
    holds each variable's entropy. Returns (D, D) float64 on x's device (symmetric, >= 0).
    """
    n, d = x.shape
    v = num_values
    if n >= 2**24:
        raise ValueError(f"use fewer than 2**24 rows for exact float32 counts, got {n}")

    def onehot(s: int) -> Tensor:  # (N, c*V) float32 one-hot of the columns of chunk s
        cols = x[:, s : s + chunk_size].long()
        offsets = torch.arange(cols.shape[1], device=x.device) * v
        out = torch.zeros(n, cols.shape[1] * v, device=x.device)
        return out.scatter_(1, cols + offsets, 1.0)

    chunks = {s: onehot(s) for s in range(0, d, chunk_size)} if d <= 4 * chunk_size else None
    marg = torch.cat([(chunks[s] if chunks else onehot(s)).sum(0).reshape(-1, v)
                      for s in range(0, d, chunk_size)]).double() / n  # (D, V) marginals
    mi = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for s in range(0, d, chunk_size):
        a = chunks[s] if chunks else onehot(s)
        for t in range(s, d, chunk_size):
            b = chunks[t] if chunks else onehot(t)
            joint = (a.t() @ b).double() / n  # (c*V, c'*V)
            joint = joint.reshape(a.shape[1] // v, v, b.shape[1] // v, v).transpose(1, 2)
            indep = marg[s : s + chunk_size, None, :, None] * marg[None, t : t + chunk_size, None]
            block = torch.xlogy(joint, joint / indep.clamp_min(1e-300)).sum((-1, -2))
            mi[s : s + chunk_size, t : t + chunk_size] = block
            mi[t : t + chunk_size, s : s + chunk_size] = block.t()
    return mi.clamp_min(0.0)


def maximum_spanning_tree(weights: Tensor | np.ndarray) -> list[tuple[int, int]]:
    """Edges (u, v) of a maximum spanning tree of the complete graph with (D, D) ``weights``.

    Prim's algorithm, O(D^2) with numpy vector steps; ties go to the lowest index.
    """
    w = weights.detach().cpu().numpy() if isinstance(weights, Tensor) else np.asarray(weights)
    d = w.shape[0]
    in_tree = np.zeros(d, dtype=bool)
    in_tree[0] = True
    best = w[0].astype(np.float64).copy()  # best weight linking each node to the tree
    link = np.zeros(d, dtype=np.int64)
    edges = []
    for _ in range(d - 1):
        cand = np.where(in_tree, -np.inf, best)
        v = int(np.argmax(cand))
        edges.append((int(link[v]), v))
        in_tree[v] = True
        closer = w[v] > best
        best = np.where(closer, w[v], best)
        link = np.where(closer, v, link)
    return edges


def _bfs(adj: list[list[int]], root: int) -> tuple[np.ndarray, np.ndarray]:
    """Parents (-1 at the root) and depths of a tree given by adjacency lists."""
    d = len(adj)
    parent = np.full(d, -1, dtype=np.int64)
    depth = np.full(d, -1, dtype=np.int64)
    depth[root] = 0
    queue = deque([root])
    while queue:
        u = queue.popleft()
        for c in adj[u]:
            if depth[c] < 0:
                depth[c], parent[c] = depth[u] + 1, u
                queue.append(c)
    return parent, depth


def adjacency(edges: list[tuple[int, int]], d: int) -> list[list[int]]:
    adj: list[list[int]] = [[] for _ in range(d)]
    for u, v in edges:
        adj[u].append(v)
        adj[v].append(u)
    return adj


def tree_center(edges: list[tuple[int, int]], d: int) -> int:
    """A center of the tree (a node of least eccentricity): the middle of a longest path."""
    adj = adjacency(edges, d)
    _, depth = _bfs(adj, 0)
    a = int(np.argmax(depth))
    parent, depth = _bfs(adj, a)
    b = int(np.argmax(depth))
    path = [b]
    while path[-1] != a:
        path.append(int(parent[path[-1]]))
    return path[len(path) // 2]


def root_tree(edges: list[tuple[int, int]], d: int, root: int) -> np.ndarray:
    """Parent of every node (int64 (D,), -1 at ``root``) of the tree rooted at ``root``."""
    parent, depth = _bfs(adjacency(edges, d), root)
    if (depth < 0).any():
        raise ValueError("the edges do not connect all variables into one tree")
    return parent


def chow_liu_tree(x: Tensor, vocab_sizes: Tensor | list[int], num_bins: int | None = 32,
                  binning: str = "quantile") -> np.ndarray:
    """Chow-Liu tree of the columns of x (N, D), rooted at its center: parents (D,), -1 at root."""
    vocab = torch.as_tensor(vocab_sizes, dtype=torch.long)
    if vocab.numel() == 1:
        vocab = vocab.expand(x.shape[1])
    bins, n_bins = bin_values(x, vocab, num_bins, binning)
    mi = mutual_information(bins, n_bins)
    edges = maximum_spanning_tree(mi)
    d = x.shape[1]
    return root_tree(edges, d, tree_center(edges, d))
