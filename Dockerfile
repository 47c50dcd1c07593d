# nginx-drain: a static binary in an empty image.
#
# Builds offline: the binaries are built with cargo first and copied in
# (base images cannot be pulled here). The one command that does both, for
# linux/amd64 and linux/arm64, with the OCI index that holds both:
#
#     scripts/image            # dist/linux-{amd64,arm64}/nginx-drain, then this image per platform
#
# BINARY is the platform's binary (scripts/image passes
# dist/linux-<arch>/nginx-drain; the default is the native one, which is what
# the test rigs copy in). Its Rust dependencies (the SBOM) are embedded in it
# by cargo-auditable: `rust-audit-info /nginx-drain`, or `cargo audit bin`.
FROM scratch

ARG BINARY=dist/nginx-drain
ARG VERSION=0.1.0
ARG SOURCE=unknown
ARG REVISION=unknown

LABEL org.opencontainers.image.title="nginx-drain" \
      org.opencontainers.image.description="A preStop sidecar that drains NGINX gracefully before Kubernetes stops it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"

COPY ${BINARY} /nginx-drain
COPY LICENSE /LICENSE

# UID 101 matches ingress-nginx and the NGINX images' workers. To drain an
# NGINX whose master runs as root (the official nginx image), run the
# container as UID 0 (securityContext.runAsUser: 0): signalling needs the
# same UID or CAP_KILL.
USER 101:101
EXPOSE 10266
ENTRYPOINT ["/nginx-drain", "serve"]
