"""A fitted tree ensemble as a torch module: the trees are tensors, prediction is a gather loop.

Gradient-boosted trees from LightGBM, XGBoost or scikit-learn all reduce to the same tables —
per node a feature, a threshold, a left and a right child, a leaf value — plus, per tree, the
output it adds to. :class:`TreeEnsemble` holds those tables as buffers, so a trained ensemble is
stored like any danlu model (safetensors weights, no pickle) and rebuilt by the model registry.
For ONNX it writes its own graph, one ONNX-ML ``TreeEnsembleRegressor`` that ONNX Runtime runs
natively (:meth:`TreeEnsemble.to_onnx`); the exporter parity-checks it against this module like
any export, and the server runs it like any version. This module is imported lazily (it
imports torch): the registry's ``gbdt`` builder loads it.

Prediction walks every tree at once: ``depth`` steps of "look up the node's feature and
threshold, go left or right" on a (rows, trees) index, then a sum of the leaves reached.
Thresholds are stored as float32 rounded so that ``x <= threshold`` on float32 inputs takes the
same branch as the library's own comparison in float64 (``<=`` for LightGBM and scikit-learn,
``<`` for XGBoost); leaves are summed in float64. The outputs are piecewise constant in the
inputs: the module has no useful input gradients (``differentiable = False``), which the trust
report reads to skip gradient attacks and gradient attributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from danlu.errors import StoreError

__all__ = ["Tree", "TreeEnsemble", "float32_threshold"]

_BUFFERS = ("feature", "threshold", "left", "right", "value", "roots", "tree_output", "bias")


@dataclass
class Tree:
    """One tree as flat node arrays (node 0 is the root); a leaf has ``left == right == -1``.

    Attributes:
        feature: (n,) input column tested at each split node.
        threshold: (n,) float64 threshold of each split node.
        left: (n,) index of the left child, -1 at a leaf.
        right: (n,) index of the right child, -1 at a leaf.
        value: (n,) float64 value of each leaf (ignored at split nodes).
        output: the model output (column) the tree adds to.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    output: int = 0

    @property
    def depth(self) -> int:
        """The number of splits on the longest root-to-leaf path."""
        depth, frontier = 0, [0]
        while True:
            frontier = [
                c for n in frontier if self.left[n] >= 0 for c in (self.left[n], self.right[n])
            ]
            if not frontier:
                return depth
            depth += 1


def float32_threshold(threshold: np.ndarray, strict: bool = False) -> np.ndarray:
    """The float32 ``t32`` with ``x <= t32`` ⟺ ``x <= t`` (or ``x < t`` when ``strict``) for
    every float32 ``x``: the largest float32 at most (strictly below) ``t``."""
    t = np.asarray(threshold, dtype=np.float64)
    with np.errstate(over="ignore"):
        t32 = t.astype(np.float32)
    above = t32.astype(np.float64) >= t if strict else t32.astype(np.float64) > t
    return np.where(above, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float32)


