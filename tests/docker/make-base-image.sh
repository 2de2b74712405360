#!/usr/bin/env bash
# Builds a local stand-in for nvidia/cuda when no registry can be reached:
# a minimal Debian root filesystem made with debootstrap and imported into Docker.
# The generated Dockerfile installs Python from the base's apt archive, exactly as it
# does on the real nvidia/cuda:*-base-ubuntu* images, so the same Dockerfile is tested.
#
# Usage: make-base-image.sh [SUITE] [TAG]
#   SUITE  Debian suite: trixie (Python 3.13, default) or bookworm (Python 3.11)
#   TAG    image name (default: local/debian:SUITE)
set -euo pipefail

suite=${1:-trixie}
tag=${2:-local/debian:${suite}}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker_cli=${DOCKER:-docker}

if "${docker_cli}" image inspect "${tag}" >/dev/null 2>&1; then
  echo "base image ${tag} already present"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

rootfs=$(mktemp -d)
trap 'rm -rf "${rootfs}"' EXIT
debootstrap --variant=minbase --include=ca-certificates "${suite}" "${rootfs}" "${mirror}" >/dev/null
# Same apt behaviour as the cloud images: no cached .debs left in layers.
rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
tar -C "${rootfs}" -c . | "${docker_cli}" import - "${tag}" >/dev/null
echo "imported ${tag}"
