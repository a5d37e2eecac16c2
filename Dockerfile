# syntax=docker/dockerfile:1
# The image of either service, built from the repository root (the package spans Shared/ and Services/):
#   docker build --build-arg PRODUCT=storage-service --target storage-service -t watermark/storage-service .
#   docker build --build-arg PRODUCT=collection-service --target collection-service -t watermark/collection-service .
# PRODUCT is the binary the build stage compiles, the target the image that runs it; a target whose
# binary was not built stops the build at its COPY. Without either, the storage-service is built.
# The Swift tag follows the toolchain the project is developed with; override with --build-arg.
ARG SWIFT_VERSION=6.3
ARG UBUNTU_VERSION=24.04

# ================================
# Build image
# ================================
FROM swift:${SWIFT_VERSION}-noble AS build
ARG PRODUCT=storage-service

# GRDB (the storage's database, the collection's dedup index) links the system SQLite, so the
# headers are needed to build (versions unpinned, as below).
# hadolint ignore=DL3008
RUN export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    && apt-get -q update \
    && apt-get -q install -y --no-install-recommends libsqlite3-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Resolve dependencies in their own layer, reused while Package.swift does not change.
# Package.resolved is kept out of the context (.dockerignore): the one in a developer's tree may pin
# revisions of a local package mirror.
COPY ./Package.swift ./
RUN swift package resolve

COPY . .

# A release build with the Swift runtime linked in, so the runtime image needs no toolchain.
RUN swift build -c release --static-swift-stdlib --product "$PRODUCT"

# Stage the binary and the static crash backtracer.
WORKDIR /staging
RUN cp "$(swift build --package-path /build -c release --show-bin-path)/$PRODUCT" ./ \
    && cp /usr/libexec/swift/linux/swift-backtrace-static ./

# ================================
# Run image, the same for both services
# ================================
FROM ubuntu:${UBUNTU_VERSION} AS run

# Only what the binaries load at run time: the system SQLite (GRDB), CA certificates for HTTPS (TAXII
# servers, OTX, a PostgreSQL with sslmode=verify-full) and time zone data for Foundation. The base
# image is pinned by tag; package versions are not pinned so that a rebuild picks up the
# distribution's security fixes.
# hadolint ignore=DL3008
RUN export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    && apt-get -q update \
    && apt-get -q install -y --no-install-recommends libsqlite3-0 ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged user. /data (the storage's database; the collection's sink, local watermark
# state and replay queue) is created here, owned by it, so that a named volume mounted there starts
# with the right owner (Kubernetes uses fsGroup for the same effect). The collection's sources file
# is mounted at /config (a bind mount in docker compose, a ConfigMap in Kubernetes).
RUN groupadd --system --gid 10001 watermark \
    && useradd --system --uid 10001 --gid watermark --home-dir /app --no-create-home --shell /usr/sbin/nologin watermark \
    && mkdir -p /app /data /config \
    && chown watermark:watermark /data

WORKDIR /app
COPY --from=build --chown=watermark:watermark /staging/swift-backtrace-static /app/

# Readable backtraces on a crash, without a debugger in the image.
ENV SWIFT_BACKTRACE=enable=yes,sanitize=yes,threads=all,images=all,interactive=no,swift-backtrace=/app/swift-backtrace-static \
    HOST=0.0.0.0 \
    PORT=8000

# Numeric, so that Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# SIGTERM: the storage finishes in-flight requests and closes the database; the collection starts
# no new runs, and nothing is committed unless it is on disk and the watermark moved.
STOPSIGNAL SIGTERM

# No curl in the images: each binary checks itself (exit 0 healthy, 1 otherwise). The URLs name the
# default port; change them too when PORT is overridden.

# ================================
# collection-service
# ================================
FROM run AS collection-service
ENV DATA_DIR=/data \
    COLLECTION_CONFIG=/config/sources.json
COPY --from=build --chown=watermark:watermark /staging/collection-service /app/
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=5 \
    CMD ["/app/collection-service", "healthcheck", "--url", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["/app/collection-service"]

# ================================
# storage-service (last: the default target)
# ================================
FROM run AS storage-service
ENV DATABASE_PATH=/data/watermarks.db
COPY --from=build --chown=watermark:watermark /staging/storage-service /app/
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=5 \
    CMD ["/app/storage-service", "healthcheck", "--url", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["/app/storage-service"]