class TreeEnsemble(torch.nn.Module):
    """Sum of decision trees over prepared float32 rows: ``(B, input_dim) → (B, output_dim)``.

    Built empty by the registry (``model: {type: gbdt}``) and filled either by training
    (:meth:`from_trees`) or by loading a state dict, whose buffers may have any number of trees
    and nodes (they are resized to what is loaded, then checked).

    Example:
        >>> import numpy as np, torch
        >>> stump = Tree(np.array([0, 0, 0]), np.array([0.5, 0, 0]), np.array([1, -1, -1]),
        ...              np.array([2, -1, -1]), np.array([0.0, -1.0, 1.0]))
        >>> model = TreeEnsemble.from_trees([stump], input_dim=1, output_dim=1)
        >>> model(torch.tensor([[0.2], [0.9]])).flatten().tolist()
        [-1.0, 1.0]
    """

    differentiable = False  # piecewise constant: no input gradients worth following
    # buffers (registered in __init__; typed here for the type checker)
    feature: torch.Tensor
    threshold: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    value: torch.Tensor
    roots: torch.Tensor
    tree_output: torch.Tensor
    bias: torch.Tensor
    steps: torch.Tensor
    spec: Any  # the options training fits with (``GBDTSpec``); None once loaded from a store
    #: (library, bytes) of the library's own model of the same trees, in its safe text / JSON
    #: format (``NATIVE_FILES``), for exact TreeSHAP; None for scikit-learn or when not stored
    native_model: tuple[str, bytes] | None

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.depth = 0
        self.spec = None
        self.native_model = None
        empty = {
            "feature": torch.zeros(0, dtype=torch.int64),  # (T·N,) flat over trees
            "threshold": torch.zeros(0, dtype=torch.float32),  # (T·N,)
            "left": torch.zeros(0, dtype=torch.int64),  # (T·N,) flat index of the child
            "right": torch.zeros(0, dtype=torch.int64),  # (T·N,)
            "value": torch.zeros(0, dtype=torch.float64),  # (T·N,) leaf values
            "roots": torch.zeros(0, dtype=torch.int64),  # (T,) flat index of each root
            "tree_output": torch.zeros(0, self.output_dim, dtype=torch.float64),  # (T, K)
            "bias": torch.zeros(self.output_dim, dtype=torch.float64),  # (K,)
        }
        for name, tensor in empty.items():
            self.register_buffer(name, tensor)
        self.register_buffer("steps", torch.zeros(1, dtype=torch.int64))  # max depth

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_trees(
        cls,
        trees: Sequence[Tree],
        *,
        input_dim: int,
        output_dim: int,
        bias: Sequence[float] | np.ndarray | None = None,
        strict: bool = False,
    ) -> TreeEnsemble:
        """An ensemble of ``trees``; ``strict``: the library goes left when ``x < t`` (XGBoost)."""
        module = cls(input_dim, output_dim)
        module.set_trees(trees, bias=bias, strict=strict)
        return module

    def set_trees(
        self,
        trees: Sequence[Tree],
        *,
        bias: Sequence[float] | np.ndarray | None = None,
        strict: bool = False,
    ) -> TreeEnsemble:
        """Replace the ensemble's trees (and bias) with ``trees``; returns ``self``."""
        n = max((len(t.feature) for t in trees), default=1)
        count = len(trees)
        feature = np.zeros((count, n), dtype=np.int64)
        threshold = np.zeros((count, n), dtype=np.float32)
        left = np.tile(np.arange(n, dtype=np.int64), (count, 1))  # padding nodes: leaves
        right = left.copy()
        value = np.zeros((count, n), dtype=np.float64)
        tree_output = np.zeros((count, self.output_dim), dtype=np.float64)
        for i, tree in enumerate(trees):
            m = len(tree.feature)
            split = np.asarray(tree.left) >= 0
            feature[i, :m] = np.where(split, tree.feature, 0)
            threshold[i, :m] = np.where(split, float32_threshold(tree.threshold, strict), 0)
            left[i, :m] = np.where(split, tree.left, np.arange(m))  # a leaf points to itself
            right[i, :m] = np.where(split, tree.right, np.arange(m))
            value[i, :m] = np.where(split, 0.0, tree.value)
            tree_output[i, tree.output] = 1.0
        offsets = (np.arange(count, dtype=np.int64) * n)[:, None]
        tables = {
            "feature": torch.from_numpy(feature.reshape(-1)),
            "threshold": torch.from_numpy(threshold.reshape(-1)),
            "left": torch.from_numpy((left + offsets).reshape(-1)),
            "right": torch.from_numpy((right + offsets).reshape(-1)),
            "value": torch.from_numpy(value.reshape(-1)),
            "roots": torch.from_numpy(offsets.reshape(-1).copy()),
            "tree_output": torch.from_numpy(tree_output),
            "bias": torch.as_tensor(
                np.zeros(self.output_dim) if bias is None else np.asarray(bias, dtype=np.float64)
            ),
            "steps": torch.tensor([max((t.depth for t in trees), default=0)], dtype=torch.int64),
        }
        for name, tensor in tables.items():
            setattr(self, name, tensor)
        self._check("the fitted trees")
        return self

    def truncated(self, trees: int) -> TreeEnsemble:
        """A copy with the first ``trees`` trees only (the boosting rounds up to the best one)."""
        roots = self.roots[:trees]
        nodes = int(roots[-1]) + self.nodes_per_tree if trees else 0
        copy = type(self)(self.input_dim, self.output_dim)
        state = {name: getattr(self, name) for name in (*_BUFFERS, "steps")}
        state.update(
            {k: state[k][:nodes].clone() for k in ("feature", "threshold", "left", "right")}
        )
        state.update(
            value=self.value[:nodes].clone(),
            roots=roots.clone(),
            tree_output=self.tree_output[:trees].clone(),
            bias=self.bias.clone(),
            steps=self.steps.clone(),
        )
        copy.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return copy

    # -- loading -------------------------------------------------------------------------------
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in (*_BUFFERS, "steps"):  # a stored ensemble has its own number of trees
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor):
                self._buffers[name] = torch.empty(incoming.shape, dtype=getattr(self, name).dtype)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not error_msgs:
            self._check("the stored weights")

    def _check(self, where: str) -> None:
        """Refuse tables that would index out of range (a stored model is data, not trusted)."""
        size, count = self.feature.numel(), self.roots.numel()
        problems = []
        shapes_ok = (
            self.threshold.numel() == size
            and self.left.numel() == size
            and self.right.numel() == size
            and self.value.numel() == size
            and tuple(self.tree_output.shape) == (count, self.output_dim)
            and tuple(self.bias.shape) == (self.output_dim,)
            and self.steps.numel() == 1
        )
        if not shapes_ok:
            problems.append("the tables' shapes disagree")
        elif size:
            if int(self.feature.min()) < 0 or int(self.feature.max()) >= self.input_dim:
                problems.append(f"a split tests a column outside 0..{self.input_dim - 1}")
            for name in ("left", "right", "roots"):
                table = getattr(self, name)
                if int(table.min()) < 0 or int(table.max()) >= size:
                    problems.append(f"'{name}' points outside the {size} nodes")
            if not 0 <= int(self.steps) <= 10_000:
                problems.append(f"a depth of {int(self.steps)}")
        if problems:
            raise StoreError(f"The tree ensemble in {where} is malformed: {'; '.join(problems)}.")
        self.depth = int(self.steps) if self.steps.numel() == 1 else 0

    # -- predicting ----------------------------------------------------------------------------
    @property
    def n_trees(self) -> int:
        return int(self.roots.numel())

    @property
    def nodes_per_tree(self) -> int:
        return self.feature.numel() // max(self.n_trees, 1)

    def leaves(self, x: torch.Tensor, trees: slice | None = None) -> torch.Tensor:
        """The value of the leaf each row reaches in each tree (or in ``trees``), float64 (B, T)."""
        x = x.float()
        roots = self.roots if trees is None else self.roots[trees]
        node = roots.unsqueeze(0).expand(x.shape[0], -1)  # (B, T) flat node index
        for _ in range(self.depth):  # a row that reached a leaf stays there
            column = self.feature[node]  # (B, T)
            go_left = torch.gather(x, 1, column) <= self.threshold[node]
            node = torch.where(go_left, self.left[node], self.right[node])
        return self.value[node]  # (B, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, input_dim) → (B, output_dim): bias + Σ_trees leaf · one-hot(tree's output)
        return (self.leaves(x) @ self.tree_output + self.bias).float()

    # -- ONNX ----------------------------------------------------------------------------------
    def to_onnx(self) -> bytes:
        """The ensemble as one ONNX ``TreeEnsembleRegressor`` (ai.onnx.ml): ``input`` float32
        (batch, input_dim) → ``output`` float32 (batch, output_dim), the same raw outputs as
        :meth:`forward` (ONNX Runtime runs the trees natively, without a gather loop).

        Example:
            >>> # onnx_bytes = model.to_onnx()  # then checked by danlu.export.parity_check
        """
        from onnx import TensorProto, helper

        count, n = self.n_trees, self.nodes_per_tree
        feature = self.feature.view(count, n).numpy()
        threshold = self.threshold.view(count, n).numpy()
        offsets = self.roots.numpy()[:, None]
        left = self.left.view(count, n).numpy() - offsets
        right = self.right.view(count, n).numpy() - offsets
        value = self.value.view(count, n).numpy()
        column = self.tree_output.numpy().argmax(axis=1) if count else np.zeros(0, dtype=int)
        leaf = left == np.arange(n)  # a leaf points to itself (padding nodes are leaves too)
        tree_ids, node_ids = np.nonzero(np.ones((count, n), dtype=bool))
        flat = (tree_ids, node_ids)
        leaf_trees, leaf_nodes = np.nonzero(leaf)
        attributes = {
            "nodes_treeids": tree_ids.tolist(),
            "nodes_nodeids": node_ids.tolist(),
            "nodes_featureids": np.where(leaf, 0, feature)[flat].tolist(),
            "nodes_values": np.where(leaf, 0.0, threshold)[flat].astype(np.float32).tolist(),
            "nodes_modes": np.where(leaf, "LEAF", "BRANCH_LEQ")[flat].tolist(),
            "nodes_truenodeids": np.where(leaf, 0, left)[flat].tolist(),
            "nodes_falsenodeids": np.where(leaf, 0, right)[flat].tolist(),
            "nodes_missing_value_tracks_true": [0] * len(tree_ids),
            "target_treeids": leaf_trees.tolist(),
            "target_nodeids": leaf_nodes.tolist(),
            "target_ids": column[leaf_trees].tolist(),
            "target_weights": value[leaf_trees, leaf_nodes].astype(np.float32).tolist(),
            "n_targets": self.output_dim,
            "aggregate_function": "SUM",
            "base_values": self.bias.numpy().astype(np.float32).tolist(),
            "post_transform": "NONE",
        }
        node = helper.make_node(
            "TreeEnsembleRegressor", ["input"], ["output"], domain="ai.onnx.ml", **attributes
        )
        graph = helper.make_graph(
            [node],
            "danlu_tree_ensemble",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", self.input_dim])],
            [
                helper.make_tensor_value_info(
                    "output", TensorProto.FLOAT, ["batch", self.output_dim]
                )
            ],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)],
            producer_name="danlu",
        )
        model.ir_version = 9
        return model.SerializeToString()
