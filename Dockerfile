# docker build -t YOUR_REGISTRY/ray-spider:latest .
# The image `ray up cluster.yaml` runs: Ray with CUDA, PyTorch, and ray_spider with its pinned deps.
# At run time it needs no network beyond the model download from the hub.
FROM rayproject/ray:2.60.0-py311-cu128

WORKDIR /home/ray/ray_spider
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users ray_spider ./ray_spider
COPY --chown=ray:users sweeps ./sweeps

# torch from PyPI is the CUDA build on Linux x86-64; bitsandbytes ships its CUDA kernels; [gpu] adds liger-kernel.
RUN pip install --no-cache-dir "torch>=2.11" && \
    pip install --no-cache-dir ".[gpu]" && \
    ray-spider --help > /dev/null

ENV RAY_TRAIN_ENABLE_PRINT_PATCH=0 \
    NCCL_NVLS_ENABLE=0 \
    TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
    NVSHMEM_DISABLE_NVLS=1 \
    TOKENIZERS_PARALLELISM=false \
    SPIDER_DIR=/home/ray/spider
