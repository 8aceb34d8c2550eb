"""Settings for ageis-node (the inference VM). Keys, forms and defaults: docs/data-keys.md."""

# --- ROCm (AMD's repositories for the VM's Ubuntu release) ---
# ROCm release and the amdgpu driver release that ships with it (ROCm 7.2.1: amdgpu 30.30.1).
# 7.x: Ollama's ROCm 7 bundle hangs in GPU discovery on an older kernel driver. Why these
# versions: docs/ageis-node.md, "Versions: why these".
rocm_version = "7.2.1"
rocm_amdgpu_version = "30.30.1"

# --- Ollama ---
# Pinned release (>= 0.18 for the R9700; 0.20.7 bundles ROCm 7.2.1); the main archive's
# SHA-256 is pinned (ollama_sha256's default), the ROCm archive is checked against the
# release's published sha256sum.txt unless you pin it here too.
ollama_version = "0.20.7"
# Models pulled when missing, with the size of their weights for the capacity preflight
# (32 GB of VRAM, 16 GB of VM RAM): the seed's 70B model needs CPU offload, reported at deploy.
ollama_models = [{"name": "llama3.1:70b-instruct-q4_K_M", "size": "42G"}]
ollama_context_length = 8192
ollama_keep_alive = "30m"

# --- PyTorch (ROCm build, in /opt/pytorch/venv) ---
# A release PyTorch builds for ROCm 7.2 (2.11 to 2.13), from its rocm7.2 wheel index.
pytorch_version = "2.11.0"

# Data AIDE leaves out besides the pools (PostgreSQL's data and Ollama's models are there):
# pgBackRest's WAL spool.
file_integrity_exclude = ["/var/spool/pgbackrest"]
