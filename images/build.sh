#!/bin/sh
# Build a static devgate binary and two images FROM scratch, with no
# registry: FROM scratch pulls nothing.
#   devgate:local        the gateway (entrypoint: devgate serve; data in /data)
#   devgate-hello:local  the hello page (entrypoint: devgate hello; listens on $PORT, else 80)
# Usage: images/build.sh   (from anywhere; needs go and docker)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

(cd "$root" && CGO_ENABLED=0 go build -o "$ctx/devgate" ./cmd/devgate)

cat >"$ctx/Dockerfile.gateway" <<'DOCKERFILE'
FROM scratch
COPY devgate /usr/local/bin/devgate
ENV PATH=/usr/local/bin
ENV DEVGATE_DATA_DIR=/data
VOLUME /data
EXPOSE 51820/udp
ENTRYPOINT ["/usr/local/bin/devgate", "serve"]
DOCKERFILE

cat >"$ctx/Dockerfile.hello" <<'DOCKERFILE'
FROM scratch
COPY devgate /usr/local/bin/devgate
ENV PATH=/usr/local/bin
EXPOSE 80
ENTRYPOINT ["/usr/local/bin/devgate", "hello"]
DOCKERFILE

docker build -q -t devgate:local -f "$ctx/Dockerfile.gateway" "$ctx"
docker build -q -t devgate-hello:local -f "$ctx/Dockerfile.hello" "$ctx"
echo "built devgate:local and devgate-hello:local"
