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
# Models pulled when missing, with the size of their weights for the capacity preflight.
# The seed's model, Llama 3.1 70B at Q4_K_M (about 42 GB), does not fit the R9700's 32 GB: it
# runs split between the GPU and system RAM. That is the seed's own setup (its status shows this
# model loaded with 26.4 of 32 GB of VRAM allocated), so CPU offload is allowed here on purpose;
# without this key the preflight refuses any model that does not fit the GPU. The offloaded part
# (13 GiB) lives in the VM's RAM, which is why inventory.py gives the VM 24 GiB.
ollama_models = [{"name": "llama3.1:70b-instruct-q4_K_M", "size": "42G"}]
ollama_allow_cpu_offload = True
# VRAM Ollama needs besides this model's weights at 8192 tokens of context: its KV cache alone
# is 2.5 GiB at f16 (80 layers x 8 KV heads x 128 x 2 for K and V x 2 bytes = 320 KiB a token),
# most of it on the GPU, plus the compute graph and the ROCm runtime (the default is 2G).
ollama_gpu_overhead = "3G"
ollama_context_length = 8192
ollama_keep_alive = "30m"

# --- PyTorch (ROCm build, in /opt/pytorch/venv) ---
# A release PyTorch builds for ROCm 7.2 (2.11 to 2.13), from its rocm7.2 wheel index.
pytorch_version = "2.11.0"

# Data AIDE leaves out besides the pools (PostgreSQL's data and Ollama's models are there):
# pgBackRest's WAL spool.
file_integrity_exclude = ["/var/spool/pgbackrest"]
