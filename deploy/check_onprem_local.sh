#!/usr/bin/env bash
# Check cluster-onprem.yaml for real on this one machine: `ray up` with the local provider over SSH
# to 127.0.0.1, the head in the image of deploy/build_image.sh under podman, a sweep-free job through
# the dashboard, then `ray down`. Only the addresses, the image and the ports differ from the file.
#   deploy/check_onprem_local.sh        (after `make image`; root, podman, openssh-server, rsync)
# Everything it starts is its own: an sshd on 127.0.0.1:$SSH_PORT with a throwaway key, one container
# ($CONTAINER); Ray's `ray stop` lines run inside that container only. Not run by `make test`/CI.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${SPIDER_DIR:?set SPIDER_DIR to the Spider 1.0 folder}"
IMAGE=${IMAGE:-localhost/ray-spider:cpu}
STORAGE_DRIVER=${STORAGE_DRIVER:-overlay}
SSH_PORT=${SSH_PORT:-22}   # Ray's SSH has no port option (auth takes a user and a key only)
CONTAINER=ray_spider_onprem_check
WORK=$(mktemp -d /tmp/onprem-check.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
GCS_PORT=$(free_port); DASHBOARD_PORT=$(free_port); CLIENT_PORT=$(free_port); AGENT_PORT=$(free_port)
RAY=(python3 -m ray.scripts.scripts)   # the ray CLI of the python3 on PATH (needs ray[default])
say() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

SSHD_PID=
cleanup() {
  [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
  podman --storage-driver "$STORAGE_DRIVER" rm -f "$CONTAINER" >/dev/null 2>&1 || true  # `ray down` may leave it (it runs `docker stop`)
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

say "sshd on 127.0.0.1:$SSH_PORT with a throwaway key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
cp "$WORK/key.pub" "$WORK/authorized_keys"   # StrictModes=no below: the key lies under /tmp (world-writable)
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -p "$SSH_PORT" -o ListenAddress=127.0.0.1 -o AuthorizedKeysFile="$WORK/authorized_keys" \
  -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o StrictModes=no 2> "$WORK/sshd.log" &
SSHD_PID=$!
sleep 1

say "cluster-onprem.yaml with head_ip 127.0.0.1, no workers, podman and $IMAGE"
python3 - "$WORK" "$IMAGE" "$(realpath "$SPIDER_DIR")" "$GCS_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$AGENT_PORT" "$CONTAINER" <<'EOF'
import sys, yaml
work, image, spider, gcs, dashboard, client, agent, container = sys.argv[1:]
config = yaml.safe_load(open("cluster-onprem.yaml"))
config["cluster_name"] = "ray-spider-onprem-check"
config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
config["auth"] = {"ssh_user": "root", "ssh_private_key": f"{work}/key"}
docker = config["docker"]
docker.update(image=image, container_name=container, pull_before_run=False, use_podman=True, disable_automatic_runtime_detection=True)
# This machine's podman needs runc and explicit ulimits; Spider comes from here.
docker["run_options"] = [o for o in docker["run_options"] if "/data/spider" not in o] + [
    f"-v {spider}:/home/ray/spider:ro", "--runtime runc", "--ulimit nproc=32768:32768"]
docker["run_options"] = [o.replace("nofile=65536:65536", "nofile=20000:20000") for o in docker["run_options"]]
docker.pop("worker_run_options", None)
start = config["head_start_ray_commands"][-1]
config["head_start_ray_commands"][-1] = start.replace("--port=6379", f"--port={gcs}").replace("--num-cpus=0", "--num-cpus=1") + (
    f" --dashboard-port={dashboard} --ray-client-server-port={client} --dashboard-agent-listen-port={agent} --disable-usage-stats")
yaml.safe_dump(config, open(f"{work}/cluster.yaml", "w"), sort_keys=False)
print(yaml.safe_dump(config, sort_keys=False))
EOF

export RAY_AUTH_MODE=disabled   # the same on both sides (a ~/.ray/auth_token would turn token auth on)
say "ray up"
start=$(date +%s)
"${RAY[@]}" up -y --no-config-cache "$WORK/cluster.yaml"
echo "ray up took $(( $(date +%s) - start )) s"

say "a job through the dashboard (the head's Jobs API, as ray-spider submit uses it)"
"${RAY[@]}" job submit --address "http://127.0.0.1:$DASHBOARD_PORT" -- \
  python -c "import ray, ray_spider; ray.init(); print('cluster resources', ray.cluster_resources()); print('ray_spider at', ray_spider.__file__)"

say "ray down"
"${RAY[@]}" down -y "$WORK/cluster.yaml" || echo "ray down exited $? (it runs docker stop; the container is removed below)"
podman --storage-driver "$STORAGE_DRIVER" ps -a --filter "name=$CONTAINER" --format '{{.Names}} {{.Status}}'
say "ON-PREM CHECK DONE"
