#!/usr/bin/env bash
# Build the Dockerfile with buildah and check the image where Docker Hub's base is out of reach:
#   make image                      # or: deploy/build_image.sh
# 1. a CPU stand-in for the production base (rayproject/ray): minimal Debian (debootstrap) with
#    python3, rsync, ssh, a venv on PATH holding torch (CPU build), user `ray` -- made once, kept as $BASE
#    (podman rmi it to remake);
# 2. `buildah bud` of the unchanged Dockerfile with BASE_IMAGE=$BASE (ray_spider and its deps from PyPI);
# 3. inside the container: `ray-spider --help`, and a gold-vs-gold `ray-spider eval` on the first
#    $QUESTIONS dev questions (Spider mounted read-only), which must score EX = EM = 1.
# Needs root, buildah, podman, runc, debootstrap (apt-get install buildah podman runc debootstrap),
# network to Debian and PyPI, and $SPIDER_DIR. Not run by `make test`/CI: it takes minutes and a
# container runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${SPIDER_DIR:?set SPIDER_DIR to the Spider 1.0 folder}"
WORK=${WORK:-/var/tmp/ray-spider-image}
BASE=${BASE:-localhost/ray-spider-base:cpu}
IMAGE=${IMAGE:-localhost/ray-spider:cpu}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STORAGE_DRIVER=${STORAGE_DRIVER:-overlay}   # vfs works everywhere but builds ~6x slower
QUESTIONS=${QUESTIONS:-20}
SUITE=bookworm                              # its python3 is 3.11, like the production base
PODMAN=(podman --storage-driver "$STORAGE_DRIVER")
BUILDAH=(buildah --storage-driver "$STORAGE_DRIVER")
# runc and explicit ulimits, for RUN steps too: crun refuses hybrid cgroups ("drop all controllers from
# cgroupv2"), and the default ulimits exceed what some container hosts allow.
RUN=("${PODMAN[@]}" run --rm --runtime runc --network host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

say() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

make_base() {
  local rootfs=$WORK/rootfs
  say "base image $BASE: debootstrap $SUITE"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  # rsync and ssh: `ray up` syncs files into the container and the head's autoscaler reaches workers
  # over SSH; rayproject/ray ships both.
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,rsync,openssh-client "$SUITE" "$rootfs" http://deb.debian.org/debian
  # This machine's CA bundle: pip inside reaches PyPI through the same network as here.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
  say "torch ($TORCH_SPEC, CPU) into /home/ray/venv"
  rm -rf "$WORK/wheels" && python3 -m pip download -q --only-binary=:all: -d "$WORK/wheels" "$TORCH_SPEC"
  mkdir -p "$rootfs/tmp/wheels" && cp "$WORK"/wheels/*.whl "$rootfs/tmp/wheels/"
  chroot "$rootfs" /bin/sh -ec '
    useradd --create-home --uid 1000 --gid users --shell /bin/bash ray
    python3 -m venv /home/ray/venv
    /home/ray/venv/bin/pip install -q --no-index --find-links /tmp/wheels torch
    chown -R ray:users /home/ray
    # Login shells (`ray up` runs its commands in `bash --login`) reset PATH from /etc/profile.
    echo "export PATH=/home/ray/venv/bin:\$PATH" > /etc/profile.d/venv.sh
    rm -rf /tmp/wheels /var/cache/apt/archives/*.deb'
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'USER ray' --change 'WORKDIR /home/ray' --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/home/ray/venv/bin:/usr/local/bin:/usr/bin:/bin' - "$BASE"
  rm -rf "$rootfs"
}

mkdir -p "$WORK"
"${PODMAN[@]}" image exists "$BASE" || make_base

say "buildah bud $IMAGE (BASE_IMAGE=$BASE)"
start=$(date +%s)
"${BUILDAH[@]}" bud --network host --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" .
echo "image built in $(( $(date +%s) - start )) s"

say "ray-spider --help in the container"
"${RUN[@]}" "$IMAGE" ray-spider --help

say "gold vs gold on $QUESTIONS dev questions in the container"
check=$WORK/check && rm -rf "$check" && mkdir -p "$check"
head -n "$QUESTIONS" "$SPIDER_DIR/dev_gold.sql" > "$check/gold.sql"
cut -f1 "$check/gold.sql" > "$check/pred.sql"
"${RUN[@]}" -v "$(realpath "$SPIDER_DIR")":/home/ray/spider:ro -v "$check":/check:ro "$IMAGE" \
  ray-spider eval --gold /check/gold.sql --pred /check/pred.sql --db /home/ray/spider/database \
  --table /home/ray/spider/tables.json --workers 1 --json | tee "$WORK/eval.json"
python3 - "$WORK/eval.json" "$QUESTIONS" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
assert (summary["n"], summary["ex"], summary["em"]) == (int(sys.argv[2]), 1.0, 1.0), summary
print(f"gold vs gold in the container: n={summary['n']} EX={summary['ex']} EM={summary['em']}")
EOF
say "IMAGE OK: $IMAGE"
