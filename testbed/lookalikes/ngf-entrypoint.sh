#!/bin/sh
# NGINX Gateway Fabric's data-plane entrypoint, as its README describes it
# (written here; the upstream script is not copied): nginx in the
# background, then the agent; TERM or QUIT go to the agent, then the SAME
# signal to nginx (TERM: NGINX's fast shutdown); the container waits on the
# agent only. `set -e`: when nginx has already exited, the kill fails and
# the container exits 1.
set -eux
nginx -e stderr -g 'daemon off;' &
nginx_pid=$!
while [ ! -f /var/run/nginx/nginx.pid ]; do sleep 0.1; done
# The stand-in for nginx-agent: a process that waits.
sleep 2147483647 &
agent_pid=$!
handle() {
    kill -"$1" "$agent_pid"
    wait "$agent_pid" || true
    kill -"$1" "$nginx_pid"
    wait "$nginx_pid"
    exit 0
}
trap 'handle TERM' TERM
trap 'handle QUIT' QUIT
wait "$agent_pid"
# The agent exited by itself: quit nginx.
kill -QUIT "$nginx_pid"
wait "$nginx_pid"
