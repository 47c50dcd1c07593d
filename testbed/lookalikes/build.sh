#!/usr/bin/env bash
# Builds the controller look-alike images for the kubelet rig, from
# Debian's nginx-light (as the rig's own nginx image) and busybox-static,
# FROM scratch, and saves each as a docker-archive the rig imports at `up`.
# Each has its controller's process tree, user, STOPSIGNAL and stop
# behaviour as ../shared/upstream-charts/README.md describes them (the
# scripts here are written from that description; the upstream images and
# scripts are not used):
#
#   localhost/lookalike-ngf:2.6.7      NGINX Gateway Fabric's data plane: a shell
#       entrypoint runs nginx and a stand-in agent and forwards TERM to nginx
#       as TERM (fast shutdown); UID 101:1001; no STOPSIGNAL; pid file
#       /var/run/nginx/nginx.pid (the nginx-run emptyDir); listens on 80
#       (the pod sets net.ipv4.ip_unprivileged_port_start)
#   localhost/lookalike-kong:3.9       Kong: nginx is the main process (exec),
#       STOPSIGNAL SIGQUIT, UID 1000, prefix /kong_prefix; proxy 8000, status
#       8100 (/status, /status/ready); `kong quit --wait=N` for its preStop;
#       no worker_shutdown_timeout unless KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT
#       injects one (Kong's `nginx_main_*` directive injection)
#   localhost/lookalike-apisix:3.16.0  APISIX: openresty-style nginx as the main
#       process, STOPSIGNAL SIGQUIT, UID 636, prefix /usr/local/apisix; 9080;
#       worker_shutdown_timeout 240s (APISIX's default)
#   localhost/ingress-nginx/controller:v1.15.1-lookalike  ingress-nginx (named
#       like the upstream repository, so that `inject` knows it in a real
#       cluster's helm render as it knows the real one): the controller runs
#       NGINX (UID 101), quits it at once on SIGTERM, then sleeps
#       --post-shutdown-grace-period; `/wait-shutdown` (its preStop) TERMs it;
#       worker_shutdown_timeout 240s, or CONFIGMAP_WORKER_SHUTDOWN_TIMEOUT
#   localhost/lookalike-nginx-ingress:5.6.0   NGINX Inc: the controller runs NGINX
#       (UID 101), quits it on SIGTERM and exits 0 with it; no preStop; no
#       worker_shutdown_timeout unless CONFIGMAP_WORKER_SHUTDOWN_TIMEOUT
#
# CONFIGMAP_WORKER_SHUTDOWN_TIMEOUT stands in for the controllers' ConfigMap
# key `worker-shutdown-timeout` (the real controllers read their ConfigMap
# from the API server; a static pod has none: the tests pass the value of
# the ConfigMap inject wrote).
#   localhost/lookalike-aux:1          a controller's other containers (Kong's
#       ingress controller): busybox, waits until stopped
#
# Every look-alike's NGINX proxies /ws (WebSockets) to WS_BACKEND
# (HOST:PORT, the echo backend the tests run in the rig's network).
#
# usage: WS_BACKEND=HOST:PORT build.sh OUT_DIR BUILDAH_ROOT
set -euo pipefail
: "${WS_BACKEND:?WS_BACKEND=HOST:PORT: where the look-alikes proxy /ws}"
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
ROOT=$2
command -v busybox >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
B=(buildah --root "$ROOT/root" --runroot "$ROOT/runroot" --storage-driver vfs)
mkdir -p "$OUT"
busybox=$(command -v busybox)

# rootfs DIR USER UID GID: nginx, its libraries, busybox, the user.
rootfs() {
    local r=$1 user=$2 uid=$3 gid=$4
    install -D -m755 /usr/sbin/nginx "$r/usr/sbin/nginx"
    for lib in $(ldd /usr/sbin/nginx | grep -o '/[^ ]*'); do install -D "$lib" "$r$lib"; done
    install -D -m644 /etc/nginx/mime.types "$r/etc/nginx/mime.types"
    install -D -m755 "$busybox" "$r/bin/busybox"
    for t in sh sleep kill cat rm mkdir date echo true ls; do ln -sf busybox "$r/bin/$t"; done
    mkdir -p "$r/usr/local/bin" "$r/usr/bin"
    ln -sf ../../bin/sh "$r/usr/bin/env"
    printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s::/nonexistent:/sbin/nologin\n' "$user" "$uid" "$gid" > "$r/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$user" "$gid" > "$r/etc/group"
    mkdir -p "$r/tmp" "$r/usr/share/nginx/html" "$r/var/lib/nginx"
    chmod 1777 "$r/tmp"
    echo "hello from a look-alike" > "$r/usr/share/nginx/html/index.html"
    head -c 1048576 /dev/urandom > "$r/usr/share/nginx/html/big.bin"
}

# conf FILE PID_FILE LISTEN_PORT WORKER_SHUTDOWN_LINE [EXTRA_SERVER]
conf() {
    sed -e "s|PID_FILE|$2|" -e "s|listen 8080|listen $3|" -e "s|WORKER_SHUTDOWN|$4|" \
        -e "s|WS_BACKEND|$WS_BACKEND|" \
        "$HERE/nginx.conf" > "$1"
    if [ -n "${5:-}" ]; then
        # before the http block's last brace
        sed -i '$ d' "$1"
        printf '%s\n}\n' "$5" >> "$1"
    fi
}

