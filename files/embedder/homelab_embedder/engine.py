"""The embedding model in-process: tokenizer, ONNX graph (built once, cached), ONNX Runtime.

The server and the benchmark's direct baseline both call :meth:`Engine.embed`, so the
benchmark compares the server against exactly the model it serves.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homelab_embedder.bert_onnx import build_onnx, model_settings

MODEL_FILES = ("config.json", "model.safetensors", "modules.json", "1_Pooling/config.json")


@dataclass(frozen=True)
class Batch:
    vectors: np.ndarray  # float32 [n, dim]
    tokens: list[int]  # tokens per text (after truncation)


def _model_hash(model_dir: Path, dtype: str) -> str:
    digest = hashlib.sha256(dtype.encode())
    for name in MODEL_FILES:
        path = model_dir / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_onnx(model_dir: Path, dtype: str, cache_dir: Path) -> Path:
    """The ONNX file for ``model_dir`` in ``dtype``, built on first use and kept in cache_dir."""
    target = cache_dir / f"model-{_model_hash(model_dir, dtype)}-{dtype}.onnx"
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(build_onnx(model_dir, dtype))
        partial.replace(target)
    return target


class Engine:
    """Tokenizer + ONNX Runtime session for one model directory.

    ``device`` is ``cpu`` or ``cuda``; ``dtype`` ``float32`` or ``float16`` (CUDA only).
    """

    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r}: expected cpu or cuda")
        if dtype == "float16" and device == "cpu":
            raise ValueError("float16 runs on cuda only (ONNX Runtime's CPU kernels are float32)")
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        settings = model_settings(model_dir)
        self.dimensions: int = settings["hidden"]
        self.max_length: int = settings["max_length"]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # ONNX Runtime's threads spin between parallel sections (its default), and stop
        # spinning the moment a run returns: between calls the server's event loop and
        # tokenizer get the cores, and an idle server uses none (lab test). Measured on the
        # lab's 2 cores, 32 clients, short texts: spinning made the model 4 % faster while
        # busy; stopping it after each run gave the model 2 % more of the time (its busy
        # share 0.94 against 0.92).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if device == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    f"device cuda: ONNX Runtime offers {available}; install onnxruntime-gpu"
                    " with its CUDA libraries and check nvidia-smi"
                )
            providers.insert(0, "CUDAExecutionProvider")
        onnx_path = cached_onnx(model_dir, dtype, cache_dir)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.providers = self.session.get_providers()
        if device == "cuda" and self.providers[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"device cuda: the session runs on {self.providers}")

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token IDs of each text, truncated to the model's max_seq_length."""
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def run(self, encoded: list[list[int]]) -> Batch:
        """Embed already tokenized texts as one batch (padded to its longest text)."""
        lengths = [len(ids) for ids in encoded]
        width = max(lengths) if lengths else 1
        ids = np.zeros((len(encoded), width), dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : lengths[row]] = tokens
            mask[row, : lengths[row]] = 1
        (vectors,) = self.session.run(
            ["sentence_embedding"], {"input_ids": ids, "attention_mask": mask}
        )
        return Batch(np.asarray(vectors, dtype=np.float32), lengths)

    def embed(self, texts: list[str]) -> Batch:
        """Embed ``texts`` as one batch: tokenize, then run."""
        return self.run(self.encode(texts))

    def embed_sorted(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Embed many texts in batches of similar length (least padding), in input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.embed([texts[i] for i in chunk]).vectors
        return out
