"""Pixel correspondence between a predicted and a human boundary map (numba).

BSR's ``correspondPixels`` (Martin's CSA matcher) solves an assignment problem: pixel pairs
within ``maxDist`` cost ``rint(100 d)`` and every unmatched pixel costs ``outlierCost = 100 x
maxDist``, 100x any real match. Its graph joins outliers through random sparse edges seeded
from the clock, so the reference is itself slightly random: its solution sometimes misses a
match the sparse outlier graph cannot host, and it breaks ties between equal-cost optima
arbitrarily.

``exact=True`` solves the same objective without the random outlier graph, by successive
shortest paths (Dijkstra with potentials, one row at a time, each row with a private outlier
column), with random sub-unit jitter to break ties the way CSA does: differently for each
annotator. ``exact=False`` is a ~2x faster maximum-cardinality matching (greedy nearest-first,
Hopcroft-Karp, then cost-lowering swaps); it matches the same number of pixels but picks which
predicted pixels less like CSA.
"""

from __future__ import annotations

import heapq

import numba
import numpy as np

__all__ = ["disk_offsets", "match_pixels"]

_INF = np.int64(1) << 62


def disk_offsets(max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (dy, dx) offsets with dy^2 + dx^2 <= max_dist^2, sorted by distance.

    max_dist: search radius in pixels (BSR: maxDist * image diagonal). Returns two int64 (K,).
    """
    r = int(np.ceil(max_dist))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d2 = (dy * dy + dx * dx).ravel()
    keep = d2 <= max_dist * max_dist
    order = np.argsort(d2[keep], kind="stable")
    return dy.ravel()[keep][order].astype(np.int64), dx.ravel()[keep][order].astype(np.int64)


@numba.njit(cache=True)
def _node_ids(mask):
    """Number the True pixels of bool (H, W) in row-major order; -1 elsewhere."""
    ids = np.full(mask.shape, -1, np.int64)
    pix = np.empty(mask.sum(), np.int64)
    n = 0
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            if mask[y, x]:
                ids[y, x] = n
                pix[n] = y * mask.shape[1] + x
                n += 1
    return ids, pix


@numba.njit(cache=True)
def _adjacency(pred, gt_ids, dy, dx):
    """CSR lists of gt nodes within the disk of each pred pixel, nearest first."""
    h, w = pred.shape
    start = [0]
    nbrs = []
    pix = []
    for y in range(h):
        for x in range(w):
            if not pred[y, x]:
                continue
            pix.append(y * w + x)
            for k in range(dy.shape[0]):
                yy, xx = y + dy[k], x + dx[k]
                if 0 <= yy < h and 0 <= xx < w and gt_ids[yy, xx] >= 0:
                    nbrs.append(gt_ids[yy, xx])
            start.append(len(nbrs))
    return np.array(start, np.int64), np.array(nbrs, np.int64), np.array(pix, np.int64)


@numba.njit(cache=True)
def _greedy(pix, width, gt_ids, dy, dx, match_l, match_r):
    """Greedy matching in increasing distance: offset by offset, every free pred pixel takes
    the gt pixel at that offset if it is still free."""
    h = gt_ids.shape[0]
    for k in range(dy.shape[0]):
        for u in range(pix.shape[0]):
            if match_l[u] >= 0:
                continue
            yy, xx = pix[u] // width + dy[k], pix[u] % width + dx[k]
            if 0 <= yy < h and 0 <= xx < width:
                v = gt_ids[yy, xx]
                if v >= 0 and match_r[v] < 0:
                    match_l[u] = v
                    match_r[v] = u


@numba.njit(cache=True)
def _bfs_layers(start, nbrs, match_l, match_r, layer, queue):
    """Hopcroft-Karp BFS: layer free pred nodes at 0; True if a free gt node is reachable."""
    tail = 0
    for u in range(match_l.shape[0]):
        layer[u] = -1
        if match_l[u] < 0:
            layer[u] = 0
            queue[tail] = u
            tail += 1
    found = False
    head = 0
    while head < tail:
        u = queue[head]
        head += 1
        for a in range(start[u], start[u + 1]):
            w = match_r[nbrs[a]]
            if w < 0:
                found = True
            elif layer[w] < 0:
                layer[w] = layer[u] + 1
                queue[tail] = w
                tail += 1
    return found


@numba.njit(cache=True)
def _augment_from(root, start, nbrs, match_l, match_r, layer, ptr, stack, via):
    """Iterative DFS along BFS layers from free pred node ``root``; flips one augmenting path."""
    stack[0] = root
    top = 1
    while top > 0:
        u = stack[top - 1]
        if ptr[u] == start[u + 1]:
            layer[u] = -1  # dead end for the rest of this phase
            top -= 1
            continue
        v = nbrs[ptr[u]]
        ptr[u] += 1
        w = match_r[v]
        if w < 0 or layer[w] == layer[u] + 1:
            via[top - 1] = v
            if w >= 0:
                stack[top] = w
                top += 1
                continue
            for i in range(top):
                match_l[stack[i]] = via[i]
                match_r[via[i]] = stack[i]
            return True
    return False


@numba.njit(cache=True)
def _hopcroft_karp(start, nbrs, match_l, match_r):
    """Grow ``match_l``/``match_r`` in place to a maximum-cardinality matching."""
    n = match_l.shape[0]
    layer = np.empty(n, np.int64)
    queue = np.empty(n, np.int64)
    ptr = np.empty(n, np.int64)
    stack = np.empty(n + 1, np.int64)
    via = np.empty(n + 1, np.int64)
    while _bfs_layers(start, nbrs, match_l, match_r, layer, queue):
        ptr[:] = start[:-1]
        grown = 0
        for u in range(n):
            if match_l[u] < 0 and layer[u] == 0:
                grown += _augment_from(u, start, nbrs, match_l, match_r, layer, ptr, stack, via)
        if grown == 0:
            break


@numba.njit(cache=True)
def _dist2(a, b, width):
    dy, dx = a // width - b // width, a % width - b % width
    return dy * dy + dx * dx


@numba.njit(cache=True)
def _exchange(start, nbrs, pix_l, pix_r, width, match_l, match_r):
    """Cost-lowering swaps that keep the cardinality, as the min-cost optimum would take:
    a matched pred pixel moves to a nearer free gt pixel, or a free pred pixel nearer to a
    matched gt pixel takes it over. Returns the number of swaps."""
    swaps = 0
    changed = True
    while changed:
        changed = False
        for u in range(match_l.shape[0]):
            v_old = match_l[u]
            best = _dist2(pix_l[u], pix_r[v_old], width) if v_old >= 0 else 1 << 62
            for a in range(start[u], start[u + 1]):
                v = nbrs[a]
                d = _dist2(pix_l[u], pix_r[v], width)
                if d >= best:
                    break  # neighbours are sorted nearest first
                w = match_r[v]
                if w < 0 and v_old >= 0:
                    match_r[v_old] = -1
                elif w >= 0 and v_old < 0 and d < _dist2(pix_l[w], pix_r[v], width):
                    match_l[w] = -1
                else:
                    continue
                match_l[u], match_r[v] = v, u
                swaps += 1
                changed = True
                break
    return swaps


@numba.njit(cache=True)
def _edge_costs(start, nbrs, pix_l, pix_r, width, scale, jitter):
    """Integer edge costs ``rint(100 * distance)`` as correspondPixels feeds CSA, times
    ``scale``, plus ``jitter`` (< scale / #pixels) that only breaks ties between optima."""
    cost = np.empty(nbrs.shape[0], np.int64)
    for u in range(start.shape[0] - 1):
        for a in range(start[u], start[u + 1]):
            d = np.sqrt(_dist2(pix_l[u], pix_r[nbrs[a]], width))
            cost[a] = np.int64(np.rint(100.0 * d)) * scale + jitter[a]
    return cost


@numba.njit(cache=True)
def _shortest_augment(
    s, start, nbrs, cost, outlier, pot_l, pot_c, match_l, match_c, dist, prev, done, touched
):
    """Dijkstra from free row ``s`` over reduced costs; column ids >= n_cols are the rows'
    private outlier columns. Flips the cheapest augmenting path and updates the potentials."""
    n_cols = match_c.shape[0] - match_l.shape[0]
    heap = [(np.int64(0), np.int64(0))]
    heap.pop()
    n_touched = 0
    row = s
    d_row = np.int64(0)
    sink = -1
    while True:
        for a in range(start[row], start[row + 1] + 1):
            c = nbrs[a] if a < start[row + 1] else n_cols + row
            if done[c]:
                continue
            w = cost[a] if a < start[row + 1] else outlier
            nd = d_row + w - pot_l[row] - pot_c[c]
            if nd < dist[c]:
                if dist[c] == _INF:
                    touched[n_touched] = c
                    n_touched += 1
                dist[c] = nd
                prev[c] = row
                heapq.heappush(heap, (nd, np.int64(c)))
        while True:
            d_col, c = heapq.heappop(heap)
            if not done[c] and d_col == dist[c]:
                break
        done[c] = True
        if match_c[c] < 0:
            sink = c
            break
        row = match_c[c]
        d_row = d_col
    total = dist[sink]
    pot_l[s] += total
    for i in range(n_touched):
        c = touched[i]
        if done[c] and c != sink:
            pot_c[c] -= total - dist[c]
            pot_l[match_c[c]] += total - dist[c]
    c = sink
    while True:
        row = prev[c]
        nxt = match_l[row]
        match_l[row], match_c[c] = c, row
        if row == s:
            break
        c = nxt
    for i in range(n_touched):
        c = touched[i]
        dist[c], done[c] = _INF, False


@numba.njit(cache=True)
def _min_cost_matching(start, nbrs, cost, n_cols, outlier, match_l, match_r):
    """Exact optimum of correspondPixels' assignment: min sum of match costs + ``outlier``
    per unmatched row (up to ties), by successive shortest paths, one row at a time."""
    n_rows = match_l.shape[0]
    match_c = np.full(n_cols + n_rows, -1, np.int64)
    pot_l = np.zeros(n_rows, np.int64)
    pot_c = np.zeros(n_cols + n_rows, np.int64)
    dist = np.full(n_cols + n_rows, _INF, np.int64)
    prev = np.full(n_cols + n_rows, -1, np.int64)
    done = np.zeros(n_cols + n_rows, np.bool_)
    touched = np.empty(n_cols + n_rows, np.int64)
    for s in range(n_rows):
        if start[s + 1] > start[s]:
            _shortest_augment(
                s,
                start,
                nbrs,
                cost,
                outlier,
                pot_l,
                pot_c,
                match_l,
                match_c,
                dist,
                prev,
                done,
                touched,
            )
    for r in range(n_rows):
        match_l[r] = match_l[r] if match_l[r] < n_cols else -1
        if match_l[r] >= 0:
            match_r[match_l[r]] = r


@numba.njit(cache=True)
def _match_maps(pred, gt, dy, dx, outlier, exact, seed):
    gt_ids, gt_pix = _node_ids(gt)
    start, nbrs, pix = _adjacency(pred, gt_ids, dy, dx)
    width = pred.shape[1]
    match_l = np.full(pix.shape[0], -1, np.int64)
    match_r = np.full(gt_pix.shape[0], -1, np.int64)
    if exact:
        # CSA breaks ties between equal-cost matchings arbitrarily, differently for each
        # annotator; a fixed tie order would keep re-picking the same predicted pixels and
        # shrink their union (cntP). Seeded random jitter below one cost unit mimics it.
        scale = np.int64(pix.shape[0] + gt_pix.shape[0] + 1) * 64
        np.random.seed(seed)
        jitter = np.random.randint(0, 64, nbrs.shape[0])
        cost = _edge_costs(start, nbrs, pix, gt_pix, width, scale, jitter)
        _min_cost_matching(start, nbrs, cost, gt_pix.shape[0], outlier * scale, match_l, match_r)
    else:
        _greedy(pix, width, gt_ids, dy, dx, match_l, match_r)
        _hopcroft_karp(start, nbrs, match_l, match_r)
        _exchange(start, nbrs, pix, gt_pix, width, match_l, match_r)
    matched_pred = np.zeros(pred.shape, np.bool_)
    matched_gt = np.zeros(gt.shape, np.bool_)
    for u in range(pix.shape[0]):
        if match_l[u] >= 0:
            matched_pred[pix[u] // width, pix[u] % width] = True
            v = gt_pix[match_l[u]]
            matched_gt[v // width, v % width] = True
    return matched_pred, matched_gt


def match_pixels(
    pred: np.ndarray, gt: np.ndarray, max_dist: float, exact: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Match boundary pixels of ``pred`` to ``gt`` within ``max_dist`` x image diagonal.

    pred, gt: (H, W) binary maps of the same shape. Returns bool (H, W) maps of the matched
    pred pixels and the matched gt pixels (``match1 > 0`` / ``match2 > 0`` of BSR's
    ``correspondPixels(pred, gt, max_dist)``). ``exact``: the min-cost assignment CSA solves
    (integer costs ``rint(100 d)``, outlier cost ``100 x maxDist``); otherwise a faster
    maximum-cardinality matching with greedy nearest-first choices. ``seed`` fixes the
    random tie-breaking between equal-cost optima (CSA's is arbitrary).
    """
    pred = np.ascontiguousarray(pred, dtype=np.bool_)
    gt = np.ascontiguousarray(gt, dtype=np.bool_)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be equal 2-D shapes")
    radius = max_dist * float(np.hypot(*pred.shape))
    dy, dx = disk_offsets(radius)
    outlier = int(np.ceil(100.0 * radius * 100))  # CSA: ceil(outlierCost * multiplier)
    if exact and gt.sum() < pred.sum():
        # The objective is symmetric; one shortest-path search per pixel of the smaller side.
        matched_gt, matched_pred = _match_maps(gt, pred, dy, dx, outlier, exact, seed)
        return matched_pred, matched_gt
    return _match_maps(pred, gt, dy, dx, outlier, exact, seed)
