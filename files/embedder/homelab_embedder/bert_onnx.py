"""Build an ONNX graph of a BERT sentence-transformers model from its safetensors weights.

No torch and no hub: the model directory (config.json, model.safetensors, tokenizer.json,
1_Pooling/config.json, modules.json) is read as it is shipped, and the graph is written with the
``onnx`` helper API. The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, seq])
and returns ``sentence_embedding`` (float32, [batch, hidden]): the encoder, mean pooling over the
attention mask and, when modules.json lists a Normalize module, L2 normalisation, which is what
sentence-transformers computes for all-MiniLM-L6-v2 and its BERT relatives.

``dtype="float16"`` stores weights and runs the encoder in half precision (CUDA: the GTX 1650
Super's FP16 rate is twice its FP32 rate); the mask bias, pooling and output stay float32.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": None}


class ModelError(ValueError):
    """The model directory is not a BERT sentence-transformers model this builder knows."""


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw data)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        data = handle.read()
    tensors: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ModelError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(spec["shape"])
    return tensors


def model_settings(model_dir: Path) -> dict[str, Any]:
    """What the graph needs from the model directory, checked."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ModelError(f"{model_dir}: model_type {config.get('model_type')!r}, expected 'bert'")
    if config.get("hidden_act") != "gelu":
        raise ModelError(f"{model_dir}: hidden_act {config.get('hidden_act')!r}, expected gelu")
    pooling_file = model_dir / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_file.read_text()) if pooling_file.exists() else {}
    if pooling and not pooling.get("pooling_mode_mean_tokens"):
        raise ModelError(f"{pooling_file}: only mean pooling is supported")
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    st_file = model_dir / "sentence_bert_config.json"
    st_config = json.loads(st_file.read_text()) if st_file.exists() else {}
    max_length = int(st_config.get("max_seq_length", config["max_position_embeddings"]))
    return {
        "hidden": int(config["hidden_size"]),
        "heads": int(config["num_attention_heads"]),
        "layers": int(config["num_hidden_layers"]),
        "eps": float(config.get("layer_norm_eps", 1e-12)),
        "normalize": normalize,
        "max_length": min(max_length, int(config["max_position_embeddings"])),
    }


def build_onnx(model_dir: Path, dtype: str = "float32") -> bytes:
    """The serialized ONNX model of ``model_dir`` in ``dtype`` (float32 or float16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if dtype not in ("float32", "float16"):
        raise ModelError(f"dtype {dtype!r}: expected float32 or float16")
    settings = model_settings(model_dir)
    weights = read_safetensors(model_dir / "model.safetensors")
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    np_type = np.float16 if dtype == "float16" else np.float32
    onnx_type = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    hidden, heads = settings["hidden"], settings["heads"]
    head_dim = hidden // heads

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = iter(range(1_000_000))

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def w(name: str, transpose: bool = False) -> str:
        try:
            value = weights[prefix + name]
        except KeyError:
            raise ModelError(f"{model_dir}: weight {prefix + name} is missing") from None
        value = value.T if transpose else value
        return const(name, np.ascontiguousarray(value.astype(np_type)))

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"{op.lower()}_{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def layer_norm(x: str, name: str) -> str:
        return node(
            "LayerNormalization",
            [x, w(f"{name}.weight"), w(f"{name}.bias")],
            axis=-1,
            epsilon=settings["eps"],
        )

    def dense(x: str, name: str) -> str:
        return node("Add", [node("MatMul", [x, w(f"{name}.weight", True)]), w(f"{name}.bias")])

    # Embeddings: words + (positions + token type 0), the last two folded into one table.
    positions = weights[prefix + "embeddings.position_embeddings.weight"]
    token_type = weights[prefix + "embeddings.token_type_embeddings.weight"][0]
    pos_table = const("position_plus_type", (positions + token_type).astype(np_type))
    words = node("Gather", [w("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    seq_len = node(
        "Slice",
        [
            node("Shape", ["input_ids"]),
            const("one_i64", np.array([1], np.int64)),
            const("two_i64", np.array([2], np.int64)),
        ],
    )
    pos = node("Slice", [pos_table, const("zero_i64", np.array([0], np.int64)), seq_len])
    x = layer_norm(node("Add", [words, pos]), "embeddings.LayerNorm")

    # Attention bias from the mask: 0 where a token is, -10000 where padding is.
    mask_f = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = node(
        "Mul",
        [
            node("Sub", [const("one_f", np.array(1.0, np.float32)), mask_f]),
            const("neg_big", np.array(-10000.0, np.float32)),
        ],
    )
    bias = node("Unsqueeze", [bias, const("axes_1_2", np.array([1, 2], np.int64))])
    if dtype == "float16":
        bias = node("Cast", [bias], to=onnx_type)
    split_heads = const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head_dim), np_type))
    half = const("half", np.array(0.5, np_type))
    one = const("one", np.array(1.0, np_type))
    inv_sqrt2 = const("inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np_type))

    for i in range(settings["layers"]):
        base = f"encoder.layer.{i}"
        q = node("Reshape", [dense(x, f"{base}.attention.self.query"), split_heads])
        k = node("Reshape", [dense(x, f"{base}.attention.self.key"), split_heads])
        v = node("Reshape", [dense(x, f"{base}.attention.self.value"), split_heads])
        q = node("Transpose", [q], perm=[0, 2, 1, 3])
        k = node("Transpose", [k], perm=[0, 2, 3, 1])
        v = node("Transpose", [v], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), bias])
        probs = node("Softmax", [scores], axis=-1)
        context = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = node("Reshape", [context, merge_heads])
        attn = dense(context, f"{base}.attention.output.dense")
        x = layer_norm(node("Add", [attn, x]), f"{base}.attention.output.LayerNorm")
        inter = dense(x, f"{base}.intermediate.dense")
        gelu = node(
            "Mul",
            [
                node("Mul", [inter, half]),
                node("Add", [node("Erf", [node("Mul", [inter, inv_sqrt2])]), one]),
            ],
        )
        out = dense(gelu, f"{base}.output.dense")
        x = layer_norm(node("Add", [out, x]), f"{base}.output.LayerNorm")

    # Mean pooling over real tokens, in float32.
    if dtype == "float16":
        x = node("Cast", [x], to=TensorProto.FLOAT)
    mask3 = node("Unsqueeze", [mask_f, const("axis_2", np.array([2], np.int64))])
    axis_1 = const("axis_1", np.array([1], np.int64))
    summed = node("ReduceSum", [node("Mul", [x, mask3]), axis_1], keepdims=0)
    count = node("ReduceSum", [mask3, axis_1], keepdims=0)
    count = node("Max", [count, const("tiny", np.array(1e-9, np.float32))])
    pooled = node("Div", [summed, count])
    if settings["normalize"]:
        norm = node("ReduceL2", [pooled, const("axis_last", np.array([-1], np.int64))])
        norm = node("Max", [norm, const("tiny_norm", np.array(1e-12, np.float32))])
        pooled = node("Div", [pooled, norm])
    nodes.append(helper.make_node("Identity", [pooled], ["sentence_embedding"]))

    graph = helper.make_graph(
        nodes,
        "sentence_embedding",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()
