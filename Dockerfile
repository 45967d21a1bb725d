# docker build -t YOUR_REGISTRY/ray-spider:latest .
# The image `ray up cluster.yaml` (and cluster-onprem.yaml) runs: Ray with CUDA, PyTorch, and ray_spider
# with its pinned deps. At run time it needs no network beyond the model download from the hub.
# BASE_IMAGE: the production base is rayproject/ray:2.60.0-py311-cu128 (Ray 2.60, Python 3.11, CUDA 12.8,
# user `ray`). deploy/build_image.sh (`make image`) builds this same file on a locally made CPU base.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${BASE_IMAGE}

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