build() { # NAME TAG CTX
    "${B[@]}" bud --quiet --isolation chroot -t "$2" -f "$3/Containerfile" "$3" >/dev/null
    rm -f "$OUT/$1.tar"
    "${B[@]}" push --quiet "$2" "docker-archive:$OUT/$1.tar:$2"
}

# NGINX Gateway Fabric
ctx=$(mktemp -d); r=$ctx/rootfs
rootfs "$r" nginx 101 1001
mkdir -p "$r/var/run/nginx"
conf "$r/etc/nginx/nginx.conf" /var/run/nginx/nginx.pid 8080 ""
install -m755 "$HERE/ngf-entrypoint.sh" "$r/usr/local/bin/entrypoint.sh"
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
USER 101:1001
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CF
build lookalike-ngf localhost/lookalike-ngf:2.6.7 "$ctx"
rm -rf "$ctx"

# Kong
ctx=$(mktemp -d); r=$ctx/rootfs
rootfs "$r" kong 1000 1000
mkdir -p "$r/kong_prefix" "$r/etc/kong"
conf "$r/etc/kong/nginx.conf" /kong_prefix/pids/nginx.pid 8000 "" \
    '    server { listen 8100; location /status { return 200 "{}"; } }'
install -m755 "$HERE/kong" "$r/usr/local/bin/kong"
cat > "$r/usr/local/bin/kong-start" <<'SH'
#!/bin/sh
# `kong docker-start`: prepare the prefix, then exec nginx (the main process).
# KONG_NGINX_MAIN_<DIRECTIVE> injects a main-context directive, as Kong's
# configuration does (only worker_shutdown_timeout here).
mkdir -p /kong_prefix/pids /kong_prefix/logs
w=${KONG_NGINX_MAIN_WORKER_SHUTDOWN_TIMEOUT:-}
exec nginx -e stderr -p /kong_prefix -c /etc/kong/nginx.conf -g "daemon off;${w:+ worker_shutdown_timeout $w;}"
SH
chmod 755 "$r/usr/local/bin/kong-start"
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/bin KONG_PREFIX=/kong_prefix
USER 1000:1000
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/local/bin/kong-start"]
CF
build lookalike-kong localhost/lookalike-kong:3.9 "$ctx"
rm -rf "$ctx"

# APISIX
ctx=$(mktemp -d); r=$ctx/rootfs
rootfs "$r" apisix 636 636
# APISIX's prefix belongs to its user (COPY would give it to root).
a=$ctx/apisix
mkdir -p "$a/conf" "$a/logs"
conf "$a/conf/nginx.conf" /usr/local/apisix/logs/nginx.pid 9080 "worker_shutdown_timeout 240s;"
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
COPY --chown=636:636 apisix/ /usr/local/apisix/
ENV PATH=/usr/local/bin:/usr/sbin:/bin
USER 636:636
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/sbin/nginx", "-e", "stderr", "-p", "/usr/local/apisix", "-c", "/usr/local/apisix/conf/nginx.conf", "-g", "daemon off;"]
CF
build lookalike-apisix localhost/lookalike-apisix:3.16.0 "$ctx"
rm -rf "$ctx"

# ingress-nginx: the controller runs NGINX (UID 101) and quits it on its
# SIGTERM; /wait-shutdown is its preStop. NGINX binds 80 and 443 as UID 101
# (the real image gives the binary cap_net_bind_service; the pod here sets
# net.ipv4.ip_unprivileged_port_start instead).
ctx=$(mktemp -d); r=$ctx/rootfs
rootfs "$r" www-data 101 82
conf "$r/etc/nginx/nginx.conf" /tmp/nginx.pid 80 "" \
    '    server { listen 10254; location /healthz { return 200 "ok"; } }'
install -m755 "$HERE/ingress-nginx-controller" "$r/nginx-ingress-controller"
install -m755 "$HERE/wait-shutdown" "$r/wait-shutdown"
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/bin
USER 101:82
ENTRYPOINT ["/bin/sh", "-c", "exec \"$@\"", "sh"]
CF
build lookalike-ingress-nginx localhost/ingress-nginx/controller:v1.15.1-lookalike "$ctx"
rm -rf "$ctx"

# NGINX Inc: the controller runs NGINX (UID 101), quits it on SIGTERM and
# exits 0 with it; no preStop.
ctx=$(mktemp -d); r=$ctx/rootfs
rootfs "$r" nginx 101 101
conf "$r/etc/nginx/nginx.conf" /tmp/nginx.pid 80 "" \
    '    server { listen 8081; location /nginx-ready { return 200 "ok"; } }'
install -m755 "$HERE/nginx-ingress" "$r/nginx-ingress"
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/bin
USER 101:101
ENTRYPOINT ["/nginx-ingress"]
CF
build lookalike-nginx-ingress localhost/lookalike-nginx-ingress:5.6.0 "$ctx"
rm -rf "$ctx"

# The controllers' other containers
ctx=$(mktemp -d); r=$ctx/rootfs
mkdir -p "$r/bin" "$r/tmp"
install -m755 "$busybox" "$r/bin/busybox"
for t in sh sleep true; do ln -sf busybox "$r/bin/$t"; done
# Exits on SIGTERM as a real controller does (a bare `sleep` as the
# container's PID 1 would ignore it and hold the pod for the whole grace).
cat > "$ctx/Containerfile" <<'CF'
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 2147483647 & wait"]
CF
build lookalike-aux localhost/lookalike-aux:1 "$ctx"
rm -rf "$ctx"
ls "$OUT"/lookalike-*.tar
