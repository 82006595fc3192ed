#!/usr/bin/env bash
# Builds the leasenode agent image from this checkout: a static binary
# (CGO_ENABLED=0, -trimpath) stamped with VERSION and the git revision,
# copied FROM scratch with a nonroot user and an empty /data.
#
#   deploy/docker/build.sh [IMAGE]   # default leasenode:$VERSION (VERSION default "dev")
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="${VERSION:-dev}"
image="${1:-leasenode:$version}"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
modified=false
if [ "$revision" != unknown ] && [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]; then
	modified=true
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
pkg=github.com/leasenode/leasenode/internal/buildinfo
(cd "$root" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X $pkg.version=$version -X $pkg.revision=$revision -X $pkg.modified=$modified" \
	-o "$ctx/leasenode" ./cmd/leasenode)
mkdir -p "$ctx/rootfs/etc" "$ctx/data"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build --build-arg VERSION="$version" --build-arg REVISION="$revision" -t "$image" "$ctx"
echo "built $image ($version, revision $revision, modified $modified)"
