# rds-rotator: a static musl binary on an empty base image.
#
#   docker build -t rds-rotator .                      # builds the binary in the builder stage
#   scripts/image                                      # or: from a binary built on this machine
#                                                      #     (no base image needs pulling)
#
# The runtime image holds only the binary, CA certificates, an /etc/passwd with the non-root user
# and a writable /tmp (for the worker's health file). To verify RDS certificates, add the RDS CA
# bundle on top and point ROTATOR_DB_CA_BUNDLE at it:
#
#   FROM rds-rotator
#   ADD https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /etc/ssl/certs/rds-global-bundle.pem
#   ENV ROTATOR_DB_CA_BUNDLE=/etc/ssl/certs/rds-global-bundle.pem

# Where the runtime's files come from: `builder` (compile here) or `local` (a prepared rootfs,
# see scripts/image).
ARG ROOTFS=builder

FROM docker.io/library/rust:1.95-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ARG ROTATOR_GIT_REVISION=unknown
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin rds-rotator -p rds-proxy-password-rotation \
    && cargo build --release --locked --target x86_64-unknown-linux-musl --bin rds-proxy-standin -p rds-proxy-standin \
    && scripts/image-rootfs /rootfs target/x86_64-unknown-linux-musl/release

FROM scratch AS local
COPY rootfs/ /rootfs/

# hadolint ignore=DL3006
FROM ${ROOTFS} AS rootfs

# The RDS Proxy stand-in, for the docker-compose demo only.
FROM scratch AS standin
COPY --from=rootfs /rootfs/etc/ /etc/
COPY --from=rootfs /rootfs/usr/local/bin/rds-proxy-standin /usr/local/bin/rds-proxy-standin
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["rds-proxy-standin"]

FROM scratch AS runtime
COPY --from=rootfs /rootfs/etc/ /etc/
COPY --from=rootfs /rootfs/tmp/ /tmp/
COPY --from=rootfs /rootfs/usr/local/bin/rds-rotator /usr/local/bin/rds-rotator
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    ROTATOR_LOG_FORMAT=json \
    ROTATOR_HEALTH_FILE=/tmp/rds-rotator.health
# A volume, so that a read-only root filesystem (the Terraform module sets one) still has a
# /tmp the non-root user can write: Fargate copies the image's mode 1777 to the volume.
VOLUME ["/tmp"]
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["rds-rotator", "health"]
ENTRYPOINT ["rds-rotator"]
CMD ["worker"]
