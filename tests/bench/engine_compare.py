"""The thin service's engine (ONNX Runtime) against sentence-transformers (PyTorch), same run.

The evaluation behind the embedder's choice (docs/embedder.md): both embed the same texts
(16 and 256 tokens) with the same batch size on the same CPUs, in alternating rounds so a
neighbour's load hits both alike; the best round of each counts. Needs an environment with
both stacks (sentence-transformers + torch, and the embedder's lock) and the model directory:

    PYTHONPATH=files/embedder python tests/bench/engine_compare.py --model-dir DIR
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ["memory", "vector", "river", "lantern", "orchard", "violin", "harbor", "meadow"]


def texts(tokens: int, count: int) -> list[str]:
    rng = random.Random(tokens)
    # one word ~ one token for these words; [CLS] and [SEP] make up the rest
    return [" ".join(rng.choice(WORDS) for _ in range(tokens - 2)) for _ in range(count)]


def rate(call, batch: list[str], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        call(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch
    from homelab_embedder.engine import Engine
    from sentence_transformers import SentenceTransformer

    engine = Engine(args.model_dir, Path(tempfile.mkdtemp()), "cpu", "float32")
    st = SentenceTransformer(str(args.model_dir), device="cpu")
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "batch": args.batch}  # fmt: skip
    for tokens in (16, 256):
        batch = texts(tokens, args.batch)
        ours = engine.embed(batch).vectors
        theirs = st.encode(batch, normalize_embeddings=True)
        cosine = float(np.min(np.sum(ours * theirs, axis=1)))
        onnx, pytorch = [], []
        for _ in range(args.rounds):
            onnx.append(rate(engine.embed, batch, args.seconds))
            pytorch.append(rate(lambda b: st.encode(b, batch_size=len(b)), batch, args.seconds))
        result[f"{tokens}_tokens"] = {
            "onnxruntime_texts_per_s": round(max(onnx), 1),
            "sentence_transformers_texts_per_s": round(max(pytorch), 1),
            "speedup": round(max(onnx) / max(pytorch), 2),
            "min_cosine_between_them": round(cosine, 6),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
