# nginx-drain: a static binary in an empty image.
#
# Builds offline: the binary is built with cargo first and copied in (base
# images cannot be pulled here). The one command that does both:
#
#     scripts/image            # builds dist/nginx-drain, then this image
#
# which runs, in short:
#     RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
#         --target x86_64-unknown-linux-gnu --target-dir target/static
#     cp target/static/x86_64-unknown-linux-gnu/release/nginx-drain dist/
#     buildah --storage-driver vfs bud --isolation chroot -t nginx-drain:VERSION .
FROM scratch

ARG VERSION=0.1.0
ARG SOURCE=unknown
ARG REVISION=unknown

LABEL org.opencontainers.image.title="nginx-drain" \
      org.opencontainers.image.description="A preStop sidecar that drains NGINX gracefully before Kubernetes stops it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"

COPY dist/nginx-drain /nginx-drain
COPY LICENSE /LICENSE

# UID 101 matches ingress-nginx and the NGINX images' workers. To drain an
# NGINX whose master runs as root (the official nginx image), run the
# container as UID 0 (securityContext.runAsUser: 0): signalling needs the
# same UID or CAP_KILL.
USER 101:101
EXPOSE 10266
ENTRYPOINT ["/nginx-drain", "serve"]
